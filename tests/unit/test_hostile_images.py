"""Images crafted to mislead: each refused with a message, reading a bounded number of bytes."""

from __future__ import annotations

import gzip
import struct

import pytest

from chalicelib.inspection import Ceilings, FileReader, inspect_snapshot
from tests import images

MIB = 1 << 20
BOUND = 70 * 1024  # the 64 KiB header area at most, and a little


def inspect(path, **options):
    found = inspect_snapshot(FileReader(path), path.name, **options)
    assert found.bytes_read <= BOUND or path.name.endswith(".raw.gz")
    return found


def patched(tmp_path, offset, fmt, value, name="sda1.qcow2"):
    path = images.create(tmp_path / name, "qcow2", 64 * MIB)
    return images.patch(path, offset, struct.pack(fmt, value))


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (40, ">Q", 1 << 60, "qcow2 is truncated: its L1 table reaches byte 1152921504606846984"),
        (48, ">Q", 1 << 62, "qcow2 is truncated: its refcount table reaches byte"),
        (40, ">Q", 65536, "qcow2 L1 table and refcount table overlap - the header is damaged"),
        (40, ">Q", 4096, "qcow2 L1 table offset 4096 is not a cluster after the header"),
        (36, ">I", 0xFFFFFFFF, "qcow2 L1 table of 4294967295 entries is larger than QEMU allows"),
        (36, ">I", 0, "qcow2 L1 table has 0 entries but the virtual size needs 1"),
        (56, ">I", 1 << 20, "qcow2 refcount table is larger than QEMU allows"),
        (60, ">I", 1 << 20, "qcow2 declares 1048576 snapshots - more than QEMU allows"),
        (100, ">I", 70000, "qcow2 header length 70000 runs past the first cluster of 65536 bytes"),
        (100, ">I", 105, "qcow2 header length 105 is invalid"),
        (96, ">I", 9, "qcow2 refcount order 9 is above 6"),
    ],
    ids=[
        "huge-l1-offset",
        "huge-refcount-offset",
        "overlapping-tables",
        "l1-inside-header-cluster",
        "l1-size-overflow",
        "l1-too-small",
        "refcount-table-overflow",
        "snapshot-count",
        "header-past-cluster",
        "header-length-odd",
        "refcount-order",
    ],
)
def test_hostile_header_fields(tmp_path, offset, fmt, value, message):
    found = inspect(patched(tmp_path, offset, fmt, value))
    assert not found.importable
    assert any(p.startswith(message) for p in found.problems), found.problems


def test_backing_file_name_hidden_in_an_extension(tmp_path):
    images.create(tmp_path / "base.qcow2", "qcow2", MIB)
    path = tmp_path / "sda1.qcow2"
    images.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(path))
    images.patch(path, 8, struct.pack(">Q", 112 + 8))  # the name now points into an extension
    found = inspect(path)
    assert found.problems == (
        "qcow2 has a backing file qcow2___h_ - flatten it with qemu-img convert -O qcow2",
        "qcow2 header extension runs past the header area - the header is damaged",
    )


def test_backing_format_without_backing_file(tmp_path):
    images.create(tmp_path / "base.qcow2", "qcow2", MIB)
    path = tmp_path / "sda1.qcow2"
    images.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(path))
    images.patch(path, 8, struct.pack(">QI", 0, 0))  # backing file gone, its format kept
    assert inspect(path).problems == (
        "qcow2 names a backing file format but no backing file - the header is inconsistent "
        "- rebuild it with qemu-img convert -O qcow2",
    )


def test_extension_running_past_the_cluster(tmp_path):
    path = images.create(tmp_path / "sda1.qcow2", "qcow2", MIB, "cluster_size=512")
    images.patch(path, 112, struct.pack(">II", 0x6803F857, 100000))
    assert "qcow2 header extension runs past the header area - the header is damaged" in (
        inspect(path).problems
    )


def test_gzip_bomb_is_sized_within_the_ceilings(tmp_path):
    path = tmp_path / "sda1.raw.gz"
    path.write_bytes(gzip.compress(b"\0" * (256 * MIB), compresslevel=9))
    assert path.stat().st_size < 300 * 1024  # a small file with an enormous output
    assert inspect(path).virtual_size == 256 * MIB  # a sparse disk, as far as gzip goes
    too_big = inspect(path, ceilings=Ceilings(max_bytes=64 * MIB))
    assert too_big.problems == (
        f"raw.gz expands past the ceiling of {64 * MIB} decompressed bytes - give the omi:size "
        "tag to skip sizing or raise OMI_MAX_DECOMPRESSED_BYTES",
    )
    too_slow = inspect(path, ceilings=Ceilings(max_seconds=0))
    assert too_slow.problems == (
        "sizing raw.gz passed the ceiling of 0 seconds - give the omi:size tag to skip sizing "
        "or raise OMI_MAX_SIZING_SECONDS",
    )


def test_multi_member_gzip_with_the_last_members_size_as_hint_is_refused(tmp_path):
    """With a hint only the last member's trailer is seen: a hint equal to the total is
    accepted only when it agrees, so a concatenation is refused, not mis-sized."""
    path = tmp_path / "sda1.raw.gz"
    path.write_bytes(gzip.compress(b"\0" * MIB) + gzip.compress(b"\1" * (2 * MIB)))
    assert inspect(path).virtual_size == 3 * MIB
    assert (
        inspect(path, size_hint=3 * MIB)
        .problems[0]
        .startswith(f"omi:size {3 * MIB} does not agree with the gzip trailer")
    )
