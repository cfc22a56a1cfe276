"""The import's pure decisions: opt-in, names, statuses, whose image is whose. No network."""

from datetime import UTC, datetime, timedelta

import pytest

from chalicelib import config, importing
from chalicelib.importing import ImportState, is_this_import, snapshot_status
from chalicelib.outscale import Image

WRITTEN = datetime(2026, 12, 2, 10, 0, 0, 400000, tzinfo=UTC)
KEY = "manifests/web server-1a2b3c4d.json"


@pytest.mark.parametrize(
    ("stage", "values", "expected"),
    [
        (False, {}, False),
        (True, {}, True),
        (False, {"import": "true"}, True),
        (True, {"import": "false"}, False),
    ],
)
def test_the_tag_overrides_the_stage(stage, values, expected):
    assert importing.wanted(stage, values) is expected


def test_image_name_and_its_suffix():
    assert importing.image_name_of("web", {}) == "web"
    assert importing.image_name_of("web", {"image-name": "Web (v2)"}) == "Web (v2)"
    long = importing.suffixed_name("x" * 128, "0123456789abcdef")
    assert len(long) == 128 and long.endswith("x-0123456789abcdef")


def state(kind, comment="", image_id="ami-1"):
    return ImportState("web", "d", image_id, "web", kind, comment)


def test_statuses_are_tag_safe_and_bounded():
    assert snapshot_status(state("pending")) == "importing: ami-1"
    assert snapshot_status(state("available")) == "imported: ami-1 - available"
    failed = snapshot_status(state("failed", "disk (sda1) unreadable? " + "x" * 300))
    assert failed.startswith("error: import failed: disk _sda1_ unreadable_ xxx")
    assert len(failed) == 256
    assert snapshot_status(state("failed")) == "error: import failed: no reason given"


def test_manifest_tags_and_pending():
    assert importing.manifest_tags(state("error", "taken", None)) == {"omi:image-state": "error"}
    tags = importing.manifest_tags(state("pending"))
    assert importing.pending_image(tags) == "ami-1"
    assert importing.pending_image(importing.manifest_tags(state("available"))) is None


def image(tags=None, location="", created=WRITTEN):
    return Image(
        "ami-9", "web", "pending", file_location=location, created_at=created, tags=tags or {}
    )


@pytest.mark.parametrize(
    ("found", "verdict"),
    [
        (image({"omi:name": "web server", "omi:digest": "d1"}), True),
        (image({"omi:name": "web server", "omi:digest": "d0"}), False),
        (image({"omi:name": "other", "omi:digest": "d1"}), None),
        (image(location=f"https://oos/b/{KEY}"), True),
        (image(location="https://oos/b/manifests/web%20server-1a2b3c4d.json"), True),
        (image(location="https://oos/b/manifests/web.json"), None),
        (image(location=f"https://oos/b/{KEY}", created=WRITTEN - timedelta(seconds=1)), False),
        (image(location=f"https://oos/b/{KEY}", created=WRITTEN.replace(microsecond=0)), True),
        (image(location="123456789012/web"), None),
    ],
)
def test_whose_image(found, verdict):
    assert is_this_import(found, "web server", "d1", KEY, WRITTEN) is verdict


def test_an_invalid_image_name_is_refused_before_any_call():
    class NoCalls:
        def __getattr__(self, name):
            raise AssertionError(f"{name} called")

    refused = importing.Importer(NoCalls()).start("web", "ab", "d", KEY, "u", WRITTEN)
    assert snapshot_status(refused) == (
        "error: image name ab is invalid - set omi:image-name to 3 to 128 letters digits "
        "spaces _ / . -"
    )


def test_settings():
    assert config.load({}).import_images is False
    loaded = config.load(
        {"OMI_IMPORT": "true", "OMI_OUTSCALE_SECRET": "osc", "OMI_EVENT_BUS": "bus"}
    )
    assert (loaded.import_images, loaded.outscale_secret, loaded.event_bus) == (True, "osc", "bus")
    with pytest.raises(ValueError, match="OMI_IMPORT must be true or false"):
        config.load({"OMI_IMPORT": "yes"})
