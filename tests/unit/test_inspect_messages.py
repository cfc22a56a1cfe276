"""The rarer refusals, each with the message a user reads."""

from __future__ import annotations

import gzip
import os
import struct

import pytest

from chalicelib.inspection import FileReader, inspect_snapshot
from tests import images

MIB = 1 << 20
CONVERT = "convert it with qemu-img convert -O qcow2"


def problems_of(path):
    found = inspect_snapshot(FileReader(path), path.name)
    assert not found.importable
    return found.problems


def qcow2(tmp_path, *options):
    return images.create(tmp_path / "sda1.qcow2", "qcow2", MIB, *options)


def test_gzip_inside_gzip(tmp_path):
    path = tmp_path / "sda1.raw.gz"
    path.write_bytes(gzip.compress(gzip.compress(b"\0" * MIB)))
    assert problems_of(path) == ("gzip inside gzip - decompress the outer layer and upload again",)


def test_content_matching_two_formats(tmp_path):
    head = bytearray(MIB)
    head[:4] = b"KDMV"
    head[0x40:0x44] = b"\x7f\x10\xda\xbe"
    path = tmp_path / "sda1.raw"
    path.write_bytes(bytes(head))
    assert problems_of(path) == (
        "content matches several formats: a VMDK image and a VDI image - "
        "the file is refused as ambiguous",
    )


def test_compressed_archive_named_raw(tmp_path):
    path = tmp_path / "sda1.raw"
    path.write_bytes(b"\xfd7zXZ\x00".ljust(MIB, b"\0"))
    assert problems_of(path) == (
        "file named .raw is xz-compressed - decompress it and upload the disk as .qcow2 or "
        ".raw - or gzip-compressed as .qcow2.gz or .raw.gz",
    )


def test_newer_qcow_version(tmp_path):
    path = images.patch(qcow2(tmp_path), 4, struct.pack(">I", 4))
    assert problems_of(path) == (
        "qcow2 version 4 is newer than the versions 2 and 3 OUTSCALE imports - convert it "
        "with a QEMU that reads it: qemu-img convert -O qcow2 -o compat=1.1",
    )


def test_aes_encryption(tmp_path):
    path = images.patch(qcow2(tmp_path), 32, struct.pack(">I", 1))
    assert problems_of(path)[0].startswith("qcow2 is encrypted with AES - OUTSCALE cannot")


def test_unknown_compression_type(tmp_path):
    path = images.patch(qcow2(tmp_path), 104, b"\x07")
    assert problems_of(path) == ("qcow2 uses unknown compression type 7",)


def test_compression_bit_without_compression_type(tmp_path):
    path = images.set_incompatible_bits(qcow2(tmp_path), 1 << 3)
    assert problems_of(path) == (
        "qcow2 compression type and its feature bit disagree - the header is damaged",
    )


def test_v3_header_cut_short(tmp_path):
    path = qcow2(tmp_path)
    os.truncate(path, 80)
    assert problems_of(path) == ("qcow2 v3 header is truncated - the file holds only 80 bytes",)


def test_file_ending_inside_the_extensions(tmp_path):
    path = qcow2(tmp_path)
    os.truncate(path, 116)
    assert problems_of(path) == (
        "qcow2 is truncated: its header cluster reaches byte 65536 but the file has 116 bytes "
        "- upload the whole file again",
        "qcow2 header is truncated inside its extensions - upload the whole file again",
    )


def test_extensions_without_end_marker(tmp_path):
    path = qcow2(tmp_path, "cluster_size=512")
    images.patch(path, 112, struct.pack(">II", 0x12345678, 0) * ((512 - 112) // 8))
    assert "qcow2 header extensions have no end marker - the header is damaged" in (
        problems_of(path)
    )


@pytest.fixture
def qcow2_with_data(tmp_path):
    source = images.raw_with_data(tmp_path / "d.raw", 8 * MIB)
    path = images.convert(source, tmp_path / "sda1.qcow2", "qcow2")
    (l1_offset,) = struct.unpack(">Q", path.read_bytes()[40:48])
    return path, l1_offset


def test_malformed_l1_entry(qcow2_with_data):
    path, l1_offset = qcow2_with_data
    (entry,) = struct.unpack(">Q", path.read_bytes()[l1_offset : l1_offset + 8])
    images.patch(path, l1_offset, struct.pack(">Q", entry | 1))
    assert problems_of(path) == ("qcow2 L1 entry 0 is malformed - the image is damaged",)


def test_l1_entry_past_the_end(qcow2_with_data):
    path, l1_offset = qcow2_with_data
    images.patch(path, l1_offset, struct.pack(">Q", (1 << 63) | (1 << 40)))
    size = path.stat().st_size
    assert problems_of(path) == (
        f"qcow2 is truncated: L1 entry 0 points to byte {1 << 40} past the end of the file at "
        f"{size} - upload the whole file again",
    )


REPAIR = "the partition table is damaged - repair it with fdisk or gdisk"


def hybrid_mbr(path):
    """A GPT's protective MBR with a second, DOS partition beside it (a "hybrid MBR")."""
    images.mbr(path, gpt=True)
    entry = struct.pack("<B3BB3BII", 0, 0, 0, 0, 0x83, 0, 0, 0, 2048, 2048)
    return images.patch(path, 446 + 16, entry)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda path: images.mbr(path, boot_flag=0x12),
            f"raw disk MBR entry 0 has an invalid boot flag 0x12 - {REPAIR}",
        ),
        (hybrid_mbr, f"raw disk GPT protective MBR has other partitions beside it - {REPAIR}"),
        (
            lambda path: images.patch(images.mbr(path, gpt=True), 446 + 8, struct.pack("<I", 2)),
            f"raw disk GPT protective MBR entry 0 is not at sector 1 - {REPAIR}",
        ),
        (
            lambda path: images.patch(images.mbr(path), 446, bytes(16)),
            f"raw disk has a boot sector signature but no partitions - {REPAIR}",
        ),
    ],
    ids=["boot-flag", "hybrid", "protective-start", "no-partitions"],
)
def test_partition_tables_no_firmware_accepts(tmp_path, build, message):
    assert problems_of(build(tmp_path / "sda1.raw")) == (message,)


def test_fat_boot_record_is_not_taken_for_a_partition_table(tmp_path):
    """A disk that is one FAT volume has the boot signature but no partition table."""
    path = images.mbr(tmp_path / "sda1.raw")
    images.patch(path, 0x10, b"\x02")
    images.patch(path, 0x15, b"\xf8")
    images.patch(path, 446, bytes(64))
    found = inspect_snapshot(FileReader(path), path.name)
    assert found.importable, found.problems
