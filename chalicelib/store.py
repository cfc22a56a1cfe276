"""Everything that talks to the bucket: snapshot objects, their tags, state records, manifests.

State lives in the bucket under a reserved prefix, laid out so that one list
request tells an OMI's story:

    <state>objects/<h>.json                  which group snapshot <h> is in (h: hash of its key)
    <state>groups/<name>/<h>@<etag>@<n>@<ok|bad>  one record per member; the key itself says
                                             which content was inspected, how many snapshots
                                             the member declares (n, 0: none) and whether it
                                             has a problem
    <state>published/<name>.json             what was last published for the OMI
    <state>expiry/<minute>/<name>@<digest>   one per published OMI, sorted by when its URLs
                                             expire: finding the due ones is a short listing;
                                             the digest names the members published

Reconciling compares a listing of the bucket with a listing of ``groups/``:
list requests only, one per 1,000 objects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from botocore.exceptions import ClientError

from .config import Settings
from .convention import MAX_TAGS, SnapshotSettings
from .grouping import Member
from .inspection import S3Reader

MISSING = ("404", "NoSuchKey", "NotFound")
LAST_CHARACTER = "\U0010ffff"  # sorts after any character a key can hold next


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class IndexRecord:
    """Where a snapshot was last filed, and what its content and tags were then."""

    key: str
    group: str
    marker: str
    fingerprint: str


@dataclass(frozen=True)
class Marker:
    """One member as a group listing shows it, without reading its record."""

    state_key: str
    group: str
    key_hash: str
    etag: str
    declared: int
    ok: bool

    @classmethod
    def parse(cls, state_key: str) -> Marker:
        parents, leaf = state_key.rsplit("/", 1)
        key_hash, etag, declared, flag = leaf.split("@")
        group = unquote(parents.rsplit("/", 1)[1])
        return cls(state_key, group, key_hash, etag, int(declared), flag == "ok")


@dataclass(frozen=True)
class Expiry:
    """A published OMI as the expiry listing shows it."""

    state_key: str
    minute: str
    group: str
    digest: str


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


def membership_digest(members: list[tuple[str, str]]) -> str:
    """Which member records, at which ETags: equal digests, same members."""
    text = ",".join(f"{h}:{etag.strip(chr(34))}" for h, etag in sorted(members))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Listed:
    key: str
    etag: str


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in MISSING


def member_to_json(member: Member) -> bytes:
    return json.dumps(asdict(member), sort_keys=True).encode()


def member_from_json(body: bytes) -> Member:
    data = json.loads(body)
    settings = data.pop("settings")
    settings["problems"] = tuple(settings["problems"])
    data["problems"] = tuple(data["problems"])
    return Member(settings=SnapshotSettings(**settings), **data)


class Store:
    """The bucket, as the pipeline needs it."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.bucket = settings.bucket
        self.state = settings.state_prefix
        self.keeps_put_tags: bool | None = None  # tags sent with PutObject; None: not known yet
        self.tags_checked = False  # PutObjectTagging seen to keep them

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
        return None if found is None else ObjectInfo(key, found["ETag"], found["ContentLength"])

    def tags(self, key: str) -> dict[str, str] | None:
        found = self._unless_missing(self.client.get_object_tagging, key)
        return None if found is None else {tag["Key"]: tag["Value"] for tag in found["TagSet"]}

    def put_tags(self, key: str, tags: dict[str, str]) -> None:
        self.client.put_object_tagging(
            Bucket=self.bucket,
            Key=key,
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
        )

    def set_tag(self, key: str, name: str, value: str, current: dict[str, str] | None) -> str:
        """Merge one tag into an object's tags; ``current`` saves a read when known.

        Returns ``written``, ``unchanged``, ``full`` (10 tags already, none of them
        this one) or ``missing`` (the object is gone).
        """
        current = self.tags(key) if current is None else current
        if current is None:
            return "missing"
        if current.get(name) == value:
            return "unchanged"
        if name not in current and len(current) >= MAX_TAGS:
            return "full"
        try:
            self.put_tags(key, {**current, name: value})
        except ClientError as error:
            if _missing(error):
                return "missing"
            raise
        return "written"

    def reader(self, info: ObjectInfo) -> S3Reader:
        return S3Reader(self.client, self.bucket, info.key, size=info.size, etag=info.etag)

    # --- state -----------------------------------------------------------------

    def _get(self, key: str) -> bytes | None:
        found = self._unless_missing(self.client.get_object, key)
        return None if found is None else found["Body"].read()

    def _get_json(self, key: str) -> Any | None:
        body = self._get(key)
        return None if body is None else json.loads(body)

    def _put(self, key: str, body: bytes) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType="application/json"
        )

    def _delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def index_key(self, key: str) -> str:
        return f"{self.state}objects/{key_hash(key)}.json"

    def group_prefix(self, name: str) -> str:
        return f"{self.state}groups/{quote(name, safe='')}/"

    def read_index(self, key: str) -> IndexRecord | None:
        data = self._get_json(self.index_key(key))
        return IndexRecord(**data) if data else None

    def write_index(self, record: IndexRecord) -> None:
        self._put(self.index_key(record.key), json.dumps(asdict(record)).encode())

    def delete_index(self, key: str) -> None:
        self._delete(self.index_key(key))

    def marker_key(self, name: str, member: Member) -> str:
        declared = member.settings.image.get("snapshots", "0")
        flag = "bad" if member.problems else "ok"
        etag = member.etag.strip('"')
        return f"{self.group_prefix(name)}{key_hash(member.key)}@{etag}@{declared}@{flag}"

    def write_member(self, name: str, member: Member) -> str:
        marker = self.marker_key(name, member)
        self._put(marker, member_to_json(member))
        return marker

    def delete_marker(self, marker: str) -> None:
        self._delete(marker)

    def _list(self, prefix: str, start_after: str = "") -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, StartAfter=start_after
        )
        for page in pages:
            yield from page.get("Contents", [])

    def list_group(self, name: str) -> list[Marker]:
        """The members of one OMI, from one list request per 1,000 members."""
        return [Marker.parse(item["Key"]) for item in self._list(self.group_prefix(name))]

    def list_all_markers(self) -> list[Marker]:
        return [Marker.parse(item["Key"]) for item in self._list(f"{self.state}groups/")]

    def list_objects(self, reserved: tuple[str, ...]) -> Iterator[Listed]:
        """Every object outside the reserved prefixes, with its ETag, from listings.

        Keys come sorted, so on reaching a reserved prefix the listing starts again
        just past it: the pipeline's own objects cost no list requests.
        """
        start_after = ""
        while True:
            for item in self._list("", start_after):
                key = item["Key"]
                prefix = next((p for p in reserved if key.startswith(p)), None)
                if prefix is not None:
                    start_after = prefix + LAST_CHARACTER
                    break
                yield Listed(key, item["ETag"].strip('"'))
            else:
                return

    def list_index_hashes(self) -> set[str]:
        prefix = f"{self.state}objects/"
        return {item["Key"][len(prefix) :].removesuffix(".json") for item in self._list(prefix)}

    def delete_index_hash(self, hashed: str) -> None:
        self._delete(f"{self.state}objects/{hashed}.json")

    def read_member(self, marker: str) -> Member | None:
        body = self._get(marker)
        return None if body is None else member_from_json(body)

    def published_key(self, name: str) -> str:
        return f"{self.state}published/{quote(name, safe='')}.json"

    def read_published(self, name: str) -> dict[str, Any] | None:
        return self._get_json(self.published_key(name))

    def write_published(self, name: str, record: dict[str, Any]) -> None:
        self._put(self.published_key(name), json.dumps(record, sort_keys=True).encode())

    def delete_published(self, name: str) -> None:
        self._delete(self.published_key(name))

    def expiry_key(self, name: str, expires: datetime, digest: str) -> str:
        """Rounded down to the minute, so two passes renewing at once write one marker;
        ``digest`` names the member records published, so a listing can tell a stale one."""
        minute = expires.astimezone(UTC).strftime("%Y%m%dT%H%MZ")
        return f"{self.state}expiry/{minute}/{quote(name, safe='')}@{digest}"

    def write_expiry(self, key: str) -> None:
        self._put(key, b"")

    def delete_expiry(self, key: str) -> None:
        self._delete(key)

    def due(self, before: datetime) -> Iterator[tuple[str, str]]:
        """(expiry marker, OMI name) of every manifest expiring before ``before``, oldest
        first; the listing stops at the first one that is not due."""
        cutoff = before.astimezone(UTC).strftime("%Y%m%dT%H%MZ")
        for expiry in self.list_expiry():
            if expiry.minute > cutoff:
                return
            yield expiry.state_key, expiry.group

    def list_expiry(self) -> Iterator[Expiry]:
        prefix = f"{self.state}expiry/"
        for item in self._list(prefix):
            minute, rest = item["Key"][len(prefix) :].split("/", 1)
            quoted, digest = rest.split("@")
            yield Expiry(item["Key"], minute, unquote(quoted), digest)

    # --- manifests -------------------------------------------------------------

    def put_manifest(self, key: str, body: bytes, tags: dict[str, str]) -> None:
        """Body and URL tags in one request: readers never see one without the other.

        Some stores (s3rver) ignore tags sent with PutObject. The first manifest this
        process writes is read back to learn which kind the store is (one request per
        process); on such a store the tags are then put separately, and checked the
        first time, so that the URL is always readable where the store keeps tags at all.
        """
        tagging = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in tags.items())
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType="application/json",
            Tagging=tagging,
        )
        if self.keeps_put_tags is None:
            self.keeps_put_tags = self.tags(key) == tags
        if self.keeps_put_tags:
            return
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
