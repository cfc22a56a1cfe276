"""The same inspections through ranged GETs on S3 (moto), with the reads checked."""

from __future__ import annotations

import pytest

from chalicelib.inspection import FileReader, S3Reader, inspect_snapshot
from tests import images
from tests.conftest import RANGED_BUCKET

MIB = 1 << 20
GIB = 1 << 30
BUCKET = RANGED_BUCKET
READ_BOUND = 64 * 1024


@pytest.fixture
def s3(ranged_s3):
    return ranged_s3


def upload(s3, path, key):
    s3.upload_file(str(path), BUCKET, key)
    return S3Reader(s3, BUCKET, key)


def build(tmp_path, kind, virtual):
    if kind.startswith("qcow2"):
        path = images.create(tmp_path / "sda1.qcow2", "qcow2", virtual)
    else:
        path = images.create(tmp_path / "sda1.raw", "raw", virtual)
    return images.gzip_file(path) if kind.endswith(".gz") else path


@pytest.mark.parametrize(
    ("kind", "virtual"),
    [("qcow2", 10 * GIB), ("qcow2.gz", 10 * GIB), ("raw", MIB), ("raw", 32 * MIB)],
)
def test_bounded_ranged_reads(s3, tmp_path, kind, virtual):
    path = build(tmp_path, kind, virtual)
    found = inspect_snapshot(upload(s3, path, f"web/{path.name}"), f"web/{path.name}")
    assert found.importable, found.problems
    assert found.format == kind
    assert found.virtual_size == virtual
    assert found.bytes_read <= READ_BOUND
    assert s3.ranges and all(r.startswith("bytes=") and not r.endswith("-") for r in s3.ranges)
    assert found.requests == 1 + len(s3.ranges) <= 3  # one HEAD for size and ETag


def test_raw_reads_the_same_bytes_whatever_its_size(s3, tmp_path):
    small = inspect_snapshot(upload(s3, build(tmp_path, "raw", MIB), "a/sda1.raw"), "a/sda1.raw")
    (tmp_path / "sda1.raw").unlink()
    large = build(tmp_path, "raw", 64 * MIB)
    big = inspect_snapshot(upload(s3, large, "b/sda1.raw"), "b/sda1.raw")
    assert small.bytes_read == big.bytes_read


def test_raw_gz_streams_whole_object_once(s3, tmp_path):
    path = images.gzip_file(images.raw_with_data(tmp_path / "sda1.raw", 16 * MIB))
    found = inspect_snapshot(upload(s3, path, "w/sda1.raw.gz"), "w/sda1.raw.gz")
    assert found.importable, found.problems
    assert found.virtual_size == 16 * MIB
    # The stream goes on from where the first reads stopped: each byte is read once.
    assert s3.ranges[-1] == f"bytes={int(s3.ranges[-2].split('-')[1]) + 1}-"
    assert found.bytes_read == path.stat().st_size
    local = inspect_snapshot(FileReader(path), "w/sda1.raw.gz")
    assert found.to_dict() | {"requests": 0, "bytes_read": 0} == local.to_dict() | {
        "requests": 0,
        "bytes_read": 0,
    }


def test_rejections_read_the_same_through_s3(s3, tmp_path):
    images.create(tmp_path / "base.qcow2", "qcow2", MIB)
    child = tmp_path / "sda1.qcow2"
    images.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(child))
    vmdk = images.create(tmp_path / "sda2.raw", "vmdk", 16 * MIB)
    for path in (child, vmdk):
        through_s3 = inspect_snapshot(upload(s3, path, f"x/{path.name}"), f"x/{path.name}")
        local = inspect_snapshot(FileReader(path), f"x/{path.name}")
        assert through_s3.problems == local.problems != ()


def test_replaced_object_is_not_mixed(s3, tmp_path):
    path = build(tmp_path, "raw", MIB)
    reader = upload(s3, path, "r/sda1.raw")
    s3.put_object(Bucket=BUCKET, Key="r/sda1.raw", Body=b"\0" * 2048)
    with pytest.raises(s3.exceptions.ClientError, match="PreconditionFailed"):
        reader.read_at(0, 512)
