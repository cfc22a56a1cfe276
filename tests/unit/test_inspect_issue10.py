"""The cases seen when our verdicts were compared with qemu-img and oslo.utils, one image each."""

from __future__ import annotations

import gzip
import os
import random
import re
import struct

import pytest

from chalicelib.inspection import FileReader, S3Reader, image_suffix, inspect_snapshot
from tests import images
from tests.conftest import RANGED_BUCKET

MIB = 1 << 20
BUCKET = RANGED_BUCKET
RANGE = re.compile(r"^bytes=\d+-\d+$")


def inspect(path, key=None):
    return inspect_snapshot(FileReader(path), key or path.name)


@pytest.fixture
def s3(ranged_s3):
    return ranged_s3


SHORT = [
    (b"", "sda1.raw", "file is empty - upload the disk image again"),
    (
        b"\1" * 100,
        "sda1.raw",
        "raw image of 100 bytes is shorter than one 512-byte sector - it is not a disk - "
        "upload the whole disk image",
    ),
    (
        b"conectix" * 50,
        "sda1.raw",
        "file named .raw is a VHD image - OUTSCALE imports qcow2 and raw only - "
        "convert it with qemu-img convert -O qcow2",
    ),
    (b"QFI\xfb\0\0", "sda1.qcow2", "raw image of 6 bytes is shorter than one 512-byte sector"),
    (b"\x1f\x8b\x08", "sda1.raw.gz", "gzip stream is truncated: it ends before its end marker"),
]


@pytest.mark.parametrize(("data", "key", "message"), SHORT)
def test_files_shorter_than_a_sector_get_a_message(tmp_path, data, key, message):
    path = tmp_path / key
    path.write_bytes(data)
    found = inspect(path)
    assert found.problems[-1].startswith(message), found.problems


@pytest.mark.parametrize(("data", "key", "message"), SHORT)
def test_short_files_through_s3_use_well_formed_ranges(s3, data, key, message):
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    found = inspect_snapshot(S3Reader(s3, BUCKET, key), key)
    assert found.problems[-1].startswith(message)
    assert all(RANGE.match(r) for r in s3.ranges), s3.ranges


def test_qcow2_of_300_bytes_is_called_truncated_first(tmp_path):
    path = images.create(tmp_path / "sda1.qcow2", "qcow2", MIB)
    os.truncate(path, 300)
    assert inspect(path).problems[0] == (
        "qcow2 is truncated: its header cluster reaches byte 65536 but the file has 300 bytes "
        "- upload the whole file again"
    )


@pytest.fixture
def qcow2_cut_to_256k(tmp_path):
    source = images.raw_with_data(tmp_path / "d.raw", 8 * MIB)
    path = images.convert(source, tmp_path / "sda1.qcow2", "qcow2")
    os.truncate(path, 256 * 1024)
    return path


def test_qcow2_cut_short_then_gzipped_is_refused_like_its_uncompressed_form(qcow2_cut_to_256k):
    plain = inspect(qcow2_cut_to_256k)
    packed = inspect(images.gzip_file(qcow2_cut_to_256k))
    assert plain.problems[0].startswith("qcow2 is truncated: L1 entry 0 points to byte")
    assert packed.problems == plain.problems
    assert packed.bytes_read <= 64 * 1024


def test_big_qcow2_gz_whose_tables_no_length_can_reach(tmp_path):
    """Above 4 MiB of gzip the trailer's length is ambiguous modulo 2**32; tables past
    every length the stream can hold still get it refused."""
    qcow = images.create(tmp_path / "x.qcow2", "qcow2", MIB)
    images.patch(qcow, 48, struct.pack(">Q", 1 << 40))  # the refcount table at 1 TiB
    noise = random.Random(10).randbytes(5 * MIB)  # incompressible: a 5 MiB stream
    path = tmp_path / "sda1.qcow2.gz"
    path.write_bytes(gzip.compress(qcow.read_bytes() + noise, compresslevel=1))
    assert path.stat().st_size * 1032 > 1 << 32
    found = inspect(path)
    assert found.problems == (
        f"gzip stream or the qcow2 inside it is truncated: the qcow2 needs at least "
        f"{(1 << 40) + 65536} bytes but the gzip trailer records "
        f"{(qcow.stat().st_size + 5 * MIB) % (1 << 32)} bytes modulo 2 to the 32 - "
        "upload the whole file again",
    )
    assert found.bytes_read <= 64 * 1024


def test_snapshot_table_past_the_end_of_the_file(tmp_path):
    path = images.create(tmp_path / "sda1.qcow2", "qcow2", MIB)
    images.qemu_img("snapshot", "-c", "before", str(path))
    (count,) = struct.unpack_from(">I", path.read_bytes(), 60)
    assert count == 1
    images.patch(path, 64, struct.pack(">Q", 1 << 30))
    assert inspect(path).problems == (
        "qcow2 is truncated: its snapshot table reaches byte 1073741864 but the file has "
        f"{path.stat().st_size} bytes - upload the whole file again",
    )


def test_qcow2_gz_named_raw_gz_is_told_the_right_suffix(tmp_path):
    qcow = images.create(tmp_path / "x.qcow2", "qcow2", MIB)
    path = images.gzip_file(qcow, tmp_path / "sda1.raw.gz")
    assert inspect(path).problems == (
        "file named .raw.gz is a gzip-compressed qcow2 image - rename it to .qcow2.gz",
    )


def test_vmdk_descriptor_named_raw_gz(tmp_path):
    descriptor = images.vmdk_descriptor(tmp_path / "d", "# not a Disk DescriptorFile line")
    found = inspect(images.gzip_file(descriptor, tmp_path / "sda1.raw.gz"))
    assert found.format == "vmdk.gz"
    assert found.problems == (
        "file named .raw.gz is a VMDK text descriptor whose extent is /etc/passwd - it points "
        "to other files - OUTSCALE imports qcow2 and raw only - convert the disk it describes "
        "with qemu-img convert -O qcow2",
    )


@pytest.mark.parametrize(
    ("builder", "key", "message"),
    [
        ("raw", "web/disk.img", "file named .img is a raw disk - rename it to .raw"),
        (
            "raw.gz",
            "web/disk.IMG.gz",
            "file named .img.gz is a gzip-compressed raw disk - rename it to .raw.gz",
        ),
        ("qcow2", "web/disk.img", "file named .img is a qcow2 image - rename it to .qcow2"),
        ("qcow2", "web/disk.qcow", "file named .qcow is a qcow2 image - rename it to .qcow2"),
        (
            "vmdk",
            "web/disk.vmdk",
            "file named .vmdk is a VMDK image - OUTSCALE imports qcow2 and raw only - "
            "convert it with qemu-img convert -O qcow2",
        ),
        (
            "iso",
            "web/install.iso",
            "file named .iso is an ISO 9660 CD or DVD image - a CD or DVD image is not a disk "
            "OUTSCALE boots - install the system on a disk and upload that disk as qcow2 or raw",
        ),
    ],
)
def test_other_disk_image_names_say_what_to_do(tmp_path, builder, key, message):
    path = tmp_path / "image"
    if builder == "iso":
        images.iso9660(path)
    elif builder == "raw.gz":
        path.write_bytes(gzip.compress(bytes(MIB)))
    else:
        images.create(path, builder, MIB)
    assert inspect(path, key).problems == (message,)


@pytest.mark.parametrize(
    ("key", "suffix"),
    [
        ("a/sda1.qcow2", "qcow2"),
        ("a/disk.IMG", "img"),
        ("a/disk.img.gz", "img.gz"),
        ("a/disk.vhdx", "vhdx"),
        ("a/disk.raw.xz", "raw.xz"),
        ("a/notes.txt", None),
        ("a/disk.qcow2.bak", None),
        ("a/image", None),
    ],
)
def test_image_suffix(key, suffix):
    assert image_suffix(key) == suffix


@pytest.fixture
def qcow2_bytes(tmp_path):
    source = images.raw_with_data(tmp_path / "d.raw", 4 * MIB)
    return images.convert(source, tmp_path / "q", "qcow2").read_bytes()


def test_qcow2_gz_whose_first_member_ends_early_is_not_judged_by_the_last_one(
    tmp_path, qcow2_bytes
):
    path = tmp_path / "sda1.qcow2.gz"
    path.write_bytes(gzip.compress(qcow2_bytes[:20_000]) + gzip.compress(qcow2_bytes[20_000:]))
    found = inspect(path)
    assert found.importable, found.problems
    assert found.virtual_size == 4 * MIB


def test_qcow2_gz_whose_trailer_contradicts_its_stream(tmp_path, qcow2_bytes):
    path = tmp_path / "sda1.qcow2.gz"  # the last member holds 512 bytes, as its trailer says
    path.write_bytes(gzip.compress(qcow2_bytes[:-512]) + gzip.compress(qcow2_bytes[-512:]))
    assert inspect(path).problems == (
        "gzip trailer records 512 bytes but the stream holds more - the file is damaged or "
        "made of several gzip members - compress the qcow2 again as one gzip stream",
    )
