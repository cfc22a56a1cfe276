"""Everything that talks to the bucket: snapshot objects, their tags, state records, manifests.

The record kinds, what each means, and the order they are written in are in
``docs/state.md``; the layout, in short:

    <state>objects/<h>/group=<g>@<etag>   snapshot <h> (hash of its key) may have a record of
                                          content <etag> in group <g>: written before the
                                          record; pruned by the pass once old and empty
    <state>groups/<g>/<h>@<etag>@<n>@<ok|bad>@<tags>
                                          a member record (JSON); the key itself says which
                                          content was inspected, how many snapshots the
                                          member declares (n, 0: none), whether it has a
                                          problem, and which user tags it was read from
    <state>groups/<g>/~published@<digest>@<expires>@<md5>
                                          a manifest of these records (whose ETag is md5)
                                          may exist: written
                                          before the manifest, deleted after it; the pass
                                          finds due renewals in this listing
    <manifests>/<name>.json               the manifest; its metadata names the digest of the
                                          member records it was built from (the fence)

One list request of ``groups/<g>/`` tells an OMI's whole story; one of ``objects/<h>/``
where a snapshot is filed. Reconciling compares listings: one request per 1,000 objects.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from botocore.exceptions import BotoCoreError, ClientError

from .config import Settings
from .convention import MAX_TAGS, SnapshotSettings
from .grouping import Member
from .inspection import S3Reader

MISSING = ("404", "NoSuchKey", "NotFound")
PRECONDITION = ("412", "PreconditionFailed", "ConditionalRequestConflict", "409")
LAST_CHARACTER = "\U0010ffff"  # sorts after any character a key can hold next
PUBLISHED = "~published"
UNNAMED = "~"  # the group segment of snapshots that have no OMI name (a file at the root)
GROUP_ENTRY = "group="
LEFT = "~left"  # ends an announcement's ETag once the snapshot left that group (see Filing)
EXPIRES_FORMAT = "%Y%m%dT%H%M%SZ"
DIGEST_METADATA = "omi-digest"  # S3 user metadata of a manifest: x-amz-meta-omi-digest
EXPIRES_METADATA = "omi-expires"
TAG_WRITE_ATTEMPTS = 5  # a failed tag write is retried by reading and merging again
TAG_RETRY_BASE = 0.2  # seconds, doubled each attempt, with full jitter


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def tags_hash(user_tags: dict[str, str]) -> str:
    """Which user ``omi:`` tags a record was read from (the status excluded)."""
    return hashlib.sha256(json.dumps(user_tags, sort_keys=True).encode()).hexdigest()[:16]


def group_segment(name: str) -> str:
    """A group name as one key segment that no store normalises: never empty, ``.``
    or ``..``, no ``/``; ``~`` is escaped so that ``~``-names stay the pipeline's own."""
    if not name:
        return UNNAMED
    return quote(name, safe="").replace(".", "%2E").replace("~", "%7E")


def group_from_segment(segment: str) -> str:
    return "" if segment == UNNAMED else unquote(segment)


def _strip(etag: str) -> str:
    return etag.strip('"')


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class Marker:
    """One member as a group listing shows it, without reading its record."""

    state_key: str
    group: str
    key_hash: str
    etag: str
    declared: int
    ok: bool
    tags: str
    version: str = ""  # the record's own ETag: changes whenever its content does

    @classmethod
    def parse(cls, state_key: str, version: str = "") -> Marker:
        parents, leaf = state_key.rsplit("/", 1)
        hashed, etag, declared, flag, tags = leaf.split("@")
        group = group_from_segment(parents.rsplit("/", 1)[1])
        return cls(state_key, group, hashed, etag, int(declared), flag == "ok", tags, version)


@dataclass(frozen=True)
class Publication:
    """A publication as its group listing shows it: a manifest of the records named by
    ``digest`` may exist, its URLs expiring at ``expires``. A hint, never proof: the
    manifest's own metadata is (see ``ManifestHead``)."""

    state_key: str
    group: str
    digest: str
    expires: datetime
    etag: str = ""  # the manifest's ETag, as a listing of manifests shows it

    @classmethod
    def parse(cls, state_key: str) -> Publication:
        parents, leaf = state_key.rsplit("/", 1)
        _, digest, expires, *etag = leaf.split("@")
        moment = datetime.strptime(expires, EXPIRES_FORMAT).replace(tzinfo=UTC)
        group = group_from_segment(parents.rsplit("/", 1)[1])
        return cls(state_key, group, digest, moment, "".join(etag))


@dataclass(frozen=True)
class ManifestHead:
    """A manifest as it is: its ETag (for a conditional replacement) and the digest and
    expiry it was written with."""

    etag: str
    digest: str
    expires: datetime | None


@dataclass
class Group:
    """One OMI's records: its members and the publications that may exist."""

    name: str
    markers: list[Marker] = field(default_factory=list)
    publications: list[Publication] = field(default_factory=list)

    @property
    def listing(self) -> frozenset[tuple[str, str]]:
        """What a re-listing compares: every record and its content."""
        return frozenset((m.state_key, m.version) for m in self.markers) | frozenset(
            (p.state_key, "") for p in self.publications
        )

    def duplicated(self) -> set[str]:
        """Hashes of snapshots with more than one record here (a replacement or retag
        under way, or a record left by a stale or dead invocation)."""
        seen: set[str] = set()
        return {m.key_hash for m in self.markers if m.key_hash in seen or seen.add(m.key_hash)}


def listing_state(markers: list[Marker]) -> tuple[str, int]:
    """What a group listing alone tells of an OMI, and how many snapshots it expects:
    ``empty``, ``waiting`` (consistent, too few), ``complete`` (consistent, enough),
    or ``unsettled`` (a member has a problem, or members declare different counts)."""
    declared = {marker.declared for marker in markers if marker.declared}
    expected = max(declared, default=1)
    if not markers:
        return "empty", expected
    if len(declared) > 1 or not all(marker.ok for marker in markers):
        return "unsettled", expected
    return ("complete" if len(markers) >= expected else "waiting"), expected


def membership_digest(markers: Iterable[Marker]) -> str:
    """Which member records, with which contents: equal digests, same manifest."""
    text = ",".join(sorted(f"{m.state_key}:{_strip(m.version)}" for m in markers))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code"))


def _missing(error: ClientError) -> bool:
    return _code(error) in MISSING


def member_to_json(member: Member) -> bytes:
    return json.dumps(asdict(member), sort_keys=True).encode()


def member_from_json(body: bytes) -> Member:
    data = json.loads(body)
    settings = data.pop("settings")
    settings["problems"] = tuple(settings["problems"])
    data["problems"] = tuple(data["problems"])
    data["content_problems"] = tuple(data.get("content_problems", ()))
    return Member(settings=SnapshotSettings(**settings), **data)


def _transient(error: Exception) -> bool:
    """A failure worth another try: throttling, a 5xx, a dropped connection."""
    if isinstance(error, BotoCoreError):
        return True
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return (
            status >= 500
            or status == 429
            or "Throttl" in _code(error)
            or "SlowDown" in _code(error)
        )
    return False


class Store:
    """The bucket, as the pipeline needs it.

    ``tag_client`` makes no retries of its own: botocore would re-send a tag set read
    before the retry, dropping a tag the user wrote meanwhile. ``set_tag`` retries by
    reading and merging again instead.
    """

    def __init__(self, client: Any, settings: Settings, tag_client: Any | None = None) -> None:
        self.client = client
        self.tag_client = tag_client or client
        self.bucket = settings.bucket
        self.state = settings.state_prefix
        self.manifest_prefix = settings.manifest_prefix
        self.keeps_put_tags: bool | None = None  # tags sent with PutObject; None: not known yet
        self.tags_checked = False  # PutObjectTagging seen to keep them
        self.conditional_writes = True  # False once the store refuses If-Match/If-None-Match
        self.pause: Callable[[float], None] = time.sleep

    # --- snapshot objects ------------------------------------------------------

    def _unless_missing(self, call: Callable[..., Any], key: str) -> Any | None:
        """``call`` on this bucket and ``key``; None when the object does not exist."""
        try:
            return call(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _missing(error):
                return None
            raise

    def head(self, key: str) -> ObjectInfo | None:
        found = self._unless_missing(self.client.head_object, key)
        if found is None:
            return None
        return ObjectInfo(key, _strip(found["ETag"]), found["ContentLength"])

    def tags(self, key: str) -> dict[str, str] | None:
        found = self._unless_missing(self.client.get_object_tagging, key)
        return None if found is None else {tag["Key"]: tag["Value"] for tag in found["TagSet"]}

    def put_tags(self, key: str, tags: dict[str, str]) -> None:
        if not tags:
            self.tag_client.delete_object_tagging(Bucket=self.bucket, Key=key)
            return
        self.tag_client.put_object_tagging(
            Bucket=self.bucket,
            Key=key,
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
        )

    def set_tag(
        self,
        key: str,
        name: str,
        value: str | None,
        still: Callable[[dict[str, str]], bool] = lambda _: True,
    ) -> tuple[str, dict[str, str] | None]:
        """Merge one tag (``value`` None: remove it) into an object's tags, read
        immediately before: a tag the user wrote meanwhile is kept (S3 has no conditional
        tag write; only one landing in the milliseconds between the read and the write can
        be lost). ``still`` checks the tags read: when it fails, nothing is written. A
        failed write is retried by reading and merging again, never by re-sending.

        Returns the outcome, ``written``, ``unchanged``, ``full`` (10 tags already, none
        of them this one), ``moved`` (``still`` failed) or ``missing`` (the object is
        gone), and the tags read.
        """
        for attempt in range(TAG_WRITE_ATTEMPTS):
            current = self.tags(key)
            if current is None:
                return "missing", None
            if not still(current):
                return "moved", current
            if current.get(name) == value:
                return "unchanged", current
            if value is not None and name not in current and len(current) >= MAX_TAGS:
                return "full", current
            merged = {k: v for k, v in current.items() if k != name}
            if value is not None:
                merged[name] = value
            try:
                self.put_tags(key, merged)
            except ClientError as error:
                if _missing(error):
                    return "missing", None
                if not _transient(error) or attempt == TAG_WRITE_ATTEMPTS - 1:
                    raise
            except BotoCoreError:
                if attempt == TAG_WRITE_ATTEMPTS - 1:
                    raise
            else:
                return "written", current
            self.pause(random.uniform(0, TAG_RETRY_BASE * 2**attempt))
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def reader(self, info: ObjectInfo) -> S3Reader:
        quoted = f'"{_strip(info.etag)}"'  # If-Match takes the ETag as S3 writes it
        return S3Reader(self.client, self.bucket, info.key, size=info.size, etag=quoted)

    # --- state: plumbing ---------------------------------------------------------

    def _get(self, key: str) -> bytes | None:
        found = self._unless_missing(self.client.get_object, key)
        return None if found is None else found["Body"].read()

    def _put(self, key: str, body: bytes = b"") -> str:
        """Write one record; its ETag."""
        written = self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType="application/json"
        )
        return _strip(written.get("ETag", ""))

    def _delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def _list(self, prefix: str, start_after: str = "") -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, StartAfter=start_after
        )
        for page in pages:
            yield from page.get("Contents", [])

    # --- state: where a snapshot is filed ------------------------------------------

    def _object_prefix(self, hashed: str) -> str:
        return f"{self.state}objects/{hashed}/"

    def filed_in(self, key: str) -> Filed:
        """One list request: where a snapshot may have records."""
        prefix = self._object_prefix(key_hash(key))
        return Filed(tuple(_filing(item, prefix) for item in self._list(prefix)))

    def all_filed(self) -> dict[str, Filed]:
        """Every snapshot's filings, by key hash, from one list request per 1,000 entries."""
        prefix = f"{self.state}objects/"
        entries: dict[str, list[Filing]] = {}
        for item in self._list(prefix):
            hashed = item["Key"][len(prefix) :].partition("/")[0]
            filing = _filing(item, f"{prefix}{hashed}/")
            entries.setdefault(hashed, []).append(filing)
        return {hashed: Filed(tuple(found)) for hashed, found in entries.items()}

    def file_in(self, key: str, group: str, etag: str) -> None:
        self._put(f"{self._object_prefix(key_hash(key))}{_filing_leaf(group, etag)}")

    def unfile(self, hashed: str, filing: Filing) -> None:
        self._delete(f"{self._object_prefix(hashed)}{_filing_leaf(filing.group, filing.etag)}")

    def mark_left(self, key: str, filing: Filing) -> None:
        """Say that the snapshot left ``filing``'s group: the marked announcement first,
        so that one always points there, then the plain one."""
        self._put(
            f"{self._object_prefix(key_hash(key))}{_filing_leaf(filing.group, filing.etag + LEFT)}"
        )
        self.unfile(key_hash(key), filing)

    # --- state: one OMI ------------------------------------------------------------

    def group_prefix(self, name: str) -> str:
        return f"{self.state}groups/{group_segment(name)}/"

    def read_group(self, name: str) -> Group:
        """The members of one OMI and its publications, from one list request per 1,000."""
        group = Group(name)
        for item in self._list(self.group_prefix(name)):
            _add_to_group(group, item)
        return group

    def list_groups(self) -> dict[str, Group]:
        """Every OMI's records, from one list request per 1,000."""
        groups: dict[str, Group] = {}
        prefix = f"{self.state}groups/"
        for item in self._list(prefix):
            segment = item["Key"][len(prefix) :].split("/", 1)[0]
            name = group_from_segment(segment)
            _add_to_group(groups.setdefault(name, Group(name)), item)
        return groups

    def records_of(self, group: str, key: str) -> list[Marker]:
        """One snapshot's records in one group (normally none or one)."""
        prefix = f"{self.group_prefix(group)}{key_hash(key)}@"
        return [_marker(item) for item in self._list(prefix)]

    def marker_key(self, name: str, member: Member, tags: str) -> str:
        declared = member.settings.image.get("snapshots", "0")
        flag = "bad" if member.problems else "ok"
        etag = _strip(member.etag)
        return f"{self.group_prefix(name)}{key_hash(member.key)}@{etag}@{declared}@{flag}@{tags}"

    def write_member(self, marker: str, member: Member) -> str:
        """Write a member record; its version (ETag)."""
        return self._put(marker, member_to_json(member))

    def delete_record(self, state_key: str) -> None:
        """A member record or a publication hint."""
        self._delete(state_key)

    def read_member(self, marker: str) -> Member | None:
        body = self._get(marker)
        return None if body is None else member_from_json(body)

    def publication_key(self, name: str, digest: str, expires: datetime, etag: str) -> str:
        stamp = expires.astimezone(UTC).strftime(EXPIRES_FORMAT)
        return f"{self.group_prefix(name)}{PUBLISHED}@{digest}@{stamp}@{etag}"

    def write_publication(self, key: str) -> None:
        self._put(key)

    # --- the bucket's own objects ----------------------------------------------------

    def list_objects(self, reserved: tuple[str, ...]) -> Iterator[Listed]:
        """Every object outside the reserved prefixes, with its ETag, from listings.

        Keys come sorted, so on reaching a reserved prefix the listing starts again
        just past it: the pipeline's own objects cost no list requests. A key that sorts
        past the restart point itself (one holding U+10FFFF) is skipped, never restarted
        from: every restart moves forward, so the listing ends.
        """
        start_after = ""
        while True:
            for item in self._list("", start_after):
                key = item["Key"]
                prefix = next((p for p in reserved if key.startswith(p)), None)
                if prefix is None:
                    yield Listed(key, _strip(item["ETag"]), item.get("Size", 0))
                elif (jump := prefix + LAST_CHARACTER) > key:
                    start_after = jump
                    break
            else:
                return

    def list_etags(self, prefix: str) -> Iterator[tuple[str, str, datetime]]:
        """Keys under ``prefix`` with their ETags and when they were written."""
        for item in self._list(prefix):
            yield item["Key"], _strip(item.get("ETag", "")), item["LastModified"]

    # --- manifests -------------------------------------------------------------------

    def manifest_head(self, key: str) -> ManifestHead | None:
        """The manifest's ETag and the digest it was built from (None: no manifest)."""
        found = self._unless_missing(self.client.head_object, key)
        if found is None:
            return None
        metadata = found.get("Metadata", {})
        expires = metadata.get(EXPIRES_METADATA)
        moment = datetime.strptime(expires, EXPIRES_FORMAT).replace(tzinfo=UTC) if expires else None
        return ManifestHead(_strip(found["ETag"]), metadata.get(DIGEST_METADATA, ""), moment)

    def put_manifest(
        self,
        key: str,
        body: bytes,
        tags: dict[str, str],
        digest: str,
        expires: datetime,
        replacing: ManifestHead | None,
    ) -> bool:
        """Body, fence metadata and URL tags in one request: readers never see one without
        the others. Conditional: it creates the manifest only if there is none, or replaces
        only the one ``replacing`` names, so that of several workers publishing at once
        exactly one writes. Returns False when another write won.

        Some stores (s3rver) ignore tags sent with PutObject. The first manifest this
        process writes is read back to learn which kind the store is (one request per
        process); on such a store the tags are then put separately, and checked the
        first time, so that the URL is always readable where the store keeps tags at all.
        A store that refuses conditions gets unconditional writes (the fence still
        corrects whatever a stale writer leaves).
        """
        tagging = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in tags.items())
        request = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": body,
            "ContentType": "application/json",
            "Tagging": tagging,
            "Metadata": {
                DIGEST_METADATA: digest,
                EXPIRES_METADATA: expires.astimezone(UTC).strftime(EXPIRES_FORMAT),
            },
        }
        condition = (
            {"IfMatch": f'"{replacing.etag}"'} if replacing is not None else {"IfNoneMatch": "*"}
        )
        try:
            self.client.put_object(**request, **(condition if self.conditional_writes else {}))
        except ClientError as error:
            if _code(error) in PRECONDITION or (replacing is not None and _missing(error)):
                return False
            if _code(error) not in ("NotImplemented", "501"):
                raise
            self.conditional_writes = False
            self.client.put_object(**request)
        if self.keeps_put_tags is None:
            self.keeps_put_tags = self.tags(key) == tags
        if not self.keeps_put_tags:
            self._put_manifest_tags(key, tags)
        return True

    def _put_manifest_tags(self, key: str, tags: dict[str, str]) -> None:
        self.put_tags(key, tags)
        if not self.tags_checked:
            kept = self.tags(key)
            if kept != tags:
                names = sorted(kept or {})
                raise RuntimeError(
                    f"the store did not keep the URL tags of {key} (read back: {names}) - "
                    "the manifest's URL cannot be stored; use a store that supports tagging"
                )
            self.tags_checked = True

    def delete_manifest(self, key: str) -> None:
        self._delete(key)


@dataclass(frozen=True)
class Listed:
    key: str
    etag: str
    size: int = 0


def _marker(item: dict[str, Any]) -> Marker:
    return Marker.parse(item["Key"], _strip(item.get("ETag", "")))


def _add_to_group(group: Group, item: dict[str, Any]) -> None:
    leaf = item["Key"].rsplit("/", 1)[1]
    if leaf.startswith(PUBLISHED + "@"):
        group.publications.append(Publication.parse(item["Key"]))
    else:
        group.markers.append(_marker(item))


@dataclass(frozen=True)
class Filing:
    """An announcement: the snapshot may have a record of content ``etag`` in ``group``."""

    group: str
    etag: str
    written: datetime

    @property
    def left(self) -> bool:
        """The snapshot left the group since: the announcement stays (a worker with stale
        facts may still write a record there), but announces no content being recorded."""
        return self.etag.endswith(LEFT)

    @property
    def content(self) -> str:
        """The ETag of the content announced, left or not."""
        return self.etag.removesuffix(LEFT)


@dataclass(frozen=True)
class Filed:
    """Every announcement of one snapshot."""

    filings: tuple[Filing, ...] = ()

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(filing.group for filing in self.filings)

    def announced(self, group: str, etag: str) -> Filing | None:
        return next((f for f in self.filings if f.group == group and f.etag == etag), None)


def _filing_leaf(group: str, etag: str) -> str:
    return f"{GROUP_ENTRY}{group_segment(group)}@{_strip(etag)}"


def _filing(item: dict[str, Any], prefix: str) -> Filing:
    segment, _, etag = item["Key"][len(prefix) + len(GROUP_ENTRY) :].partition("@")
    return Filing(group_from_segment(segment), etag, item["LastModified"])
