"""Real disk images for tests, made by qemu-img, and small byte-level edits of them."""

from __future__ import annotations

import gzip
import json
import random
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

QEMU_IMG = shutil.which("qemu-img")


class QemuImgError(RuntimeError):
    """qemu-img failed: the message carries its command line and its stderr."""


def qemu_img(*args: str) -> str:
    assert QEMU_IMG, "qemu-img is missing: `make test` installs qemu-utils"
    done = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise QemuImgError(
            f"qemu-img {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}"
        )
    return done.stdout


def info(path: Path) -> dict:
    """What qemu-img itself says of a file: the reference we check against."""
    return json.loads(qemu_img("info", "--output=json", str(path)))


def create(path: Path, fmt: str, size: int | str, *options: str) -> Path:
    opts = ["-o", ",".join(options)] if options else []
    qemu_img("create", "-q", "-f", fmt, *opts, str(path), str(size))
    return path


# qemu-img times LUKS key derivation on every create, whatever iter-time says, and fails
# now and then ("Unable to get accurate CPU usage"). LUKS images are therefore built here,
# header by header (LUKS1 on-disk format, the values qemu-img itself writes); qemu-img info
# reads them without a key, which is all these tests need from it.
LUKS_PAYLOAD_SECTORS = 4040
LUKS_STRIPES = 4000
LUKS_SLOT_ACTIVE, LUKS_SLOT_INACTIVE = 0x00AC71F3, 0x0000DEAD


def luks_header(key_bytes: int = 64) -> bytes:
    """A LUKS1 header for aes-xts-plain64 with one active key slot and no real key."""
    header = struct.pack(
        ">6sH32s32s32sII20s32sI40s",
        b"LUKS\xba\xbe", 1, b"aes", b"xts-plain64", b"sha256",
        LUKS_PAYLOAD_SECTORS, key_bytes, bytes(20), bytes(32), 1000,
        b"70b89101-e2a3-49b5-b14b-8f8d8e26b234",
    )  # fmt: skip
    material_sectors = -(-key_bytes * LUKS_STRIPES // 512)
    for slot in range(8):
        state, iterations = (LUKS_SLOT_ACTIVE, 1000) if slot == 0 else (LUKS_SLOT_INACTIVE, 0)
        offset = 8 + slot * ((material_sectors + 7) // 8 * 8)
        header += struct.pack(">II32sII", state, iterations, bytes(32), offset, LUKS_STRIPES)
    return header


def luks(path: Path, size: int) -> Path:
    """A LUKS container of ``size`` bytes of (unreadable) payload."""
    with open(path, "wb") as handle:
        handle.write(luks_header())
        handle.truncate(LUKS_PAYLOAD_SECTORS * 512 + size)
    return path


def raw_with_data(path: Path, size: int) -> Path:
    """A sparse raw disk with recognisable data at its start, middle and end.

    The data is pseudo-random with fixed seeds: the same bytes on every run, and none
    that look like a signature or a partition table.
    """
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset in (0, size // 2, size - 65536):
            handle.seek(max(offset, 0))
            handle.write(random.Random(offset).randbytes(4096) + b"omi-manifest test data" * 100)
    return path


def convert(source: Path, target: Path, fmt: str, *options: str, compress: bool = False) -> Path:
    args = ["convert", "-q", "-O", fmt]
    if compress:
        args.append("-c")
    if options:
        args += ["-o", ",".join(options)]
    qemu_img(*args, str(source), str(target))
    return target


def gzip_file(path: Path, target: Path | None = None) -> Path:
    target = target or path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(target, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return target


def set_incompatible_bits(path: Path, bits: int) -> Path:
    """OR ``bits`` into a qcow2 v3 header's incompatible-features field."""
    with open(path, "r+b") as handle:
        handle.seek(72)
        (current,) = struct.unpack(">Q", handle.read(8))
        handle.seek(72)
        handle.write(struct.pack(">Q", current | bits))
    return path


def patch(path: Path, offset: int, data: bytes) -> Path:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    return path


# --- hand-made headers, for formats qemu-img cannot write ----------------------------------
# Each is the least a reader (qemu's driver, oslo's inspector) needs to recognise the format.

SECTOR = 512
DESCRIPTOR = 2048  # ISO 9660 / UDF volume descriptor size, from byte 32768


def _volume_descriptors(path: Path, size: int, descriptors: list[bytes]) -> Path:
    data = bytearray(size)
    for index, descriptor in enumerate(descriptors):
        data[32768 + index * DESCRIPTOR : 32768 + (index + 1) * DESCRIPTOR] = descriptor.ljust(
            DESCRIPTOR, b"\0"
        )
    path.write_bytes(bytes(data))
    return path


def iso9660(path: Path, size: int = 1 << 20) -> Path:
    """An ISO 9660 volume: a primary volume descriptor at 32 KiB, then the set terminator."""
    blocks = size // DESCRIPTOR
    primary = bytearray(DESCRIPTOR)
    primary[0:7] = b"\x01CD001\x01"
    primary[40:72] = b"TEST".ljust(32)
    primary[80:88] = struct.pack("<I", blocks) + struct.pack(">I", blocks)
    primary[128:132] = struct.pack("<H", DESCRIPTOR) + struct.pack(">H", DESCRIPTOR)
    return _volume_descriptors(path, size, [bytes(primary), b"\xffCD001\x01"])


def udf(path: Path, size: int = 1 << 20) -> Path:
    """A UDF volume recognition sequence (ECMA-167): BEA01, NSR02, TEA01 from 32 KiB."""
    return _volume_descriptors(path, size, [b"\x00BEA01\x01", b"\x00NSR02\x01", b"\x00TEA01\x01"])


def qcow2_in_iso(path: Path) -> Path:
    """oslo's format gadget: a qcow2 header in the system area of an ISO 9660 image."""
    qcow = create(path.with_name("gadget.qcow2"), "qcow2", 5 << 20)
    iso = iso9660(path.with_name("gadget.iso"), 64 << 20)
    path.write_bytes(qcow.read_bytes()[:32768] + iso.read_bytes()[32768:])
    return path


def vmdk_descriptor(path: Path, first_line: str = "version=1", extent: str = "/etc/passwd") -> Path:
    """A 512-byte text VMDK descriptor whose FLAT extent is another file."""
    lines = [
        first_line,
        *(["version=1"] if not first_line.startswith("version=") else []),
        "CID=fffffffe",
        "parentCID=ffffffff",
        'createType="monolithicFlat"',
        "",
        f'RW 4 FLAT "{extent}" 0',
        "",
        'ddb.virtualHWVersion = "4"',
    ]
    path.write_bytes("\n".join(lines).encode().ljust(SECTOR, b"\0"))
    return path


def cloop(path: Path, block_size: int = 64 * 1024, blocks: int = 16) -> Path:
    """A cloop v2.0 image: the shell preamble, block size and count, offsets, zlib blocks."""
    preamble = (
        b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
    ).ljust(128, b"\0")
    block = zlib.compress(bytes(block_size))
    start = 128 + 8 + (blocks + 1) * 8
    offsets = [start + index * len(block) for index in range(blocks + 1)]
    header = preamble + struct.pack(">II", block_size, blocks)
    path.write_bytes(header + struct.pack(f">{blocks + 1}Q", *offsets) + block * blocks)
    return path


def bochs(path: Path, size: int = 1 << 20, extent: int = 64 * 1024) -> Path:
    """A Bochs growing redolog image with an empty catalog."""
    catalog = size // extent
    header = bytearray(SECTOR)
    header[0:32] = b"Bochs Virtual HD Image".ljust(32, b"\0")
    header[32:48] = b"Redolog".ljust(16, b"\0")
    header[48:64] = b"Growing".ljust(16, b"\0")
    struct.pack_into("<IIIIIIQ", header, 64, 0x20000, SECTOR, catalog, SECTOR, extent, 0, size)
    path.write_bytes(bytes(header) + b"\xff" * 4 * catalog)
    return path


def dmg(path: Path, size: int = 1 << 20) -> Path:
    """Data followed by an Apple UDIF trailer: the 512-byte "koly" block at the very end."""
    trailer = bytearray(SECTOR)
    struct.pack_into(">4sII", trailer, 0, b"koly", 4, SECTOR)
    path.write_bytes(bytes(size) + bytes(trailer))
    return path


def mbr(path: Path, size: int = 4 << 20, gpt: bool = False, boot_flag: int = 0x80) -> Path:
    """A raw disk with a DOS partition table (or a GPT's protective MBR) and nothing else."""
    sector = bytearray(SECTOR)
    if gpt:
        entry = struct.pack("<B3BB3BII", 0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, size // SECTOR - 1)
    else:
        entry = struct.pack("<B3BB3BII", boot_flag, 0, 33, 4, 0x83, 0xFE, 0xFF, 0xFF, 2048, 4096)
    sector[446:462] = entry
    sector[510:512] = b"\x55\xaa"
    with open(path, "wb") as handle:
        handle.write(bytes(sector))
        handle.truncate(size)
    return path
