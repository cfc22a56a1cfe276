"""Inspection of real images made by qemu-img, checked against ``qemu-img info``."""

from __future__ import annotations

import re

import pytest

from chalicelib.inspection import FileReader, declared_format, inspect_snapshot
from tests import images

MIB = 1 << 20
ODD_SIZE = 1000 * MIB + 3 * 512  # not a power of two

QCOW2_VARIANTS = {
    "v2-compat-0.10": (["compat=0.10"], False),
    "v3": (["compat=1.1"], False),
    "cluster-512": (["cluster_size=512"], False),
    "cluster-64k": (["cluster_size=65536"], False),
    "cluster-2m": (["cluster_size=2M"], False),
    "compressed-clusters": ([], True),
    "zstd": (["compression_type=zstd"], True),
}
TAG_SAFE = re.compile(r"^[A-Za-z0-9 _.:/=+\-@]+$")


def inspect_path(path, size_hint=None):
    return inspect_snapshot(FileReader(path), str(path), size_hint=size_hint)


@pytest.fixture(scope="module")
def data_raw(tmp_path_factory):
    return images.raw_with_data(tmp_path_factory.mktemp("raw") / "disk.raw", 24 * MIB)


@pytest.mark.parametrize("variant", sorted(QCOW2_VARIANTS))
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gz"])
def test_qcow2_variants_match_qemu_img(tmp_path, data_raw, variant, gzipped):
    options, compress = QCOW2_VARIANTS[variant]
    path = images.convert(data_raw, tmp_path / "sda1.qcow2", "qcow2", *options, compress=compress)
    expected = images.info(path)
    if gzipped:
        path = images.gzip_file(path)
    found = inspect_path(path)
    assert found.problems == ()
    assert found.importable
    assert found.virtual_size == expected["virtual-size"] == 24 * MIB
    assert found.format == expected["format"] + (".gz" if gzipped else "")
    assert found.compressed_size == path.stat().st_size


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gz"])
def test_qcow2_with_odd_virtual_size(tmp_path, gzipped):
    path = images.create(tmp_path / "odd.qcow2", "qcow2", ODD_SIZE)
    expected = images.info(path)["virtual-size"]
    path = images.gzip_file(path) if gzipped else path
    found = inspect_path(path)
    assert found.importable, found.problems
    assert found.virtual_size == expected == ODD_SIZE


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gz"])
def test_raw_with_data_matches_qemu_img(tmp_path, data_raw, gzipped):
    expected = images.info(data_raw)
    path = images.gzip_file(data_raw, tmp_path / "disk.raw.gz") if gzipped else data_raw
    found = inspect_path(path)
    assert found.importable, found.problems
    assert found.virtual_size == expected["virtual-size"]
    assert found.format == "raw.gz" if gzipped else "raw"


def test_raw_gz_of_odd_size_is_sized_exactly(tmp_path):
    path = images.create(tmp_path / "odd.raw", "raw", ODD_SIZE)
    found = inspect_path(images.gzip_file(path))
    assert found.virtual_size == ODD_SIZE
    assert found.details["sized_by"] == "stream"


def test_raw_gz_with_agreeing_size_hint_reads_little(tmp_path):
    path = images.gzip_file(images.create(tmp_path / "big.raw", "raw", 256 * MIB))
    found = inspect_path(path, size_hint=256 * MIB)
    assert found.importable, found.problems
    assert found.virtual_size == 256 * MIB
    assert found.details["sized_by"] == "omi:size"
    assert found.bytes_read < path.stat().st_size


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("web/sda1.qcow2", "qcow2"),
        ("web/SDA1.QCOW2.GZ", "qcow2.gz"),
        ("disk.raw", "raw"),
        ("a/b/disk.Raw.Gz", "raw.gz"),
        ("disk.img", None),
        ("disk.qcow2.bak", None),
    ],
)
def test_declared_format_from_key(key, expected):
    assert declared_format(key) == expected


def test_every_message_is_tag_safe(tmp_path):
    base = images.create(tmp_path / "base (copy),v1.qcow2", "qcow2", MIB)
    child = tmp_path / "child.qcow2"
    images.qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2", str(child))
    found = inspect_path(child)
    assert found.problems
    assert all(TAG_SAFE.match(problem) and len(problem) <= 240 for problem in found.problems)
    assert "base _copy__v1.qcow2" in found.problems[0]
