"""gzip streams: decompress a prefix cheaply, or size the whole stream.

ISA-L (``isal``) inflates several times faster than zlib and checks each
member's CRC32 and length itself. Output is taken in bounded slices, so
memory stays flat however large the disk inside is.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from isal import isal_zlib

from .readers import Reader

GZIP_WBITS = 31
GZIP_MAGIC = b"\x1f\x8b"
TRAILER_BYTES = 8
MAX_DEFLATE_RATIO = 1032  # DEFLATE cannot expand one byte into more than this
OUTPUT_SLICE = 4 << 20  # bytes of output taken per inflate call: the memory bound
PREFIX_INPUT_STEP = 16 * 1024
PREFIX_INPUT_BUDGET = 48 * 1024
TAIL_BYTES = 512

Progress = Callable[[int], None]


def _corruption_message(error: Exception, at: int) -> str:
    if "checksum" in str(error).lower() or "length" in str(error).lower():
        return "gzip checksum does not match its content - the file is corrupt - upload it again"
    return (
        f"gzip stream is corrupt near compressed byte {at} - "
        "the file is damaged - compress and upload it again"
    )


TRUNCATED = "gzip stream is truncated: it ends before its end marker - upload the whole file again"


@dataclass(frozen=True)
class Prefix:
    """The first decompressed bytes, and whether they are the whole stream.

    ``first_member_ended``: the first gzip member ended within what was read, so
    the trailer at the end of the file (if ``complete`` is false) is another
    member's and says nothing of the first one's length.
    """

    data: bytes
    complete: bool
    problem: str | None
    first_member_ended: bool = False
    compressed: bytes = b""  # the file's first bytes, read to get ``data``: never read twice


def read_prefix(reader: Reader, first: bytes, want: Callable[[bytes], int]) -> Prefix:
    """Decompress until ``want(output so far)`` bytes come out, reading little input.

    ``first`` holds the bytes already read from the start of the file.
    ``complete`` is true when the first member ended and nothing follows it,
    in which case ``data`` is all of the content and its checksum was verified.
    """
    inflater = isal_zlib.decompressobj(wbits=GZIP_WBITS)
    out = bytearray()
    taken = bytearray()
    offset = 0
    pending = b""  # input read but not inflated yet: output stops at what is wanted
    while len(out) < want(out):
        if not pending:
            if offset >= min(reader.size, PREFIX_INPUT_BUDGET):
                break
            pending = first if offset == 0 else reader.read_at(offset, PREFIX_INPUT_STEP)
            offset += len(pending)
            taken += pending
        try:
            out += inflater.decompress(pending, want(out) - len(out))
        except (isal_zlib.error, ValueError) as error:
            return Prefix(bytes(out), False, _corruption_message(error, offset))
        pending = inflater.unconsumed_tail
        if inflater.eof:
            whole = not inflater.unused_data and offset == reader.size
            return Prefix(bytes(out), whole, None, first_member_ended=True)
    if len(out) < want(out) and offset >= reader.size and not pending:
        return Prefix(bytes(out), False, TRUNCATED)
    return Prefix(bytes(out), False, None, compressed=bytes(taken))


def read_trailer_size(reader: Reader) -> int | None:
    """ISIZE from the last member's trailer: the content length modulo 2**32."""
    if reader.size < 18 + TRAILER_BYTES:
        return None
    trailer = reader.read_at(reader.size - TRAILER_BYTES, TRAILER_BYTES)
    return struct.unpack("<II", trailer)[1]


def candidate_lengths(isize: int, compressed_size: int, at_least: int) -> range:
    """Content lengths a stream of ``compressed_size`` bytes can have when its trailer
    records ``isize`` (the length modulo 2**32) and its content needs ``at_least`` bytes.

    Empty: the content cannot be whole. One value: the length is known exactly
    (always so below 4 MiB of gzip, which cannot hold 4 GiB of content).
    """
    low = max(at_least, 0)
    first = low + ((isize - low) % (1 << 32))
    return range(first, compressed_size * MAX_DEFLATE_RATIO + 1, 1 << 32)


@dataclass(frozen=True)
class StreamSize:
    """The result of inflating a whole gzip file."""

    size: int
    tail: bytes
    members: int
    problem: str | None


@dataclass(frozen=True)
class Ceilings:
    """How far sizing a raw.gz may go: a gzip bomb is a disk as far as the format goes,
    so it is sized like one, but never past these."""

    max_bytes: int = 16 << 40  # OUTSCALE volumes stop below 16 TiB
    max_seconds: float = 780.0  # a 900 s Lambda keeps time to record the answer

    def exceeded(self, size: int, started: float) -> str | None:
        hint = "give the omi:size tag to skip sizing"
        if size > self.max_bytes:
            return (
                f"raw.gz expands past the ceiling of {self.max_bytes} decompressed bytes - "
                f"{hint} or raise OMI_MAX_DECOMPRESSED_BYTES"
            )
        if time.monotonic() - started > self.max_seconds:
            return (
                f"sizing raw.gz passed the ceiling of {self.max_seconds:g} seconds - "
                f"{hint} or raise OMI_MAX_SIZING_SECONDS"
            )
        return None


DEFAULT_CEILINGS = Ceilings()


def stream_size(
    chunks: Iterable[bytes],
    progress: Progress | None = None,
    ceilings: Ceilings = DEFAULT_CEILINGS,
) -> StreamSize:
    """Inflate every member of a gzip file to count its content, in bounded memory.

    Members concatenated as ``cat a.gz b.gz`` makes are summed; bytes after
    the last member that do not start another one are refused.
    """
    started = time.monotonic()
    size = members = consumed = 0
    tail = b""
    inflater = None
    pending = b""
    for chunk in chunks:
        consumed += len(chunk)
        if progress:
            progress(consumed)
        pending = pending + chunk if pending else chunk
        while pending:
            if inflater is None:
                if len(pending) < len(GZIP_MAGIC):
                    break
                if pending[:2] != GZIP_MAGIC:
                    return StreamSize(size, tail, members, _trailing_message(len(pending)))
                inflater = isal_zlib.decompressobj(wbits=GZIP_WBITS)
                members += 1
            try:
                for out in _inflate(inflater, pending):
                    size += len(out)
                    tail = _last_bytes(tail, out)
                    if stop := ceilings.exceeded(size, started):
                        return StreamSize(size, tail, members, stop)
            except (isal_zlib.error, ValueError) as error:
                return StreamSize(size, tail, members, _corruption_message(error, consumed))
            if inflater.eof:
                pending, inflater = inflater.unused_data, None
            else:
                pending = b""
    if inflater is not None or members == 0:
        return StreamSize(size, tail, members, TRUNCATED)
    if pending:
        return StreamSize(size, tail, members, _trailing_message(len(pending)))
    return StreamSize(size, tail, members, None)


def _inflate(inflater: Any, data: bytes) -> Iterator[bytes]:
    """Feed ``data`` and yield output slices until inflate wants more input or ends."""
    while True:
        out = inflater.decompress(data, OUTPUT_SLICE)
        yield out
        if inflater.eof:
            return
        data = inflater.unconsumed_tail
        if not data and len(out) < OUTPUT_SLICE:
            return


def _last_bytes(tail: bytes, out: bytes) -> bytes:
    return out[-TAIL_BYTES:] if len(out) >= TAIL_BYTES else (tail + out)[-TAIL_BYTES:]


def _trailing_message(count: int) -> str:
    return (
        f"gzip file has {count} bytes of trailing data after its last member - "
        "compress the disk again without appending anything"
    )
