"""Every file OUTSCALE cannot import is refused with a message the user can act on."""

from __future__ import annotations

import gzip
import os

import pytest

from chalicelib.inspection import FileReader, inspect_snapshot
from tests import images

MIB = 1 << 20


def problems_of(path, key=None, size_hint=None):
    found = inspect_snapshot(FileReader(path), key or path.name, size_hint=size_hint)
    assert not found.importable
    return " | ".join(found.problems)


def test_backing_file_is_named(tmp_path):
    images.create(tmp_path / "base.qcow2", "qcow2", MIB)
    child = tmp_path / "sda1.qcow2"
    images.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(child))
    assert problems_of(child) == (
        "qcow2 has a backing file base.qcow2 - flatten it with qemu-img convert -O qcow2"
    )


DECRYPT = (
    "OUTSCALE cannot import encrypted images - decrypt it with qemu-img convert -O qcow2 "
    "giving the passphrase in --object secret"
)


def test_aes_encrypted_qcow2(tmp_path):
    path = tmp_path / "enc.qcow2"
    images.qemu_img(
        "create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data=pw",
        "-o", "encrypt.format=aes,encrypt.key-secret=s0", str(path), "64M",
    )  # fmt: skip
    assert images.info(path)["format-specific"]["data"]["encrypt"]["format"] == "aes"
    assert problems_of(path) == f"qcow2 is encrypted with AES - {DECRYPT}"


def test_luks_encrypted_qcow2(tmp_path):
    """crypt_method 2 is LUKS (qemu-img cannot make one reliably: see tests/images.py)."""
    path = images.patch(images.create(tmp_path / "enc.qcow2", "qcow2", MIB), 32, b"\0\0\0\2")
    assert problems_of(path) == f"qcow2 is encrypted with LUKS - {DECRYPT}"


def test_external_data_file_is_named(tmp_path):
    path = images.create(tmp_path / "ext.qcow2", "qcow2", MIB, f"data_file={tmp_path}/ext.data")
    message = problems_of(path)
    assert message.startswith("qcow2 keeps its data in an external file ")
    assert "ext.data - merge it with qemu-img convert -O qcow2" in message


def test_data_file_extension_without_feature_bit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # qemu-img creates the relative data file in its directory
    path = images.create(tmp_path / "ext.qcow2", "qcow2", MIB, "data_file=ext.data")
    images.set_incompatible_bits(path, 0)
    with open(path, "r+b") as handle:  # clear bit 2, keep the extension
        handle.seek(72)
        value = int.from_bytes(handle.read(8), "big") & ~4
        handle.seek(72)
        handle.write(value.to_bytes(8, "big"))
    assert "names an external data file ext.data without the data-file feature bit" in problems_of(
        path
    )


def test_extended_l2(tmp_path):
    path = images.create(tmp_path / "l2.qcow2", "qcow2", MIB, "extended_l2=on")
    assert problems_of(path) == (
        "qcow2 uses extended L2 entries - "
        "convert it with qemu-img convert -O qcow2 -o extended_l2=off"
    )


@pytest.mark.parametrize(
    ("bits", "message"),
    [
        (1, "qcow2 was not closed cleanly: dirty bit set - repair it with qemu-img check -r all"),
        (2, "qcow2 is marked corrupt - repair it with qemu-img check -r all"),
        (1 << 20, "qcow2 uses unknown incompatible features: bits 20 - convert it"),
    ],
    ids=["dirty", "corrupt", "unknown"],
)
def test_incompatible_feature_bits(tmp_path, bits, message):
    path = images.set_incompatible_bits(images.create(tmp_path / "x.qcow2", "qcow2", MIB), bits)
    assert problems_of(path).startswith(message)


def test_truncated_qcow2(tmp_path):
    source = images.raw_with_data(tmp_path / "d.raw", 8 * MIB)
    path = images.convert(source, tmp_path / "t.qcow2", "qcow2")
    os.truncate(path, path.stat().st_size // 2)
    assert problems_of(path).startswith("qcow2 is truncated: ")


def test_truncated_qcow2_header(tmp_path):
    path = images.create(tmp_path / "t.qcow2", "qcow2", MIB)
    os.truncate(path, 50)
    assert problems_of(path) == "qcow2 header is truncated - the file holds only 50 bytes"


@pytest.mark.parametrize(
    ("offset", "data", "message"),
    [
        (20, (30).to_bytes(4, "big"), "qcow2 cluster bits 30 are outside 9 to 21"),
        (24, (0).to_bytes(8, "big"), "qcow2 virtual size is 0"),
        (24, (1000).to_bytes(8, "big"), "qcow2 virtual size 1000 is not a multiple of 512"),
        (4, (1).to_bytes(4, "big"), "file named .qcow2 is a qcow version 1 image"),
    ],
    ids=["cluster-bits", "size-zero", "size-odd", "version-1"],
)
def test_header_field_rules(tmp_path, offset, data, message):
    path = images.patch(images.create(tmp_path / "x.qcow2", "qcow2", MIB), offset, data)
    assert problems_of(path).startswith(message)


def test_empty_file(tmp_path):
    path = tmp_path / "sda1.raw"
    path.write_bytes(b"")
    assert problems_of(path) == "file is empty - upload the disk image again"


def test_raw_not_multiple_of_512(tmp_path):
    path = tmp_path / "sda1.raw"
    path.write_bytes(os.urandom(1000))
    assert problems_of(path) == (
        "raw image size 1000 bytes is not a multiple of 512 - "
        "pad it to whole 512-byte sectors with qemu-img resize -f raw"
    )


@pytest.mark.parametrize(
    ("fmt", "options", "name"),
    [
        ("vmdk", [], "VMDK"),
        ("vpc", [], "VHD"),
        ("vpc", ["subformat=fixed"], "VHD"),
        ("vhdx", [], "VHDX"),
        ("vdi", [], "VDI"),
        ("qed", [], "QED"),
        ("qcow", [], "qcow version 1"),
    ],
    ids=["vmdk", "vhd-dynamic", "vhd-fixed", "vhdx", "vdi", "qed", "qcow1"],
)
@pytest.mark.parametrize("suffix", ["qcow2", "raw"])
def test_foreign_formats_are_named(tmp_path, fmt, options, name, suffix):
    path = images.create(tmp_path / f"sda1.{suffix}", fmt, 16 * MIB, *options)
    assert problems_of(path) == (
        f"file named .{suffix} is a {name} image - OUTSCALE imports qcow2 and raw only - "
        "convert it with qemu-img convert -O qcow2"
    )


def test_luks_named_raw(tmp_path):
    path = images.luks(tmp_path / "sda1.raw", 16 * MIB)
    assert images.info(path)["format"] == "luks"
    assert problems_of(path) == f"file named .raw is a LUKS-encrypted image - {DECRYPT}"


def test_raw_named_qcow2(tmp_path):
    path = images.create(tmp_path / "sda1.qcow2", "raw", MIB)
    assert problems_of(path) == (
        "file named .qcow2 is not a qcow2 image: it has no qcow2 header - "
        "if it is a raw disk rename it to .raw"
    )


def test_qcow2_named_raw(tmp_path):
    path = images.create(tmp_path / "sda1.raw", "qcow2", MIB)
    assert problems_of(path) == "file named .raw is a qcow2 image - rename it to .qcow2"


def test_gzip_named_qcow2(tmp_path):
    qcow = images.create(tmp_path / "x.qcow2", "qcow2", MIB)
    path = images.gzip_file(qcow, tmp_path / "sda1.qcow2")
    assert problems_of(path) == (
        "file named .qcow2 is a gzip-compressed qcow2 image - rename it to .qcow2.gz"
    )


def test_plain_file_named_gz(tmp_path):
    path = images.create(tmp_path / "sda1.raw.gz", "raw", MIB)
    assert problems_of(path) == "file named .raw.gz is a raw disk - rename it to .raw"


def test_qcow2_gz_holding_raw(tmp_path):
    path = images.gzip_file(images.create(tmp_path / "r", "raw", MIB), tmp_path / "sda1.qcow2.gz")
    assert problems_of(path) == (
        "file named .qcow2.gz is not a qcow2 image: it has no qcow2 header - "
        "if it is a raw disk rename it to .raw.gz"
    )


def test_qcow2_gz_holding_vmdk(tmp_path):
    vmdk = images.create(tmp_path / "v.vmdk", "vmdk", 16 * MIB)
    path = images.gzip_file(vmdk, tmp_path / "sda1.qcow2.gz")
    assert problems_of(path).startswith("file named .qcow2.gz is a VMDK image")


def gzipped_image(tmp_path, inner):
    source = images.raw_with_data(tmp_path / "d.raw", 4 * MIB)
    if inner == "qcow2":
        source = images.convert(source, tmp_path / "d.qcow2", "qcow2")
    return images.gzip_file(source, tmp_path / f"sda1.{inner}.gz")


@pytest.mark.parametrize("inner", ["raw", "qcow2"])
def test_corrupt_gzip(tmp_path, inner):
    path = gzipped_image(tmp_path, inner)
    data = bytearray(path.read_bytes())
    data[20:4000] = os.urandom(3980)  # damage the deflate data near the start
    path.write_bytes(bytes(data))
    assert "gzip stream is corrupt near compressed byte" in problems_of(path)


def test_gzip_checksum_mismatch(tmp_path):
    path = images.gzip_file(images.raw_with_data(tmp_path / "sda1.raw", 4 * MIB))
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # CRC32 in the trailer
    path.write_bytes(bytes(data))
    assert problems_of(path) == (
        "gzip checksum does not match its content - the file is corrupt - upload it again"
    )


@pytest.mark.parametrize(
    ("inner", "message"),
    [
        ("raw", "gzip stream is truncated: it ends before its end marker"),
        ("qcow2", "gzip stream or the qcow2 inside it is truncated: the qcow2 needs at least"),
    ],
)
def test_truncated_gzip(tmp_path, inner, message):
    path = gzipped_image(tmp_path, inner)
    os.truncate(path, path.stat().st_size // 2)
    assert problems_of(path).startswith(message)


def test_gzip_with_trailing_garbage(tmp_path):
    path = images.gzip_file(images.create(tmp_path / "sda1.raw", "raw", MIB))
    with open(path, "ab") as handle:
        handle.write(b"garbage!")
    assert problems_of(path) == (
        "gzip file has 8 bytes of trailing data after its last member - "
        "compress the disk again without appending anything"
    )


def test_multi_member_gzip_is_summed(tmp_path):
    path = tmp_path / "sda1.raw.gz"
    path.write_bytes(gzip.compress(b"\0" * MIB) + gzip.compress(os.urandom(MIB)))
    found = inspect_snapshot(FileReader(path), path.name)
    assert found.importable and found.virtual_size == 2 * MIB
    assert found.details["gzip_members"] == 2


@pytest.mark.parametrize(
    ("hint", "message"),
    [
        (
            200 * MIB,
            f"omi:size {200 * MIB} does not agree with the gzip trailer which records "
            f"{64 * MIB} bytes modulo 2 to the 32 - correct or remove the omi:size tag",
        ),
        (
            1000,
            "omi:size 1000 is not a positive multiple of 512 - correct or remove the omi:size tag",
        ),
        (
            64 * MIB + (1 << 40),
            f"omi:size {64 * MIB + (1 << 40)} is more than gzip can expand",
        ),
    ],
    ids=["disagrees", "not-sectors", "beyond-deflate"],
)
def test_wrong_size_hint(tmp_path, hint, message):
    path = images.gzip_file(images.create(tmp_path / "sda1.raw", "raw", 64 * MIB))
    assert problems_of(path, size_hint=hint).startswith(message)


def test_size_hint_does_not_hide_a_misnamed_qcow2_gz(tmp_path):
    raw = images.create(tmp_path / "r", "raw", 64 * MIB)
    path = images.gzip_file(raw, tmp_path / "sda1.qcow2.gz")
    assert problems_of(path, size_hint=64 * MIB).startswith(
        "file named .qcow2.gz is not a qcow2 image: it has no qcow2 header"
    )
