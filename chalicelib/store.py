"""Everything that talks to the bucket: snapshot objects, their tags, state records, manifests.

The record kinds, what each means, and the order they are written in are in
``docs/state.md``; the layout under the state prefix, in short:

    objects/<h>/group=<g>                 snapshot <h> (hash of its key) may have a record in
                                          group <g>: written before the record, deleted after
    objects/<h>/done=<etag>@<tags>        processing of <h> finished for that content and
                                          those user tags: the object's commit point
    groups/<g>/<h>@<etag>@<n>@<ok|bad>@<tags>
                                          a member record (JSON); the key itself says which
                                          content was inspected, how many snapshots the
                                          member declares (n, 0: none), whether it has a
                                          problem, and which user tags it was read from
    groups/<g>/~published@<digest>@<expires>
                                          the OMI is published; digest names the member
                                          records it was built from: the group's commit point
    expiry/<minute>/<g>@<digest>          one per published OMI, sorted by when its URLs
                                          expire: finding the due ones is a short listing

One list request of ``groups/<g>/`` tells an OMI's whole story; one of ``objects/<h>/``
tells a snapshot's. Reconciling compares listings: one request per 1,000 objects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
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
PUBLISHED = "~published"
UNNAMED = "~"  # the group segment of snapshots that have no OMI name (a file at the root)
GROUP_ENTRY = "group="
DONE_ENTRY = "done="
EXPIRES_FORMAT = "%Y%m%dT%H%M%SZ"
MINUTE_FORMAT = "%Y%m%dT%H%MZ"


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
    modified: str = ""

    @classmethod
    def parse(cls, state_key: str, version: str = "", modified: str = "") -> Marker:
        parents, leaf = state_key.rsplit("/", 1)
        hashed, etag, declared, flag, tags = leaf.split("@")
        group = group_from_segment(parents.rsplit("/", 1)[1])
        return cls(
            state_key, group, hashed, etag, int(declared), flag == "ok", tags, version, modified
        )


@dataclass(frozen=True)
class Publication:
    """A published OMI as its group listing shows it."""

    state_key: str
    group: str
    digest: str
    expires: datetime

    @classmethod
    def parse(cls, state_key: str) -> Publication:
        parents, leaf = state_key.rsplit("/", 1)
        _, digest, expires = leaf.split("@")
        moment = datetime.strptime(expires, EXPIRES_FORMAT).replace(tzinfo=UTC)
        return cls(state_key, group_from_segment(parents.rsplit("/", 1)[1]), digest, moment)


@dataclass
class Group:
    """One OMI's records: its members and, if it is published, the publication."""

    name: str
    markers: list[Marker] = field(default_factory=list)
    publications: list[Publication] = field(default_factory=list)  # more than one: mid-change

    @property
    def published(self) -> Publication | None:
        return max(self.publications, key=lambda p: p.expires, default=None)

    @property
    def listing(self) -> frozenset[tuple[str, str]]:
        """What a re-listing compares: the member records and their contents."""
        return frozenset((m.state_key, m.version) for m in self.markers)


@dataclass(frozen=True)
class ObjectState:
    """What ``objects/<h>/`` says of one snapshot: the groups it may have records in, and
    the (ETag, tags hash) pairs its processing finished for."""

    key_hash: str
    groups: frozenset[str] = frozenset()
    done: frozenset[tuple[str, str]] = frozenset()

    @property
    def empty(self) -> bool:
        return not self.groups and not self.done

    def finished(self, etag: str | None, tags: str, group: str) -> bool:
        """Processing finished for these facts (``etag`` None: any content), and left the
        snapshot in exactly one group."""
        if self.groups != {group} or len(self.done) != 1:
            return False
        done_etag, done_tags = next(iter(self.done))
        return done_tags == tags and (etag is None or done_etag == _strip(etag))


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


def _missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in MISSING


def member_to_json(member: Member) -> bytes:
    return json.dumps(asdict(member), sort_keys=True).encode()


def member_from_json(body: bytes) -> Member:
    data = json.loads(body)
    settings = data.pop("settings")
    settings["problems"] = tuple(settings["problems"])
    data["problems"] = tuple(data["problems"])
    data["content_problems"] = tuple(data.get("content_problems", ()))
    return Member(settings=SnapshotSettings(**settings), **data)


class Store:
    """The bucket, as the pipeline needs it."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.bucket = settings.bucket
        self.state = settings.state_prefix
        self.manifest_prefix = settings.manifest_prefix
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

    def set_tag(
        self,
        key: str,
        name: str,
        value: str,
        still: Callable[[dict[str, str]], bool] = lambda _: True,
    ) -> tuple[str, dict[str, str] | None]:
        """Merge one tag into an object's tags, read immediately before: a tag the user
        wrote meanwhile is kept (S3 has no conditional tag write; only one landing in the
        milliseconds between the read and the write can be lost). ``still`` checks the
        tags read: when it fails, nothing is written.

        Returns the outcome, ``written``, ``unchanged``, ``full`` (10 tags already, none
        of them this one), ``moved`` (``still`` failed) or ``missing`` (the object is
        gone), and the tags read.
        """
        current = self.tags(key)
        if current is None:
            return "missing", None
        if not still(current):
            return "moved", current
        if current.get(name) == value:
            return "unchanged", current
        if name not in current and len(current) >= MAX_TAGS:
            return "full", current
        try:
            self.put_tags(key, {**current, name: value})
        except ClientError as error:
            if _missing(error):
                return "missing", None
            raise
        return "written", current

    def reader(self, info: ObjectInfo) -> S3Reader:
        return S3Reader(self.client, self.bucket, info.key, size=info.size, etag=info.etag)

    # --- state: plumbing ---------------------------------------------------------

    def _get(self, key: str) -> bytes | None:
        found = self._unless_missing(self.client.get_object, key)
        return None if found is None else found["Body"].read()

    def _put(self, key: str, body: bytes = b"") -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType="application/json"
        )

    def _delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def _list(self, prefix: str, start_after: str = "") -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, StartAfter=start_after
        )
        for page in pages:
            yield from page.get("Contents", [])

    # --- state: one snapshot -------------------------------------------------------

    def _object_prefix(self, hashed: str) -> str:
        return f"{self.state}objects/{hashed}/"

    def object_state(self, key: str) -> ObjectState:
        """One list request: where a snapshot may be filed and what was finished for it."""
        hashed = key_hash(key)
        prefix = self._object_prefix(hashed)
        return _object_state(hashed, (item["Key"][len(prefix) :] for item in self._list(prefix)))

    def all_object_states(self) -> dict[str, ObjectState]:
        """Every snapshot's state, from one list request per 1,000 entries."""
        prefix = f"{self.state}objects/"
        entries: dict[str, list[str]] = {}
        for item in self._list(prefix):
            hashed, _, entry = item["Key"][len(prefix) :].partition("/")
            entries.setdefault(hashed, []).append(entry)
        return {hashed: _object_state(hashed, found) for hashed, found in entries.items()}

    def add_group_entry(self, key: str, group: str) -> None:
        self._put(f"{self._object_prefix(key_hash(key))}{GROUP_ENTRY}{group_segment(group)}")

    def delete_group_entry(self, hashed: str, group: str) -> None:
        self._delete(f"{self._object_prefix(hashed)}{GROUP_ENTRY}{group_segment(group)}")

    def set_done(self, hashed: str, done: tuple[str, str] | None, previous: Iterable) -> None:
        """Mark processing finished for ``done`` (None: the snapshot is gone) and drop the
        marks of earlier facts."""
        prefix = f"{self._object_prefix(hashed)}{DONE_ENTRY}"
        for etag, tags in previous:
            if (etag, tags) != done:
                self._delete(f"{prefix}{etag}@{tags}")
        if done is not None and done not in previous:
            self._put(f"{prefix}{done[0]}@{done[1]}")

    # --- state: one OMI ------------------------------------------------------------

    def group_prefix(self, name: str) -> str:
        return f"{self.state}groups/{group_segment(name)}/"

    def read_group(self, name: str) -> Group:
        """The members of one OMI and its publication, from one list request per 1,000."""
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

    def write_member(self, name: str, member: Member, tags: str) -> str:
        marker = self.marker_key(name, member, tags)
        self._put(marker, member_to_json(member))
        return marker

    def delete_marker(self, marker: str) -> None:
        self._delete(marker)

    def read_member(self, marker: str) -> Member | None:
        body = self._get(marker)
        return None if body is None else member_from_json(body)

    def publication_key(self, name: str, digest: str, expires: datetime) -> str:
        stamp = expires.astimezone(UTC).strftime(EXPIRES_FORMAT)
        return f"{self.group_prefix(name)}{PUBLISHED}@{digest}@{stamp}"

    def write_publication(self, key: str) -> None:
        self._put(key)

    def delete_publication(self, key: str) -> None:
        self._delete(key)

    # --- state: expiry index ---------------------------------------------------------

    def expiry_key(self, name: str, expires: datetime, digest: str) -> str:
        """Rounded down to the minute, so two passes renewing at once write one marker;
        ``digest`` names the member records published, so a listing can tell a stale one."""
        minute = expires.astimezone(UTC).strftime(MINUTE_FORMAT)
        return f"{self.state}expiry/{minute}/{group_segment(name)}@{digest}"

    def write_expiry(self, key: str) -> None:
        self._put(key)

    def delete_expiry(self, key: str) -> None:
        self._delete(key)

    def parse_expiry(self, marker: str) -> tuple[str, str]:
        """(OMI name, digest) of an expiry entry."""
        segment, digest = marker.rsplit("/", 1)[1].split("@")
        return group_from_segment(segment), digest

    def due(self, before: datetime) -> Iterator[tuple[str, str, str]]:
        """(expiry marker, OMI name, digest) of every manifest expiring before ``before``,
        oldest first; the listing stops at the first one that is not due."""
        cutoff = before.astimezone(UTC).strftime(MINUTE_FORMAT)
        prefix = f"{self.state}expiry/"
        for item in self._list(prefix):
            if item["Key"][len(prefix) :].split("/", 1)[0] > cutoff:
                return
            yield item["Key"], *self.parse_expiry(item["Key"])

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

    def list_keys(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        """Keys under ``prefix`` with when they were written."""
        for item in self._list(prefix):
            yield item["Key"], item["LastModified"]

    # --- manifests -------------------------------------------------------------------

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


@dataclass(frozen=True)
class Listed:
    key: str
    etag: str
    size: int = 0


def _marker(item: dict[str, Any]) -> Marker:
    return Marker.parse(item["Key"], _strip(item.get("ETag", "")), str(item.get("LastModified")))


def _add_to_group(group: Group, item: dict[str, Any]) -> None:
    leaf = item["Key"].rsplit("/", 1)[1]
    if leaf.startswith(PUBLISHED + "@"):
        group.publications.append(Publication.parse(item["Key"]))
    else:
        group.markers.append(_marker(item))


def _object_state(hashed: str, entries: Iterable[str]) -> ObjectState:
    groups: set[str] = set()
    done: set[tuple[str, str]] = set()
    for entry in entries:
        if entry.startswith(GROUP_ENTRY):
            groups.add(group_from_segment(entry[len(GROUP_ENTRY) :]))
        elif entry.startswith(DONE_ENTRY):
            etag, _, tags = entry[len(DONE_ENTRY) :].partition("@")
            done.add((etag, tags))
    return ObjectState(hashed, frozenset(groups), frozenset(done))
