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


def qemu_img(*args: str) -> str:
    assert QEMU_IMG, "qemu-img is missing: `make test` installs qemu-utils"
    done = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, check=True)
    return done.stdout


def info(path: Path) -> dict:
    """What qemu-img itself says of a file: the reference we check against."""
    return json.loads(qemu_img("info", "--output=json", str(path)))


def create(path: Path, fmt: str, size: int | str, *options: str) -> Path:
    opts = ["-o", ",".join(options)] if options else []
    qemu_img("create", "-q", "-f", fmt, *opts, str(path), str(size))
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
