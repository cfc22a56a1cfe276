"""The steps: an object changed or went away; evaluate its OMI; publish or withdraw.

Every step is idempotent and reads the bucket's current state rather than
trusting the event, so duplicate, late and reordered events end in the same
state. The pipeline's own writes (status tags, state, manifests) come back as
events that change nothing, so there are no loops.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256

from . import convention, manifest, signing
from .config import Settings
from .grouping import ImageSpec, Member, plan_group
from .inspection import inspect_snapshot
from .notifications import ObjectChange
from .observability import count, logger
from .store import (
    IndexRecord,
    Marker,
    ObjectInfo,
    Store,
    key_hash,
    listing_state,
    membership_digest,
)

LONG_TERM_KEYS_NEEDED = "signing needs long-term keys - configure the signing secret"
SAFE_MANIFEST_NAME = re.compile(r"[A-Za-z0-9_./\-]+")
REEVALUATIONS = 3

Clock = Callable[[], datetime]
KeysProvider = Callable[[], signing.SigningKeys]


def utc_now() -> datetime:
    return datetime.now(UTC)


def manifest_key(prefix: str, name: str) -> str:
    """``manifests/<name>.json``; names with spaces or parentheses, which URL-encode
    into characters tags cannot hold, get a tag-safe form made unique by a hash."""
    if SAFE_MANIFEST_NAME.fullmatch(name):
        return f"{prefix}{name}.json"
    slug = re.sub(r"[^A-Za-z0-9_./\-]", "_", name)
    return f"{prefix}{slug}-{sha256(name.encode()).hexdigest()[:8]}.json"


def fingerprint(etag: str, tags: dict[str, str]) -> str:
    """What decides a snapshot's record: its content (ETag) and the user's ``omi:`` tags."""
    text = json.dumps([etag, convention.user_tags(tags)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class Pipeline:
    store: Store
    settings: Settings
    keys: KeysProvider
    clock: Clock = utc_now

    # --- events ----------------------------------------------------------------

    def handle(self, changes: Iterable[ObjectChange]) -> None:
        """Process every change; a failing one does not stop the others, then fails the batch
        so that the platform retries it (processing is idempotent)."""
        failures = 0
        changes = list(changes)
        count("ObjectEvents", len(changes))
        for change in changes:
            if change.bucket != self.settings.bucket:
                logger.warning("event for another bucket ignored", extra={"bucket": change.bucket})
                continue
            if convention.is_reserved(change.key, self.settings.reserved_prefixes):
                continue
            try:
                # Created or removed, the object's current state decides: a late
                # "removed" for a key that exists again must not remove it.
                logger.debug(
                    "object changed", extra={"key": change.key, "event": change.event_name}
                )
                self.refresh(change.key)
            except Exception:
                failures += 1
                count("EventsFailed")
                logger.exception("processing failed", extra={"key": change.key})
        if failures:
            raise RuntimeError(f"{failures} object changes failed; see the log")

    def refresh(self, key: str, force: bool = False) -> None:
        """Bring one object's record in line with its current content and tags.

        The index record is written last: while it is missing or old, processing
        did not finish, and the scheduled pass (or the platform's retry) does it again.
        """
        info = self.store.head(key)
        tags = self.store.tags(key) if info else None
        if info is None or tags is None:
            self.remove(key)
            return
        index = self.store.read_index(key)
        if not convention.is_candidate(key, tags, self.settings.reserved_prefixes):
            if index:
                self.remove(key)
            return
        current = fingerprint(info.etag, tags)
        if index and index.fingerprint == current and not force:
            logger.debug("unchanged", extra={"key": key})
            return
        member = self._member(info, tags)
        name = member.settings.name or ""
        marker = self.store.write_member(name, member)
        logger.info(
            "snapshot recorded",
            extra={"key": key, "omi": name, "problems": list(member.problems)},
        )
        self.evaluate(name, trigger=(key, tags), own=marker)
        if index and index.group != name:
            self._leave(index)
        self.store.write_index(IndexRecord(key, name, marker, current))

    def _member(self, info: ObjectInfo, tags: dict[str, str]) -> Member:
        settings = convention.read_settings(
            info.key, tags, self.settings.defaults, self.settings.reserved_prefixes
        )
        found = inspect_snapshot(
            self.store.reader(info),
            info.key,
            size_hint=settings.size_hint,
            ceilings=self.settings.ceilings,
        )
        count("SnapshotsInspected")
        logger.info(
            "snapshot inspected",
            extra={
                "key": info.key,
                "format": found.format,
                "virtual_size": found.virtual_size,
                "bytes_read": found.bytes_read,
                "importable": found.importable,
            },
        )
        return Member(
            key=info.key,
            etag=info.etag,
            compressed_size=info.size,
            virtual_size=found.virtual_size,
            problems=settings.problems + found.problems,
            settings=settings,
        )

    def remove(self, key: str) -> None:
        """A snapshot is gone (or no longer a candidate): take it out of its OMI."""
        index = self.store.read_index(key)
        if index is None:
            return
        self._leave(index)
        self.store.delete_index(key)
        logger.info("snapshot removed", extra={"key": key, "omi": index.group})

    def forget(self, marker: Marker) -> None:
        """Drop a member record whose object is gone, even if its index never got written."""
        self.store.delete_marker(marker.state_key)
        self.evaluate(marker.group)
        self.store.delete_index_hash(marker.key_hash)

    def _leave(self, index: IndexRecord) -> None:
        self.store.delete_marker(index.marker)
        self.evaluate(index.group)

    # --- one OMI ---------------------------------------------------------------

    def evaluate(
        self,
        name: str,
        trigger: tuple[str, dict[str, str]] | None = None,
        own: str | None = None,
    ) -> None:
        """Decide an OMI from its group listing; read member records only when it may be
        complete or in error, so a waiting OMI costs one list request per event.

        ``own`` is the member record just written: older records of the same object
        (another ETag, another flag) are deleted here.
        """
        for _ in range(REEVALUATIONS):
            markers = self._current(self.store.list_group(name), own)
            if self._settled(name, markers, trigger):
                return
            plan = plan_group(name, self._members(markers), self.settings.defaults)
            if plan.image is None:
                self._withdraw(name)
                self._write_statuses(plan.statuses, trigger)
                return
            self._publish(plan.image)
            if {mk.state_key for mk in self.store.list_group(name)} == {
                mk.state_key for mk in markers
            }:
                return
            logger.info("group changed while publishing; evaluating again", extra={"omi": name})

    def _current(self, markers: list[Marker], own: str | None) -> list[Marker]:
        if own is None:
            return markers
        own_hash = Marker.parse(own).key_hash
        stale = [mk for mk in markers if mk.key_hash == own_hash and mk.state_key != own]
        for marker in stale:
            self.store.delete_marker(marker.state_key)
        return [mk for mk in markers if mk not in stale]

    def _members(self, markers: list[Marker]) -> list[Member]:
        return [m for mk in markers if (m := self.store.read_member(mk.state_key))]

    def _settled(
        self, name: str, markers: list[Marker], trigger: tuple[str, dict[str, str]] | None
    ) -> bool:
        """The cheap cases: an empty group, or one that plainly waits for more snapshots."""
        state, expected = listing_state(markers)
        if state == "empty":
            self._withdraw(name)
            return True
        if state != "waiting":
            return False
        if self.store.read_published(name) is not None:
            return False  # it was complete: the members must all go back to waiting
        if trigger:
            key, tags = trigger
            status = convention.status_waiting(len(markers), expected, name)
            self._set_status(key, status, tags)
        return True

    def _publish(self, image: ImageSpec) -> None:
        now = self.clock()
        keys = self.keys()
        expires_at, reason = signing.expiry(now, self.settings.url_lifetime, keys)
        lifetime = max(1, int((expires_at - now).total_seconds()))
        if reason:
            logger.warning(reason, extra={"omi": image.name, "expires": str(expires_at)})
        endpoint = signing.PublicEndpoint(
            self.settings.public_endpoint_url,
            self.settings.region,
            self.settings.addressing_style,
        )
        bucket = self.settings.bucket

        def sign(key: str) -> str:
            return signing.presign_get(keys, endpoint, bucket, key, now, lifetime)

        target = manifest_key(self.settings.manifest_prefix, image.name)
        kept = {  # the user's own tags on the manifest, such as omi:renew, survive
            k: v for k, v in (self.store.tags(target) or {}).items() if not signing.is_url_tag(k)
        }
        try:
            tags = kept | signing.url_to_tags(
                sign(target), expires_at, convention.MAX_TAGS - len(kept)
            )
        except signing.UrlDoesNotFit:
            logger.error(LONG_TERM_KEYS_NEEDED, extra={"omi": image.name})
            self._write_statuses(
                {s.key: convention.status_error(LONG_TERM_KEYS_NEEDED) for s in image.snapshots},
                None,
            )
            return
        document = manifest.build(image, {s.key: sign(s.key) for s in image.snapshots})
        previous = self.store.read_published(image.name)
        members = [(key_hash(s.key), s.etag) for s in image.snapshots]
        expiry_marker = self.store.expiry_key(image.name, expires_at, membership_digest(members))
        self.store.put_manifest(target, manifest.render(document), tags)
        self.store.write_expiry(expiry_marker)
        self.store.write_published(
            image.name,
            {
                "manifest": target,
                "expires": signing.format_expiry(expires_at),
                "expiry_marker": expiry_marker,
                "snapshots": {s.key: s.etag for s in image.snapshots},
            },
        )
        if previous and previous.get("expiry_marker") not in (None, expiry_marker):
            self.store.delete_expiry(previous["expiry_marker"])
        count("ManifestsPublished")
        expires = signing.format_expiry(expires_at)
        logger.info(
            "manifest published",
            extra={
                "omi": image.name,
                "manifest": target,
                "snapshots": len(image.snapshots),
                "expires": expires,
                "change": f"{image.name}: published {target} (expires {expires})",
            },
        )
        status = convention.status_published(target)
        self._write_statuses({s.key: status for s in image.snapshots}, None)

    def renew(self, name: str) -> str:
        """Re-sign one published OMI after checking its snapshots are still as published.

        Returns ``renewed``, ``refreshed`` (a snapshot changed or went away and was
        processed as an event would have been) or ``gone`` (nothing is published).
        """
        published = self.store.read_published(name)
        if published is None:
            return "gone"
        for key, etag in published["snapshots"].items():
            info = self.store.head(key)
            if info is None or info.etag != etag:
                self.refresh(key)
                return "refreshed"
        plan = plan_group(name, self._members(self.store.list_group(name)), self.settings.defaults)
        if plan.image is None:
            self.evaluate(name)
            return "refreshed"
        self._publish(plan.image)
        return "renewed"

    def _withdraw(self, name: str) -> None:
        """Take down a published manifest, if there is one."""
        published = self.store.read_published(name)
        if published is None:
            # A publication that failed half-way may have left the manifest alone.
            self.store.delete_manifest(manifest_key(self.settings.manifest_prefix, name))
            return
        # The record first: if a later step fails, the expiry listing still shows the
        # manifest, and the scheduled pass finishes the withdrawal.
        self.store.delete_published(name)
        self.store.delete_manifest(published["manifest"])
        self.store.delete_expiry(published["expiry_marker"])
        count("ManifestsWithdrawn")
        logger.info(
            "manifest withdrawn",
            extra={
                "omi": name,
                "manifest": published["manifest"],
                "change": f"{name}: withdrawn {published['manifest']}",
            },
        )

    def _write_statuses(
        self, statuses: dict[str, str], trigger: tuple[str, dict[str, str]] | None
    ) -> None:
        for key, status in statuses.items():
            known = trigger[1] if trigger and trigger[0] == key else None
            self._set_status(key, status, known)

    def _set_status(self, key: str, status: str, tags: dict[str, str] | None) -> None:
        outcome = self.store.set_tag(key, convention.STATUS, status, tags)
        if outcome == "full":
            logger.warning(
                "status not written: the object already has 10 tags",
                extra={"key": key, "status": status},
            )
        if outcome != "written":
            return
        if status.startswith("error:"):
            count("SnapshotErrors")
        if not status.startswith("published:"):  # a publication is told once, for its OMI
            logger.info("status written", extra={"key": key, "change": f"{key}: {status}"})
