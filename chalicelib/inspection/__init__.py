"""Snapshot inspection: what a file is, how big its disk is, can OUTSCALE import it.

The format is decided by content, then checked against the file name. Reads
are ranged and bounded: qcow2, raw and qcow2.gz cost a few small reads
whatever their size; only raw.gz without a size hint is streamed, because
the gzip trailer holds its length modulo 2**32 only.

``Inspection.format`` is always lowercase: ``qcow2``, ``raw``, ``qcow2.gz``,
``raw.gz``, or another format's short name (``vmdk``, ``vhd``, ``iso``, …),
with ``.gz`` when it came inside gzip.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from . import gzipped
from .qcow2 import inspect_qcow2, l1_table_end
from .raw import raw_problems
from .readers import FileReader, Reader, S3Reader, read_tail
from .result import Inspection, tag_safe
from .signatures import (
    GZIP_MAGIC,
    HEAD_BYTES,
    QCOW_MAGIC,
    RAW,
    TAIL_BYTES,
    Match,
    Probe,
    detect,
)

Ceilings = gzipped.Ceilings

__all__ = [
    "FORMATS",
    "Ceilings",
    "FileReader",
    "Inspection",
    "Reader",
    "S3Reader",
    "declared_format",
    "image_suffix",
    "inspect_snapshot",
]

FORMATS = ("qcow2.gz", "raw.gz", "qcow2", "raw")  # longest suffix first
# Names of disk images in formats (or compressions) the pipeline does not import.
# Such files are not ignored: they get a message saying what to rename or convert.
OTHER_IMAGE_SUFFIX = re.compile(
    r"\.((?:img|vmdk|vhdx?|vdi|qcow|qed|iso|dmg|hdd|hds|luks|dsk)(?:\.(?:gz|xz|bz2|zst))?"
    r"|(?:qcow2|raw)\.(?:xz|bz2|zst))$",
    re.IGNORECASE,
)
MESSAGE_LIMIT = 240
QCOW2_PREFIX = 64 * 1024  # decompressed bytes of a qcow2.gz that inspection looks at
QCOW2_PREFIX_LIMIT = 8 << 20  # further, up to its L1 table, when the input budget allows
GZIP_IN_GZIP = "gzip inside gzip - decompress the outer layer and upload again"
DESCRIPTIONS = {
    "qcow2": "a qcow2 image",
    "raw": "a raw disk",
    "qcow2.gz": "a gzip-compressed qcow2 image",
    "raw.gz": "a gzip-compressed raw disk",
}

ReadAt = Callable[[int, int], bytes]


def declared_format(key: str) -> str | None:
    """The format a key's suffix announces (case-insensitive), or None."""
    lowered = key.lower()
    return next((fmt for fmt in FORMATS if lowered.endswith("." + fmt)), None)


def image_suffix(key: str) -> str | None:
    """The disk-image suffix of a key, lowercase: one we import, or another one
    (``img``, ``vmdk``, ``iso.gz``, …) that gets a message instead; None otherwise."""
    other = OTHER_IMAGE_SUFFIX.search(key)
    return declared_format(key) or (other.group(1).lower() if other else None)


@dataclass(frozen=True)
class Content:
    """What the (decompressed) content is and what is wrong with it."""

    format: str
    virtual_size: int | None
    problems: list[str]
    details: dict[str, object] = field(default_factory=dict)


def inspect_snapshot(
    reader: Reader,
    key: str,
    size_hint: int | None = None,
    progress: Callable[[int], None] | None = None,
    ceilings: gzipped.Ceilings = gzipped.DEFAULT_CEILINGS,
) -> Inspection:
    """Inspect one snapshot file; never raises on bad content, returns problems."""
    named = image_suffix(key)
    if reader.size == 0:
        return _result(reader, Content(RAW, None, ["file is empty - upload the disk image again"]))
    head = reader.read_at(0, HEAD_BYTES)
    if head[:2] == GZIP_MAGIC:
        return _result(reader, _inspect_gzip(reader, head, named, size_hint, progress, ceilings))
    probe = Probe(head)
    found = detect(probe)
    if _is_raw(found) and reader.size >= TAIL_BYTES:
        probe = replace(probe, tail=read_tail(reader, TAIL_BYTES))
        found = detect(probe)
    return _result(reader, _inspect_content(found, probe, reader.read_at, reader.size, named))


def _inspect_content(
    found: list[Match],
    probe: Probe,
    read_at: ReadAt,
    content_size: int | None,
    named: str | None,
    wrapped: bool = False,
) -> Content:
    """Apply the rules of whatever the (decompressed) content is."""
    suffix = ".gz" if wrapped else ""
    if len(found) > 1:
        labels = " and ".join(match.label for match in found)
        return Content(
            "+".join(match.name for match in found) + suffix,
            None,
            [f"content matches several formats: {labels} - the file is refused as ambiguous"],
        )
    match = found[0]
    fmt = match.name + suffix
    if match.name == "qcow2":
        findings = inspect_qcow2(probe.head, read_at, content_size)
        problems = _rename_problems(named, fmt) + findings.problems
        return Content(fmt, findings.virtual_size, problems, findings.details)
    if match.name == RAW:
        problems = _rename_problems(named, fmt) + raw_problems(content_size, probe.head)
        return Content(fmt, content_size, problems)
    if match.name == "gzip":
        return Content(fmt, None, [GZIP_IN_GZIP])
    subject = f"file named .{named}" if named else "file"
    return Content(fmt, None, [f"{subject} is {match.label} - {match.advice}"])


def _rename_problems(named: str | None, fmt: str) -> list[str]:
    """A file whose content we import but whose name says something else."""
    if named is None or named == fmt:
        return []
    if named.startswith("qcow2") and fmt.startswith(RAW):
        return [
            f"file named .{named} is not a qcow2 image: it has no qcow2 header - "
            f"if it is a raw disk rename it to .{fmt}"
        ]
    return [f"file named .{named} is {DESCRIPTIONS[fmt]} - rename it to .{fmt}"]


def _inspect_gzip(
    reader: Reader,
    head: bytes,
    named: str | None,
    size_hint: int | None,
    progress: Callable[[int], None] | None,
    ceilings: gzipped.Ceilings,
) -> Content:
    prefix = gzipped.read_prefix(reader, head, _prefix_wanted)
    if prefix.problem:
        return Content("gzip", None, [prefix.problem])
    data = prefix.data
    read_at = _prefix_reader(prefix)
    probe = Probe(data[:HEAD_BYTES])
    found = detect(probe)
    if prefix.complete:
        if len(data) >= TAIL_BYTES:
            probe = replace(probe, tail=data[-TAIL_BYTES:])
        content = _inspect_content(detect(probe), probe, read_at, len(data), named, True)
        return replace(content, details={**content.details, "sized_by": "stream"})
    if [match.name for match in found] == ["qcow2"]:
        return _inspect_qcow2_gz(reader, found, probe, prefix, named)
    if not _is_raw(found):
        return _inspect_content(found, probe, read_at, None, named, True)
    if size_hint is not None:
        wrong_hint = _hint_problems(reader, size_hint)
        if wrong_hint:
            return Content("raw.gz", None, _rename_problems(named, "raw.gz") + wrong_hint)
        # No tail without inflating: no VHD-footer or DMG-trailer check.
        content = _inspect_content(found, probe, read_at, size_hint, named, True)
        return replace(content, details={"sized_by": "omi:size"})
    # Sizing inflates the whole stream: from the bytes the prefix already read, then the rest.
    read = prefix.compressed
    whole = itertools.chain([read] if read else [], reader.stream(len(read)))
    streamed = gzipped.stream_size(whole, progress, ceilings)
    if streamed.problem:
        return Content("raw.gz", None, [*_rename_problems(named, "raw.gz"), streamed.problem])
    probe = replace(probe, tail=streamed.tail)
    content = _inspect_content(detect(probe), probe, read_at, streamed.size, named, True)
    return replace(content, details={"sized_by": "stream", "gzip_members": streamed.members})


def _inspect_qcow2_gz(
    reader: Reader, found: list[Match], probe: Probe, prefix: gzipped.Prefix, named: str | None
) -> Content:
    """A qcow2 inside gzip: header rules on the prefix, length checked against the trailer.

    Below 4 MiB of gzip the trailer gives the content's length exactly, and the
    qcow2 is then held to the same rules as an uncompressed one; otherwise its
    length must at least be possible for what its header and L1 table point to.
    A first member that ended within the prefix leaves the trailer to another
    member, so it is not used then.
    """
    read_at = _prefix_reader(prefix)
    content = _inspect_content(found, probe, read_at, None, named, True)
    isize = gzipped.read_trailer_size(reader)
    if content.problems or isize is None or prefix.first_member_ended:
        return content
    exact = gzipped.candidate_lengths(isize, reader.size, 0)
    if len(exact) == 1 and exact[0] < len(prefix.data):
        return replace(
            content,
            problems=[
                f"gzip trailer records {isize} bytes but the stream holds more - the file is "
                "damaged or made of several gzip members - compress the qcow2 again as one "
                "gzip stream"
            ],
        )
    if len(exact) == 1:
        content = _inspect_content(found, probe, read_at, exact[0], named, True)
        return replace(content, details={**content.details, "sized_by": "gzip trailer"})
    least = int(content.details.get("min_file_size", 0))
    if not gzipped.candidate_lengths(isize, reader.size, least):
        return replace(
            content,
            problems=[
                f"gzip stream or the qcow2 inside it is truncated: the qcow2 needs at least "
                f"{least} bytes but the gzip trailer records {isize} bytes modulo 2 to the 32 - "
                "upload the whole file again"
            ],
        )
    return content


def _hint_problems(reader: Reader, size_hint: int) -> list[str]:
    """Accept ``omi:size`` only when it agrees with the trailer and the deflate bound."""
    isize = gzipped.read_trailer_size(reader)
    fix = "correct or remove the omi:size tag"
    if size_hint <= 0 or size_hint % TAIL_BYTES:
        return [f"omi:size {size_hint} is not a positive multiple of 512 - {fix}"]
    if isize is None or size_hint % (1 << 32) != isize:
        return [
            f"omi:size {size_hint} does not agree with the gzip trailer which records "
            f"{isize} bytes modulo 2 to the 32 - {fix}"
        ]
    if size_hint > reader.size * gzipped.MAX_DEFLATE_RATIO:
        return [f"omi:size {size_hint} is more than gzip can expand {reader.size} bytes to - {fix}"]
    return []


def _is_raw(found: list[Match]) -> bool:
    return [match.name for match in found] == [RAW]


def _prefix_wanted(content: bytes) -> int:
    """A qcow2 needs its header area and its L1 table; anything else its signature regions."""
    if not content or content.startswith(QCOW_MAGIC):
        return min(max(QCOW2_PREFIX, l1_table_end(content)), QCOW2_PREFIX_LIMIT)
    return HEAD_BYTES


def _prefix_reader(prefix: gzipped.Prefix) -> ReadAt:
    return lambda offset, length: prefix.data[offset : offset + length]


def _result(reader: Reader, content: Content) -> Inspection:
    return Inspection(
        format=content.format,
        virtual_size=content.virtual_size,
        compressed_size=reader.size,
        problems=tuple(dict.fromkeys(_safe_message(p) for p in content.problems)),
        bytes_read=reader.bytes_read,
        requests=reader.requests,
        details=content.details,
    )


def _safe_message(message: str) -> str:
    """Messages end up in the ``omi:status`` tag after ``error: ``: keep them tag-safe and short."""
    return tag_safe(message)[:MESSAGE_LIMIT]
