"""Recognise disk and archive formats by their signatures.

One entry per format, each a predicate over the first bytes (``head``) and,
when known, the last 512 bytes (``tail``) of the content. Every entry is
tried, so a file that matches two formats is seen as ambiguous rather than
as whichever check happened to run first.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

HEAD_BYTES = 4096
TAIL_BYTES = 512

QCOW_MAGIC = b"QFI\xfb"
GZIP_MAGIC = b"\x1f\x8b"


def _qcow_version(head: bytes) -> int | None:
    if len(head) < 8 or not head.startswith(QCOW_MAGIC):
        return None
    return struct.unpack_from(">I", head, 4)[0]


def _is_vhd_footer(block: bytes) -> bool:
    # Fixed VHDs carry their only footer in the last 512 bytes (some writers use 511).
    return block[:8] == b"conectix" or block[1:9] == b"conectix"


@dataclass(frozen=True)
class Signature:
    """A format recognised by content: ``name`` is what messages call it."""

    name: str
    matches: Callable[[bytes, bytes | None], bool]


SIGNATURES: tuple[Signature, ...] = (
    Signature("qcow2", lambda head, tail: _qcow_version(head) in (2, 3)),
    Signature("qcow version 1", lambda head, tail: _qcow_version(head) == 1),
    Signature(
        "newer qcow",
        lambda head, tail: _qcow_version(head) not in (None, 1, 2, 3),
    ),
    Signature("gzip", lambda head, tail: head[:2] == GZIP_MAGIC),
    Signature("QED", lambda head, tail: head[:4] == b"QED\x00"),
    Signature(
        "VMDK",
        lambda head, tail: (
            head[:4] in (b"KDMV", b"COWD") or head.lstrip()[:21] == b"# Disk DescriptorFile"
        ),
    ),
    Signature(
        "VHD",
        lambda head, tail: head[:8] == b"conectix" or (tail is not None and _is_vhd_footer(tail)),
    ),
    Signature("VHDX", lambda head, tail: head[:8] == b"vhdxfile"),
    Signature(
        "VDI",
        lambda head, tail: (
            head[0x40:0x44] == b"\x7f\x10\xda\xbe"
            or head.startswith(b"<<< Oracle VM VirtualBox Disk Image >>>")
        ),
    ),
    Signature("LUKS", lambda head, tail: head[:6] in (b"LUKS\xba\xbe", b"SKUL\xba\xbe")),
    Signature("bzip2", lambda head, tail: head[:3] == b"BZh"),
    Signature("xz", lambda head, tail: head[:6] == b"\xfd7zXZ\x00"),
    Signature("zstd", lambda head, tail: head[:4] == b"\x28\xb5\x2f\xfd"),
)

RAW = "raw"


def detect(head: bytes, tail: bytes | None) -> list[str]:
    """Names of every format the content matches; ``["raw"]`` when none does."""
    found = [sig.name for sig in SIGNATURES if sig.matches(head, tail)]
    return found or [RAW]
