"""A sorted key index for moto's buckets, so a listing costs its page, not the bucket.

moto answers every ListObjects(V2) request by copying the bucket's whole key
dictionary, testing every key against the prefix and sorting what matched; with
a continuation token it walks the sorted result again. A pipeline that lists one
small prefix per event therefore slows down as the bucket fills. Here each bucket
created after ``install()`` keeps its key names sorted, and a listing without a
delimiter bisects to its prefix and start and reads one page; listings with a
delimiter (a console's folders) keep moto's own code.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from typing import Any

from moto.s3.utils import _VersionedKeyStore


class SortedKeyStore(_VersionedKeyStore):
    """moto's key store, also holding its names in order (every change under one lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.lock = threading.RLock()

    def _added(self, key: str) -> None:
        at = bisect.bisect_left(self.names, key)
        if at == len(self.names) or self.names[at] != key:
            self.names.insert(at, key)

    def __setitem__(self, key: str, value: Any) -> None:
        with self.lock:
            super().__setitem__(key, value)
            self._added(key)

    def setlist(self, key: Any, list_: Any) -> None:
        with self.lock:
            super().setlist(key, list_)
            self._added(key)

    def pop(self, key: str) -> None:  # type: ignore[override]
        with self.lock:
            super().pop(key)
            at = bisect.bisect_left(self.names, key)
            if at < len(self.names) and self.names[at] == key:
                del self.names[at]

    def __delitem__(self, key: str) -> None:
        with self.lock:
            super().__delitem__(key)
            at = bisect.bisect_left(self.names, key)
            if at < len(self.names) and self.names[at] == key:
                del self.names[at]

    def after(self, prefix: str, start_after: str | None) -> Iterator[str]:
        """Names starting with ``prefix`` and greater than ``start_after``, in order."""
        with self.lock:
            at = bisect.bisect_left(self.names, prefix)
            if start_after is not None and start_after >= prefix:
                at = bisect.bisect_right(self.names, start_after)
            position = at
        while True:
            with self.lock:
                if position >= len(self.names):
                    return
                name = self.names[position]
            if not name.startswith(prefix):
                return
            yield name
            position += 1


def _list_objects_v2(original):
    def list_objects_v2(
        self,
        bucket,
        prefix,
        delimiter,
        continuation_token,
        start_after,
        max_keys,
    ):
        keys = bucket.keys
        if delimiter or not isinstance(keys, SortedKeyStore):
            return original(
                self, bucket, prefix, delimiter, continuation_token, start_after, max_keys
            )
        from moto.s3.models import FakeDeleteMarker, FakeTableStorageBucket

        if isinstance(bucket, FakeTableStorageBucket):  # moto refuses these; let it say so
            return original(
                self, bucket, prefix, delimiter, continuation_token, start_after, max_keys
            )
        limit = self._pagination_tokens.get(continuation_token) if continuation_token else None
        page = []
        for name in keys.after(prefix or "", limit or start_after):
            key = keys.get(name)
            if key is None or isinstance(key, FakeDeleteMarker):
                continue
            page.append(key)
            if len(page) > max_keys:  # one more than a page tells moto it is truncated
                break
        return self._truncate_result(page, max_keys)

    list_objects_v2.indexed = True
    return list_objects_v2


def _bucket_init(original):
    def __init__(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        self.keys = SortedKeyStore()

    __init__.indexed = True
    return __init__


_installed = threading.Lock()


def install() -> None:
    """Index every bucket moto creates from now on (once per process)."""
    from moto.s3.models import FakeBucket, S3Backend

    with _installed:
        if getattr(S3Backend.list_objects_v2, "indexed", False):
            return
        FakeBucket.__init__ = _bucket_init(FakeBucket.__init__)
        S3Backend.list_objects_v2 = _list_objects_v2(S3Backend.list_objects_v2)
