"""Recognise disk, disc and archive formats by their signatures.

One entry per format, in the manner of oslo.utils' format inspector: each
looks at the same few regions of the content (a ``Probe``) and says whether
the format is there. Every entry is tried, so a file that matches two formats
(a qcow2 header in an ISO's system area: a "format gadget") is seen as
ambiguous rather than as whichever check happened to run first.

The rules are at least as wide as ``qemu-img``'s probes (block/*.c
``*_probe`` in QEMU) and oslo's ``format_match``: a file is raw only when
neither would call it anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from .result import safe_name

TAIL_BYTES = 512
# ISO 9660 and UDF start their volume recognition sequence at 32 KiB, one descriptor
# per 2048-byte sector (ECMA-119 8.1, ECMA-167 2/8.3).
VOLUME_DESCRIPTORS_AT = 32 * 1024
VOLUME_DESCRIPTOR_BYTES = 2048
# The first read takes every region the signatures look at but the tail: one request.
HEAD_BYTES = VOLUME_DESCRIPTORS_AT + VOLUME_DESCRIPTOR_BYTES
VOLUME_IDENTIFIERS = {
    b"CD001": "an ISO 9660 CD or DVD image",
    b"BEA01": "a UDF DVD image",
    b"NSR02": "a UDF DVD image",
    b"NSR03": "a UDF DVD image",
    b"BOOT2": "a UDF DVD image",
    b"TEA01": "a UDF DVD image",
    b"CDW02": "an ISO 9660 CD or DVD image",
}

QCOW_MAGIC = b"QFI\xfb"
GZIP_MAGIC = b"\x1f\x8b"
RAW = "raw"

CONVERT = "OUTSCALE imports qcow2 and raw only - convert it with qemu-img convert -O qcow2"
DECOMPRESS = (
    "decompress it and upload the disk as .qcow2 or .raw - or gzip-compressed as "
    ".qcow2.gz or .raw.gz"
)


@dataclass(frozen=True)
class Probe:
    """The regions every signature looks at.

    ``head`` is the first bytes of the content (``HEAD_BYTES``, or all of a
    shorter file), ``tail`` the last 512 bytes when they are known (they are
    not for a gzip stream that was not inflated).
    """

    head: bytes
    tail: bytes | None = None

    @property
    def descriptors(self) -> bytes:
        """The sector at 32 KiB: the first volume descriptor of an ISO 9660 or UDF image."""
        return self.head[VOLUME_DESCRIPTORS_AT : VOLUME_DESCRIPTORS_AT + VOLUME_DESCRIPTOR_BYTES]


@dataclass(frozen=True)
class Match:
    """A format found: ``name`` is its lowercase id (``format`` reports it), ``label``
    what a message calls this very file, ``advice`` what the user should do."""

    name: str
    label: str
    advice: str = CONVERT


@dataclass(frozen=True)
class Signature:
    """One format: ``label`` returns the message's name for it when the probe matches."""

    name: str
    label: Callable[[Probe], str | None]
    advice: str = CONVERT


def qcow_version(head: bytes) -> int | None:
    if len(head) < 8 or not head.startswith(QCOW_MAGIC):
        return None
    return struct.unpack_from(">I", head, 4)[0]


def _qcow2(probe: Probe) -> str | None:
    version = qcow_version(probe.head)
    return "a qcow2 image" if version is not None and version >= 2 else None


def _qcow1(probe: Probe) -> str | None:
    version = qcow_version(probe.head)
    return f"a qcow version {version} image" if version is not None and version < 2 else None


def _vmdk_text(probe: Probe) -> str | None:
    extent = _vmdk_descriptor_extent(probe.head)
    if extent is None:
        return None
    return f"a VMDK text descriptor whose extent is {extent}" if extent else "a VMDK descriptor"


def _vmdk_descriptor_extent(head: bytes) -> str | None:
    """The first extent's file name ("" if none) when ``head`` is a VMDK text descriptor.

    QEMU's ``vmdk_probe`` skips comment and blank lines and takes the file as a
    descriptor when the next line is ``version=N``; oslo takes any ASCII text
    naming a ``createType``. Either is enough here, and ``createType=`` as the
    first line counts too.
    """
    text = head.split(b"\0", 1)[0]
    significant = [
        line.strip()
        for line in text.split(b"\n")
        if line.strip() and not line.strip().startswith(b"#")
    ]
    first = significant[0].lower() if significant else b""
    is_descriptor = (
        first.startswith((b"version=", b"createtype="))
        or (b"createtype=" in text.lower() and text.isascii())
        or head.lstrip().startswith(b"# Disk DescriptorFile")
    )
    if not is_descriptor:
        return None
    for line in significant:
        fields = line.split(b'"')
        if line.split(b" ", 1)[0].upper() in (b"RW", b"RDONLY", b"NOACCESS") and len(fields) > 1:
            return safe_name(fields[1].decode("ascii", "replace"))
    return ""


def _vhd(probe: Probe) -> str | None:
    # Dynamic VHDs start with a copy of the footer; fixed VHDs carry it only in their
    # last 512 bytes (some writers use 511).
    tail = probe.tail or b""
    if probe.head[:8] == b"conectix" or b"conectix" in (tail[:8], tail[1:9]):
        return "a VHD image"
    return None


def _volume_descriptors(probe: Probe) -> str | None:
    return VOLUME_IDENTIFIERS.get(probe.descriptors[1:6])


def _dmg(probe: Probe) -> str | None:
    # The UDIF trailer ("koly" block) is the last 512 bytes of an Apple disk image.
    return "an Apple DMG image" if (probe.tail or b"")[:4] == b"koly" else None


def _magic(offset: int, magics: tuple[bytes, ...], label: str) -> Callable[[Probe], str | None]:
    def matches(probe: Probe) -> str | None:
        found = any(probe.head[offset : offset + len(m)] == m for m in magics)
        return label if found else None

    return matches


CD_ADVICE = (
    "a CD or DVD image is not a disk OUTSCALE boots - install the system on a disk "
    "and upload that disk as qcow2 or raw"
)
LUKS_ADVICE = (
    "OUTSCALE cannot import encrypted images - decrypt it with qemu-img convert -O qcow2 "
    "giving the passphrase in --object secret"
)
DESCRIPTOR_ADVICE = (
    "it points to other files - OUTSCALE imports qcow2 and raw only - convert the disk it "
    "describes with qemu-img convert -O qcow2"
)

SIGNATURES: tuple[Signature, ...] = (
    Signature("qcow2", _qcow2),
    Signature("qcow", _qcow1),
    Signature("gzip", _magic(0, (GZIP_MAGIC,), "gzip-compressed"), DECOMPRESS),
    Signature("qed", _magic(0, (b"QED\x00",), "a QED image")),
    Signature("vmdk", _magic(0, (b"KDMV", b"COWD"), "a VMDK image")),
    Signature("vmdk", _vmdk_text, DESCRIPTOR_ADVICE),
    Signature("vhd", _vhd),
    Signature("vhdx", _magic(0, (b"vhdxfile",), "a VHDX image")),
    Signature("vdi", _magic(0x40, (b"\x7f\x10\xda\xbe",), "a VDI image")),
    Signature(
        "luks", _magic(0, (b"LUKS\xba\xbe", b"SKUL\xba\xbe"), "a LUKS-encrypted image"), LUKS_ADVICE
    ),
    Signature(
        "parallels",
        _magic(0, (b"WithoutFreeSpace", b"WithouFreSpacExt"), "a Parallels image"),
    ),
    Signature("cloop", _magic(0, (b"#!/bin/sh\n#V2.0 Format\n",), "a cloop compressed image")),
    Signature("bochs", _magic(0, (b"Bochs Virtual HD Image",), "a Bochs image")),
    Signature("dmg", _dmg),
    Signature("iso", _volume_descriptors, CD_ADVICE),
    Signature("bzip2", _magic(0, (b"BZh",), "bzip2-compressed"), DECOMPRESS),
    Signature("xz", _magic(0, (b"\xfd7zXZ\x00",), "xz-compressed"), DECOMPRESS),
    Signature("zstd", _magic(0, (b"\x28\xb5\x2f\xfd",), "zstd-compressed"), DECOMPRESS),
)


def detect(probe: Probe) -> list[Match]:
    """Every format the content matches; a single raw match when none does."""
    found = []
    for signature in SIGNATURES:
        label = signature.label(probe)
        if label:
            found.append(Match(signature.name, label, signature.advice))
    return found or [Match(RAW, "a raw disk", "")]
