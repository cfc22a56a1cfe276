"""Byte sources for inspection: a local file, or an S3 object read by ranges.

Inspection only ever asks for a byte range or a forward stream, so a reader is
all it needs to know about where the bytes live. Every reader counts what it
fetched (``bytes_read``, ``requests``): cheap inspection is a promise we test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

STREAM_CHUNK = 1 << 20
STREAM_RESUMES = 3


class Reader(Protocol):
    """Random and sequential access to one immutable object."""

    size: int
    bytes_read: int
    requests: int

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; shorter only at the end of the object."""
        ...

    def stream(self, offset: int = 0, chunk_size: int = STREAM_CHUNK) -> Iterator[bytes]:
        """The bytes from ``offset`` to the end, in chunks of at most ``chunk_size``."""
        ...


def read_tail(reader: Reader, count: int) -> bytes:
    """The last ``count`` bytes, or the whole object when it is shorter."""
    start = max(reader.size - count, 0)
    return reader.read_at(start, reader.size - start)


def _span(offset: int, length: int, size: int) -> int:
    """How many bytes a read of ``length`` at ``offset`` returns; a negative offset is a bug."""
    if offset < 0 or length < 0:
        raise ValueError(f"read of {length} bytes at offset {offset}")
    return max(0, min(length, size - offset))


class FileReader:
    """A local file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.size = os.path.getsize(self.path)
        self.bytes_read = 0
        self.requests = 0

    def read_at(self, offset: int, length: int) -> bytes:
        length = _span(offset, length, self.size)
        if length == 0:
            return b""
        self.requests += 1
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
        self.bytes_read += len(data)
        return data

    def stream(self, offset: int = 0, chunk_size: int = STREAM_CHUNK) -> Iterator[bytes]:
        self.requests += 1
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            while chunk := handle.read(chunk_size):
                self.bytes_read += len(chunk)
                yield chunk


class S3Reader:
    """An S3 object read with ranged GETs, pinned to one ETag.

    Pinning (``IfMatch``) makes a replaced object fail loudly instead of
    mixing bytes of two versions into one inspection.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        size: int | None = None,
        etag: str | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.bytes_read = 0
        self.requests = 0
        if size is None or etag is None:
            head = client.head_object(Bucket=bucket, Key=key)
            self.requests += 1
            size, etag = head["ContentLength"], head["ETag"]
        self.size = size
        self.etag = etag

    def _get(self, first: int, last: int | None = None) -> Any:
        byte_range = f"bytes={first}-" if last is None else f"bytes={first}-{last}"
        self.requests += 1
        response = self.client.get_object(
            Bucket=self.bucket, Key=self.key, Range=byte_range, IfMatch=self.etag
        )
        return response["Body"]

    def read_at(self, offset: int, length: int) -> bytes:
        length = _span(offset, length, self.size)
        if length == 0:
            return b""
        data = self._get(offset, offset + length - 1).read()
        self.bytes_read += len(data)
        return data

    def stream(self, offset: int = 0, chunk_size: int = STREAM_CHUNK) -> Iterator[bytes]:
        return _resuming_stream(self._get, offset, self.size, chunk_size, self._count)

    def _count(self, chunk: bytes) -> None:
        self.bytes_read += len(chunk)


def _resuming_stream(
    open_at: Callable[[int], Any],
    offset: int,
    size: int,
    chunk_size: int,
    on_chunk: Callable[[bytes], None],
) -> Iterator[bytes]:
    """Stream a body, reopening it where it broke when a connection drops mid-read."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import ReadTimeoutError, ResponseStreamingError
    from urllib3.exceptions import ProtocolError

    broken = (BotoConnectionError, ReadTimeoutError, ResponseStreamingError, ProtocolError)
    resumes = 0
    while offset < size:
        try:
            for chunk in open_at(offset).iter_chunks(chunk_size):
                offset += len(chunk)
                on_chunk(chunk)
                yield chunk
            return
        except broken:
            resumes += 1
            if resumes > STREAM_RESUMES:
                raise
