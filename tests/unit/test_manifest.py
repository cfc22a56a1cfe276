"""The manifest document: built as spec section 2 shows, and validated."""

import copy
import json

import pytest

from chalicelib import manifest
from chalicelib.grouping import ImageSpec, SnapshotSpec

URL = "https://oos.eu-west-2.outscale.com/b/web/sda1.qcow2.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab"
IMAGE = ImageSpec(
    name="web-server",
    architecture="x86_64",
    product_types=("0001",),
    description="",
    account="699659413885",
    snapshots=(
        SnapshotSpec(
            "web-server/sda1.qcow2.gz",
            "etag",
            "/dev/sda1",
            1,
            "standard",
            None,
            True,
            974,
            10737418240,
        ),
    ),
)


def test_build_matches_the_spec_sample():
    document = manifest.build(IMAGE, {"web-server/sda1.qcow2.gz": URL})
    assert list(document["Image"]) == [
        "Name",
        "ProductTypes",
        "Snapshots",
        "User",
        "Description",
        "Type",
        "Public",
        "Architecture",
    ]
    assert document["Image"]["Snapshots"][0] == {
        "Ordering": 1,
        "VolumeType": "standard",
        "Iops": None,
        "PreSignedUrl": URL,
        "Filename": "web-server/sda1.qcow2.gz",
        "CompressedSize": 974,
        "DeleteOnTermination": True,
        "Device": "/dev/sda1",
        "Size": 10737418240,
    }
    assert manifest.validate(document) == []
    assert json.loads(manifest.render(document)) == document


def test_user_omitted_without_account():
    document = manifest.build(
        ImageSpec("web-server", "x86_64", ("0001",), "", None, IMAGE.snapshots),
        {"web-server/sda1.qcow2.gz": URL},
    )
    assert "User" not in document["Image"]


def broken(change):
    document = copy.deepcopy(manifest.build(IMAGE, {"web-server/sda1.qcow2.gz": URL}))
    change(document["Image"])
    return manifest.validate(document)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: i.update(Name="ab"), "Image.Name must be 3 to 128 characters"),
        (lambda i: i.update(ProductTypes=["0003"]), "Image.ProductTypes must be a non-empty list"),
        (lambda i: i.pop("Description"), "Image.Description must be present"),
        (lambda i: i.update(Public=True), "Image.Public must be false"),
        (
            lambda i: i["Snapshots"][0].update(VolumeType="io1"),
            "Image.Snapshots[0].Iops must be a positive integer for io1",
        ),
        (
            lambda i: i["Snapshots"][0].update(Iops=100),
            "Image.Snapshots[0].Iops must be null unless VolumeType is io1",
        ),
        (
            lambda i: i["Snapshots"][0].update(PreSignedUrl="https://x/y"),
            "Image.Snapshots[0].PreSignedUrl must be a Signature V4",
        ),
        (
            lambda i: i["Snapshots"][0].update(Size=1000),
            "Image.Snapshots[0].Size must be a multiple of 512",
        ),
        (lambda i: i["Snapshots"][0].pop("Device"), "Image.Snapshots[0].Device is missing"),
        (
            lambda i: i["Snapshots"].append(dict(i["Snapshots"][0], Ordering=0)),
            "Image.Snapshots must be sorted by Ordering",
        ),
        (
            lambda i: i["Snapshots"].append(dict(i["Snapshots"][0], Ordering=2)),
            "Image.Snapshots: each Device must be unique",
        ),
    ],
)
def test_validate_names_the_field(change, message):
    assert any(problem.startswith(message) for problem in broken(change)), broken(change)
