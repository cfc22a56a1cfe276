"""Every request the import sends, checked by Prism against the OUTSCALE API description
that ships in osc-sdk-python (``prism mock``: it answers with the description's examples)."""

from datetime import UTC, datetime

from chalicelib.importing import Importer

MANIFEST_URL = (
    "https://oos.eu-west-2.outscale.com/omi-snapshots/manifests/web-server.json"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0123abcd"
)


def test_each_call_matches_the_schema(mock_api):
    client = mock_api.client
    image = client.create_image("web-server", MANIFEST_URL)
    client.read_images(names=["web-server"])
    client.read_images(ids=[image.image_id])
    client.read_images(tags=["omi:digest=0123456789abcdef"])
    client.create_tags(image.image_id, {"omi:name": "web-server", "omi:digest": "0123"})
    assert [action for action, _ in mock_api.sent] == [
        "CreateImage",
        "ReadImages",
        "ReadImages",
        "ReadImages",
        "CreateTags",
    ]
    assert image.image_id.startswith("ami-") and image.state == "pending"


def test_the_example_image_is_read_whole(mock_api):
    (image,) = mock_api.client.read_images(ids=["ami-12345678"])
    assert (image.image_id, image.name, image.state) == (
        "ami-12345678",
        "create-image-example",
        "available",
    )
    assert image.created_at == datetime(2010, 10, 1, 12, 34, 56, 789000, tzinfo=UTC)


def test_an_import_sends_only_valid_requests(mock_api):
    """Prism's ReadImages answers its example whatever the filter, so the name looks taken
    by an image that is not an import: refused, naming it, after valid requests only."""
    state = Importer(mock_api.client).start(
        "web-server", "web-server", "0123456789abcdef", "manifests/web-server.json",
        MANIFEST_URL, datetime.now(UTC),
    )  # fmt: skip
    assert [action for action, _ in mock_api.sent] == ["ReadImages", "ReadImages"]
    assert state.state == "error" and state.image_id is None
    assert state.comment == (
        "image name web-server is already used in the account - set omi:image-name to another name"
    )
