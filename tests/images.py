"""Real disk images for tests, made by qemu-img, and small byte-level edits of them."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
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
    """A sparse raw disk with recognisable data at its start, middle and end."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset in (0, size // 2, size - 65536):
            handle.seek(max(offset, 0))
            handle.write(os.urandom(4096) + b"omi-manifest test data" * 100)
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
