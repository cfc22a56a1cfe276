"""Fuzzed headers and truncations: every one gets a verdict with a message, never an exception.

The cases are drawn from fixed seeds, so every run tries the same bytes.
"""

from __future__ import annotations

import gzip
import random
import re
import struct
from collections.abc import Iterator

import pytest

from chalicelib.inspection import inspect_snapshot
from tests import images

MIB = 1 << 20
PREFIX = 64 * 1024
CASES_PER_FORMAT = 300
TAG_SAFE = re.compile(r"^[A-Za-z0-9 _.:/=+\-@]+$")
# Field offsets and widths of each header, from the formats' specifications.
FIELDS = {
    "qcow2": [(4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (40, 8), (48, 8),
              (56, 4), (60, 4), (64, 8), (72, 8), (80, 8), (88, 8), (96, 4), (100, 4), (104, 1),
              (112, 4), (116, 4)],
    "vmdk": [(4, 4), (8, 4), (12, 8), (20, 8), (28, 8), (36, 8), (44, 4), (48, 8), (56, 8),
             (64, 8), (72, 1), (77, 2), (512, 64)],
    "vhd": [(8, 4), (12, 4), (16, 8), (24, 4), (40, 8), (48, 8), (60, 4), (512, 8), (528, 8),
            (536, 4), (540, 4), (544, 4)],
}  # fmt: skip
EXTREMES = (0, 1, 0x7F, 0xFF, 0x8000, 0xFFFF, 1 << 31, 0xFFFFFFFF, 1 << 63, (1 << 64) - 1)


class BytesReader:
    """The Reader protocol over bytes in memory: thousands of cases without touching a disk."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.bytes_read, self.requests = data, len(data), 0, 0

    def read_at(self, offset: int, length: int) -> bytes:
        assert offset >= 0 and length >= 0, (offset, length)
        self.requests += 1
        chunk = self.data[offset : offset + length]
        self.bytes_read += len(chunk)
        return chunk

    def stream(self, offset: int = 0, chunk_size: int = MIB) -> Iterator[bytes]:
        for start in range(offset, self.size, chunk_size):
            yield self.read_at(start, chunk_size)


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """A small valid image of each format, as qemu-img makes it."""
    folder = tmp_path_factory.mktemp("fuzz")
    source = images.raw_with_data(folder / "disk.raw", 4 * MIB)
    made = {
        "qcow2": images.convert(source, folder / "disk.qcow2", "qcow2"),
        "vmdk": images.convert(source, folder / "disk.vmdk", "vmdk"),
        "vhd": images.convert(source, folder / "disk.vhd", "vpc"),
    }
    return {fmt: path.read_bytes() for fmt, path in made.items()}


def judge(data: bytes, key: str) -> None:
    """Inspection answers, and its answer is one a user can act on."""
    found = inspect_snapshot(BytesReader(data), key)
    if found.importable:
        assert found.problems == ()
        assert found.virtual_size and found.virtual_size % 512 == 0
    else:
        assert found.problems
        assert all(TAG_SAFE.match(p) and len(p) <= 240 for p in found.problems), found.problems
    if not key.endswith(".raw.gz"):
        assert found.bytes_read <= 2 * PREFIX


def mutations(data: bytes, fmt: str, seed: int) -> Iterator[bytes]:
    """Valid headers with one to three fields set to random or extreme values."""
    rng = random.Random(seed)
    for _ in range(CASES_PER_FORMAT):
        mutated = bytearray(data)
        for offset, width in rng.sample(FIELDS[fmt], rng.randint(1, 3)):
            if width > 8:
                mutated[offset : offset + width] = rng.randbytes(width)
                continue
            value = rng.choice(EXTREMES) if rng.random() < 0.5 else rng.getrandbits(width * 8)
            value &= (1 << (width * 8)) - 1
            endian = "little" if fmt == "vmdk" else "big"
            mutated[offset : offset + width] = value.to_bytes(width, endian)
        yield bytes(mutated)


@pytest.mark.parametrize("fmt", sorted(FIELDS))
def test_random_header_fields(valid, fmt):
    for index, data in enumerate(mutations(valid[fmt], fmt, seed=sum(map(ord, fmt)))):
        judge(data, f"case{index}.raw")
        judge(data, f"case{index}.qcow2")
        if index % 10 == 0:
            judge(gzip.compress(data, compresslevel=1), f"case{index}.qcow2.gz")


@pytest.mark.parametrize("fmt", sorted(FIELDS))
def test_truncated_at_every_sector(valid, fmt):
    data = valid[fmt]
    lengths = [1, 7, 8, 71, 72, 103, 104, 300, 511, *range(512, PREFIX + 1, 512)]
    for length in lengths:
        judge(data[:length], f"cut{length}.qcow2")
        judge(data[:length], f"cut{length}.raw")
        judge(gzip.compress(data[:length], compresslevel=1), f"cut{length}.qcow2.gz")
        judge(gzip.compress(data[:length], compresslevel=1), f"cut{length}.raw.gz")


def test_truncated_qcow2_is_always_refused(valid):
    """Every cut of a qcow2 that drops part of what its tables point to is refused."""
    data = valid["qcow2"]
    (l1_offset,) = struct.unpack_from(">Q", data, 40)
    for length in range(512, min(len(data), l1_offset + 512), 512):
        found = inspect_snapshot(BytesReader(data[:length]), "sda1.qcow2")
        assert not found.importable
        assert found.problems[0].startswith("qcow2 is truncated"), (length, found.problems)
