"""Snapshot inspection: what a file is, how big its disk is, can OUTSCALE import it.

The format is decided by content, then checked against the file name. Reads
are ranged and bounded: qcow2, raw and qcow2.gz cost a few small reads
whatever their size; only raw.gz without a size hint is streamed, because
the gzip trailer holds its length modulo 2**32 only.
"""

from __future__ import annotations

from collections.abc import Callable

from . import gzipped, signatures
from .qcow2 import inspect_qcow2
from .readers import FileReader, Reader, S3Reader
from .result import Inspection, tag_safe

Ceilings = gzipped.Ceilings

__all__ = [
    "FORMATS",
    "Ceilings",
    "FileReader",
    "Inspection",
    "Reader",
    "S3Reader",
    "declared_format",
    "inspect_snapshot",
]

FORMATS = ("qcow2.gz", "raw.gz", "qcow2", "raw")  # longest suffix first
SECTOR = 512
MESSAGE_LIMIT = 240
QCOW2_PREFIX = 64 * 1024  # decompressed bytes of a qcow2.gz that inspection looks at

ReadAt = Callable[[int, int], bytes]


def declared_format(key: str) -> str | None:
    """The format a key's suffix announces (case-insensitive), or None."""
    lowered = key.lower()
    return next((fmt for fmt in FORMATS if lowered.endswith("." + fmt)), None)


def inspect_snapshot(
    reader: Reader,
    key: str,
    size_hint: int | None = None,
    progress: Callable[[int], None] | None = None,
    ceilings: gzipped.Ceilings = gzipped.DEFAULT_CEILINGS,
) -> Inspection:
    """Inspect one snapshot file; never raises on bad content, returns problems."""
    declared = declared_format(key)
    if reader.size == 0:
        return _result(
            reader, declared or "raw", None, ["file is empty - upload the disk image again"]
        )
    head = reader.read_at(0, signatures.HEAD_BYTES)
    if head[:2] == signatures.GZIP_MAGIC:
        return _inspect_gzip(reader, head, declared, size_hint, progress, ceilings)
    found = signatures.detect(head, None)
    if found == [signatures.RAW]:
        found = signatures.detect(head, reader.read_at(reader.size - SECTOR, SECTOR))
    if declared in ("qcow2.gz", "raw.gz") and found in (["qcow2"], [signatures.RAW]):
        return _result(
            reader,
            found[0],
            None,
            [
                f"file named .{declared} is not gzip-compressed: it is {found[0]} - "
                f"rename it to .{found[0]}"
            ],
        )
    virtual_size, problems, details = _inspect_content(
        found, head, reader.read_at, reader.size, declared
    )
    return _result(reader, _content_name(found), virtual_size, problems, details)


def _inspect_content(
    found: list[str],
    head: bytes,
    read_at: ReadAt,
    content_size: int | None,
    declared: str | None,
) -> tuple[int | None, list[str], dict[str, object]]:
    """Apply the rules of whatever the (decompressed) content is."""
    if len(found) > 1:
        names = " and ".join(found)
        return (
            None,
            [f"content matches several formats: {names} - the file is refused as ambiguous"],
            {},
        )
    content = found[0]
    expected = declared.removesuffix(".gz") if declared else None
    problems: list[str] = []
    if content == "qcow2":
        findings = inspect_qcow2(head, read_at, content_size)
        if expected == "raw":
            problems.append(_misnamed(declared, "a qcow2 image", "qcow2"))
        return findings.virtual_size, problems + findings.problems, findings.details
    if content == signatures.RAW:
        if expected == "qcow2":
            problems.append(
                f"file named .{declared} is not a qcow2 image: it has no qcow2 header - "
                f"if it is a raw disk rename it to .{declared.replace('qcow2', 'raw')}"
            )
        if content_size is not None:
            problems += _raw_size_problems(content_size)
        return content_size, problems, {}
    if content == "gzip":
        return None, ["gzip inside gzip - decompress the outer layer and upload again"], {}
    what = (
        f"a {content} image" if content not in ("bzip2", "xz", "zstd") else f"{content}-compressed"
    )
    named = f"file named .{declared}" if declared else "file"
    return (
        None,
        [
            f"{named} is {what} - OUTSCALE imports qcow2 and raw only - "
            "convert it with qemu-img convert -O qcow2"
        ],
        {},
    )


def _inspect_gzip(
    reader: Reader,
    head: bytes,
    declared: str | None,
    size_hint: int | None,
    progress: Callable[[int], None] | None,
    ceilings: gzipped.Ceilings,
) -> Inspection:
    problems: list[str] = []
    if declared in ("qcow2", "raw"):
        problems.append(_misnamed(declared, "gzip-compressed", f"{declared}.gz"))
    prefix = gzipped.read_prefix(reader, head, _prefix_wanted)
    if prefix.problem:
        return _result(reader, "gzip", None, [*problems, prefix.problem])
    inner_head = prefix.data[: signatures.HEAD_BYTES]
    found = signatures.detect(inner_head, None)
    if found == ["qcow2"]:
        return _inspect_qcow2_gz(reader, prefix, declared, problems)
    fmt = _content_name(found) + ".gz" if found == [signatures.RAW] else _content_name(found)
    if found != [signatures.RAW]:
        _, more, details = _inspect_content(
            found, inner_head, _prefix_reader(prefix), None, declared
        )
        return _result(reader, fmt, None, problems + more, details)
    tail: bytes | None
    if prefix.complete:
        size, tail = len(prefix.data), prefix.data[-SECTOR:]
        details: dict[str, object] = {"sized_by": "stream"}
    elif size_hint is not None:
        wrong_hint = _hint_problems(reader, size_hint)
        if wrong_hint:
            return _result(reader, fmt, None, problems + wrong_hint)
        size, tail = size_hint, None  # no tail without inflating: no VHD-footer check
        details = {"sized_by": "omi:size"}
    else:
        streamed = gzipped.stream_size(reader.stream(), progress, ceilings)
        if streamed.problem:
            return _result(reader, fmt, None, [*problems, streamed.problem])
        size, tail = streamed.size, streamed.tail
        details = {"sized_by": "stream", "gzip_members": streamed.members}
    virtual_size, more, _ = _inspect_content(
        signatures.detect(inner_head, tail), inner_head, _prefix_reader(prefix), size, declared
    )
    return _result(reader, fmt, virtual_size, problems + more, details)


def _inspect_qcow2_gz(
    reader: Reader, prefix: gzipped.Prefix, declared: str | None, problems: list[str]
) -> Inspection:
    """A qcow2 inside gzip: header rules on the prefix, length checked against the trailer."""
    content_size = len(prefix.data) if prefix.complete else None
    virtual_size, more, details = _inspect_content(
        ["qcow2"], prefix.data, _prefix_reader(prefix), content_size, declared
    )
    problems += more
    isize = gzipped.read_trailer_size(reader)
    least = int(details.get("min_file_size", 0))
    if (
        not problems
        and not prefix.complete
        and (isize is None or not gzipped.length_possible(isize, reader.size, least))
    ):
        problems.append(
            "gzip stream is truncated: the qcow2 inside needs more bytes than it can hold - "
            "upload the whole file again"
        )
    return _result(reader, "qcow2.gz", virtual_size, problems, details)


def _hint_problems(reader: Reader, size_hint: int) -> list[str]:
    """Accept ``omi:size`` only when it agrees with the trailer and the deflate bound."""
    isize = gzipped.read_trailer_size(reader)
    fix = "correct or remove the omi:size tag"
    if size_hint <= 0 or size_hint % SECTOR:
        return [f"omi:size {size_hint} is not a positive multiple of 512 - {fix}"]
    if isize is None or size_hint % (1 << 32) != isize:
        return [
            f"omi:size {size_hint} does not agree with the gzip trailer which records "
            f"{isize} bytes modulo 2 to the 32 - {fix}"
        ]
    if size_hint > reader.size * gzipped.MAX_DEFLATE_RATIO:
        return [f"omi:size {size_hint} is more than gzip can expand {reader.size} bytes to - {fix}"]
    return []


def _raw_size_problems(size: int) -> list[str]:
    if size == 0:
        return ["raw image is empty - upload the disk image again"]
    if size % SECTOR:
        return [
            f"raw image size {size} bytes is not a multiple of 512 - "
            "pad it to whole 512-byte sectors with qemu-img resize -f raw"
        ]
    return []


def _prefix_wanted(content: bytes) -> int:
    """A qcow2 needs its header area; anything else only its signature bytes."""
    if not content or content.startswith(signatures.QCOW_MAGIC):
        return QCOW2_PREFIX
    return signatures.HEAD_BYTES


def _prefix_reader(prefix: gzipped.Prefix) -> ReadAt:
    return lambda offset, length: prefix.data[offset : offset + length]


def _misnamed(declared: str | None, what: str, suffix: str) -> str:
    return f"file named .{declared} is {what} - rename it to .{suffix}"


def _content_name(found: list[str]) -> str:
    return found[0] if len(found) == 1 else "+".join(found)


def _result(
    reader: Reader,
    fmt: str,
    virtual_size: int | None,
    problems: list[str],
    details: dict[str, object] | None = None,
) -> Inspection:
    return Inspection(
        format=fmt,
        virtual_size=virtual_size,
        compressed_size=reader.size,
        problems=tuple(dict.fromkeys(_safe_message(p) for p in problems)),
        bytes_read=reader.bytes_read,
        requests=reader.requests,
        details=details or {},
    )


def _safe_message(message: str) -> str:
    """Messages end up in the ``omi:status`` tag after ``error: ``: keep them tag-safe and short."""
    return tag_safe(message)[:MESSAGE_LIMIT]
