"""The steps: a snapshot changed or went away; reconcile it, then its OMIs.

Level-triggered, like a Kubernetes controller: an event only names an object.
``refresh`` reads the object's current facts, files it in exactly one group,
and ``evaluate`` derives an OMI's whole desired state (a manifest or none, a
status for every member) from its current records and writes only what
differs. Both re-read after writing and go round again if the world moved, so
concurrent, duplicated, late and reordered invocations end in the state a
one-at-a-time run reaches. The record kinds, their invariants and the order of
writes are in ``docs/state.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256

from . import convention, manifest, signing
from .config import Settings
from .grouping import ImageSpec, Member, plan_group
from .inspection import declared_format, inspect_snapshot
from .notifications import ObjectChange
from .observability import count, logger
from .store import (
    Group,
    Marker,
    ObjectInfo,
    ObjectState,
    Publication,
    Store,
    key_hash,
    listing_state,
    membership_digest,
    tags_hash,
)

LONG_TERM_KEYS_NEEDED = "signing needs long-term keys - configure the signing secret"
SAFE_MANIFEST_NAME = re.compile(r"[A-Za-z0-9_./\-]+")
SIZING_MARGIN = 30.0  # seconds to record the result after sizing a raw.gz
ROUNDS = 5  # re-reads before giving up on a world that keeps moving (another worker finishes)

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


class StillChanging(RuntimeError):
    """The object or group changed on every re-read: the invocation fails and is retried."""


class Postponed(RuntimeError):
    """Not enough time left in this invocation to size a raw.gz: the next one does it."""


def _forever() -> float:
    return float("inf")


@dataclass(frozen=True)
class Facts:
    """One object as it is now: content, the user's tags, and what they make of it."""

    key: str
    info: ObjectInfo | None
    tags: dict[str, str]
    settings: convention.SnapshotSettings | None  # None: gone, or not a snapshot

    @property
    def group(self) -> str | None:
        return None if self.settings is None else self.settings.name or ""

    @property
    def tags_hash(self) -> str:
        return tags_hash(convention.user_tags(self.tags))

    @property
    def etag(self) -> str:
        return self.info.etag.strip('"') if self.info else ""

    def same(self, other: Facts) -> bool:
        return (self.group, self.etag, self.tags_hash) == (other.group, other.etag, other.tags_hash)

    def finished_in(self, state: ObjectState) -> bool:
        if self.group is None:
            return state.empty
        return state.finished(self.etag, self.tags_hash, self.group)


@dataclass
class Pipeline:
    store: Store
    settings: Settings
    keys: KeysProvider
    clock: Clock = utc_now
    time_left: Callable[[], float] = _forever  # seconds this invocation has left

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
                logger.debug(
                    "object changed", extra={"key": change.key, "event": change.event_name}
                )
                # A tagging event can only have changed tags: content changes bring
                # their own ObjectCreated event.
                self.refresh(change.key, tags_only="ObjectTagging" in change.event_name)
            except Exception:
                failures += 1
                count("EventsFailed")
                logger.exception("processing failed", extra={"key": change.key})
        if failures:
            raise RuntimeError(f"{failures} object changes failed; see the log")

    def facts(self, key: str) -> Facts:
        info = self.store.head(key)
        tags = self.store.tags(key) if info else None
        if info is None or tags is None:
            return Facts(key, None, {}, None)
        return self.facts_from(info, tags)

    def facts_from(self, info: ObjectInfo, tags: dict[str, str]) -> Facts:
        reserved = self.settings.reserved_prefixes
        if not convention.is_candidate(info.key, tags, reserved):
            return Facts(info.key, info, tags, None)
        settings = convention.read_settings(info.key, tags, self.settings.defaults, reserved)
        return Facts(info.key, info, tags, settings)

    def refresh(
        self, key: str, tags_only: bool = False, suspect: frozenset[str] = frozenset()
    ) -> None:
        """Bring one object's records in line with its current content and tags.

        The ``done`` entry is written last: while it does not match the object, processing
        did not finish, and the next event, the platform's retry or the scheduled pass
        does it again. Processing re-reads the object at the end and goes round again if
        it changed meanwhile, so the last invocation to finish files the latest facts.
        ``suspect`` names groups where the scheduled pass saw records of this object that
        its state does not account for (left by an invocation that died): they are
        cleared even though the object's own state says it is done.
        """
        if tags_only and self._tags_settled(key):
            logger.debug("unchanged", extra={"key": key})
            return
        facts = self.facts(key)
        touched: set[str] = set(suspect)
        for _ in range(ROUNDS):
            state = self.store.object_state(key)
            if not suspect and facts.finished_in(state):
                if facts.group is not None and (tags_only or convention.STATUS not in facts.tags):
                    # A tag write of the user's dropped the status, or brought back an old
                    # one: the group decides it again.
                    self.evaluate(facts.group)
                logger.debug("unchanged", extra={"key": key})
                return
            self._apply(facts, state, touched)
            suspect = frozenset()
            latest = self.facts(key)
            if latest.same(facts):
                return
            logger.info("snapshot changed while it was processed", extra={"key": key})
            facts = latest
        raise StillChanging(f"{key} changed on every one of {ROUNDS} reads")

    def _tags_settled(self, key: str) -> bool:
        """Three requests: the tags, the object's state and its group's listing; enough to
        see that a tagging event (the pipeline's own status write, most often) changes
        nothing: the user's tags are those the object was processed with, and its status
        is the one its group's listing implies (a user who writes back a tag set read
        earlier may have brought back an old status)."""
        tags = self.store.tags(key)
        if tags is None:
            return False
        reserved = self.settings.reserved_prefixes
        status = tags.get(convention.STATUS)
        if status is None and convention.is_candidate(key, tags, reserved):
            return False  # the user's tag write replaced the set: the status must come back
        state = self.store.object_state(key)
        if not convention.is_candidate(key, tags, reserved):
            return state.empty
        settings = convention.read_settings(key, tags, self.settings.defaults, reserved)
        name = settings.name or ""
        if not state.finished(None, tags_hash(convention.user_tags(tags)), name):
            return False
        return status == self.listed_status(self.store.read_group(name))

    def listed_status(self, group: Group) -> str | None:
        """The status every member of a group should show, as far as its listing tells
        (None when only its records can tell: a member with a problem, or disagreement)."""
        markers = current_markers(group.markers)
        state, expected = listing_state(markers)
        if state == "waiting":
            return convention.status_waiting(len(markers), expected, group.name)
        published = group.published
        if (
            state == "complete"
            and len(group.publications) == 1
            and published is not None
            and published.digest == membership_digest(markers)
        ):
            return convention.status_published(self.manifest_key(group.name))
        return None

    def _apply(self, facts: Facts, state: ObjectState, touched: set[str]) -> None:
        """File the object in its group (or none), clear its records elsewhere, evaluate
        every group it touched, then mark it done."""
        hashed = key_hash(facts.key)
        target = facts.group
        earlier = set(state.groups) | touched
        if target is not None and target not in state.groups:
            self.store.add_group_entry(facts.key, target)  # before the record it announces
        # A brand-new object has records nowhere; any other may have an older one in its
        # target group too, left by an invocation that died.
        listed = earlier | ({target} if target is not None and earlier else set())
        records = [
            marker for group in sorted(listed) for marker in self.store.records_of(group, facts.key)
        ]
        own, known = None, {}
        if target is not None:
            touched.add(target)
            member = self._member(facts, records)
            own = self.store.write_member(target, member, facts.tags_hash)
            known[own] = member
            logger.info(
                "snapshot recorded",
                extra={"key": facts.key, "omi": target, "problems": list(member.problems)},
            )
        for marker in records:
            if marker.state_key != own:
                self.store.delete_marker(marker.state_key)
        for group in sorted(earlier | ({target} if target is not None else set())):
            self.evaluate(group, known)
        for group in state.groups - {target}:
            self.store.delete_group_entry(hashed, group)
        done = (facts.etag, facts.tags_hash) if target is not None else None
        self.store.set_done(hashed, done, state.done)
        if target is None and state.groups:
            logger.info("snapshot removed", extra={"key": facts.key})

    def _member(self, facts: Facts, records: list[Marker]) -> Member:
        """The member record for these facts; inspection is reused from a record of the
        same content (ETag) and size hint, so retagging never reads the file again."""
        assert facts.info is not None and facts.settings is not None
        settings = facts.settings
        content = self._earlier_inspection(facts, records)
        if content is None:
            self._check_time_for(facts)
            found = inspect_snapshot(
                self.store.reader(facts.info),
                facts.key,
                size_hint=settings.size_hint,
                ceilings=self.settings.ceilings,
            )
            count("SnapshotsInspected")
            logger.info(
                "snapshot inspected",
                extra={
                    "key": facts.key,
                    "format": found.format,
                    "virtual_size": found.virtual_size,
                    "bytes_read": found.bytes_read,
                    "importable": found.importable,
                },
            )
            content = (found.virtual_size, tuple(found.problems))
        virtual_size, content_problems = content
        limits = convention.volume_problems(settings.volume_type, settings.iops, virtual_size)
        return Member(
            key=facts.key,
            etag=facts.info.etag,
            compressed_size=facts.info.size,
            virtual_size=virtual_size,
            problems=(*settings.problems, *content_problems, *limits),
            settings=settings,
            content_problems=content_problems,
        )

    def _check_time_for(self, facts: Facts) -> None:
        """Sizing a raw.gz streams the whole file for up to the sizing ceiling; an
        invocation with less time left than that leaves it to the next one rather than
        be stopped half-way (the scheduled pass has done other work first)."""
        hinted = facts.settings is not None and facts.settings.size_hint is not None
        if declared_format(facts.key) != "raw.gz" or hinted:
            return
        needed = self.settings.ceilings.max_seconds + SIZING_MARGIN
        if self.time_left() < needed:
            raise Postponed(f"{facts.key}: {needed:.0f} s needed to size it")

    def _earlier_inspection(
        self, facts: Facts, records: list[Marker]
    ) -> tuple[int | None, tuple[str, ...]] | None:
        for marker in records:
            if marker.etag != facts.etag:
                continue
            earlier = self.store.read_member(marker.state_key)
            hint = facts.settings.size_hint if facts.settings else None
            if earlier and earlier.settings.size_hint == hint and earlier.key == facts.key:
                return earlier.virtual_size, earlier.content_problems
        return None

    def forget(self, hashed: str, state: ObjectState, group_markers: list[Marker]) -> None:
        """Clear the records of an object that is gone, known only by its key's hash."""
        for marker in group_markers:
            member = self.store.read_member(marker.state_key)
            if member is not None:
                self.refresh(member.key, suspect=frozenset(m.group for m in group_markers))
                return
        for group in state.groups:
            self.store.delete_group_entry(hashed, group)
        self.store.set_done(hashed, None, state.done)

    # --- one OMI ---------------------------------------------------------------

    def evaluate(
        self, name: str, known: dict[str, Member] | None = None, resign: bool = False
    ) -> set[str]:
        """Derive one OMI's manifest (or none) and every member's status from its current
        records; write what differs; re-list, and go round again if a member changed.

        ``resign`` publishes anew even if the publication is current (renewal).
        ``known`` holds records this invocation just wrote (a record's key names its
        content, so one listed under that key need not be read back). Returns the
        members whose user tags no longer match their record (a tag change whose
        processing is still to come): the scheduled pass refreshes them.
        """
        for _ in range(ROUNDS):
            group = self.store.read_group(name)
            markers = current_markers(group.markers)
            members = self._read_members(markers, known)
            if members is None:
                continue  # a record went away between listing and reading: list again
            statuses = self._decide(group, markers, members, resign)
            resign = False
            drifted = self._write_statuses(statuses, {m.key: mk.tags for m, mk in members})
            after = self.store.read_group(name)
            if after.listing == group.listing and len(after.publications) <= 1:
                return drifted
            logger.info("group changed while it was evaluated", extra={"omi": name})
        raise StillChanging(f"OMI {name} changed on every one of {ROUNDS} listings")

    def _read_members(
        self, markers: list[Marker], known: dict[str, Member] | None = None
    ) -> list[tuple[Member, Marker]] | None:
        members = []
        for marker in markers:
            member = (known or {}).get(marker.state_key) or self.store.read_member(marker.state_key)
            if member is None:
                return None
            members.append((member, marker))
        return members

    def _decide(
        self,
        group: Group,
        markers: list[Marker],
        members: list[tuple[Member, Marker]],
        resign: bool = False,
    ) -> dict[str, str]:
        """Publish or withdraw as the plan says; the statuses the members should show."""
        plan = plan_group(group.name, [m for m, _ in members], self.settings.defaults)
        if plan.image is None or not group.name:
            self._withdraw(group)
            return plan.statuses
        digest = membership_digest(markers)
        if not resign and self._still_published(group, digest):
            status = convention.status_published(self.manifest_key(group.name))
            return {s.key: status for s in plan.image.snapshots}
        return self._publish(group, plan.image, digest)

    def _still_published(self, group: Group, digest: str) -> bool:
        """One publication, of these very records, and its manifest is there. Two
        publications (workers that published at once, one maybe from a stale view) are
        never trusted: publishing again leaves one, from the current records."""
        if len(group.publications) != 1 or group.publications[0].digest != digest:
            return False
        return self.store.head(self.manifest_key(group.name)) is not None

    def manifest_key(self, name: str) -> str:
        return manifest_key(self.settings.manifest_prefix, name)

    def _publish(self, group: Group, image: ImageSpec, digest: str) -> dict[str, str]:
        """Sign, write the manifest and its expiry entry, then the publication record
        (the commit point), then drop the previous publication's records."""
        now = self.clock()
        keys = self._signing_keys(image)
        if isinstance(keys, str):
            self._withdraw(group)
            return {s.key: convention.status_error(keys) for s in image.snapshots}
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

        target = self.manifest_key(image.name)
        kept = {}
        if group.published is not None:  # the user's own tags on the manifest (omi:renew)
            current = self.store.tags(target) or {}
            kept = {k: v for k, v in current.items() if not signing.is_url_tag(k)}
        try:
            tags = kept | signing.url_to_tags(
                sign(target), expires_at, convention.MAX_TAGS - len(kept)
            )
        except signing.UrlDoesNotFit:
            logger.error(LONG_TERM_KEYS_NEEDED, extra={"omi": image.name})
            self._withdraw(group)
            return {s.key: convention.status_error(LONG_TERM_KEYS_NEEDED) for s in image.snapshots}
        document = manifest.build(image, {s.key: sign(s.key) for s in image.snapshots})
        expiry_marker = self.store.expiry_key(image.name, expires_at, digest)
        publication = self.store.publication_key(image.name, digest, expires_at)
        self.store.put_manifest(target, manifest.render(document), tags)
        self.store.write_expiry(expiry_marker)
        self.store.write_publication(publication)
        self._drop_superseded(group, Publication.parse(publication))
        count("ManifestsPublished")
        shown = signing.format_expiry(expires_at)
        logger.info(
            "manifest published",
            extra={
                "omi": image.name,
                "manifest": target,
                "snapshots": len(image.snapshots),
                "expires": shown,
                "change": f"{image.name}: published {target} (expires {shown})",
            },
        )
        status = convention.status_published(target)
        return {s.key: status for s in image.snapshots}

    def _drop_superseded(self, group: Group, kept: Publication) -> None:
        """The records of other publications than ``kept``: each expiry entry before its
        publication record, so that a failure leaves a record to redo it."""
        expiry_marker = self.store.expiry_key(group.name, kept.expires, kept.digest)
        for earlier in group.publications:
            if earlier.state_key == kept.state_key:
                continue
            old_expiry = self.store.expiry_key(group.name, earlier.expires, earlier.digest)
            if old_expiry != expiry_marker:
                self.store.delete_expiry(old_expiry)
            self.store.delete_publication(earlier.state_key)

    def _signing_keys(self, image: ImageSpec) -> signing.SigningKeys | str:
        """The signing keys, or what the user must fix when they cannot be had."""
        try:
            return self.keys()
        except Exception as error:  # a missing or malformed secret: say so, never crash-loop
            secret = self.settings.signing_secret or "credentials"
            logger.error(
                "signing keys unavailable",
                extra={"omi": image.name, "reason": type(error).__name__},
            )
            return (
                f"cannot read the signing secret {secret} - it must exist and hold "
                "aws_access_key_id and aws_secret_access_key"
            )

    def renew(self, name: str) -> str:
        """Re-sign one published OMI after checking its snapshots are still as published.

        Returns ``renewed``, ``refreshed`` (a snapshot changed or went away and was
        processed as an event would have been) or ``gone`` (nothing is published).
        """
        group = self.store.read_group(name)
        if group.published is None:
            return "gone"
        members = self._read_members(current_markers(group.markers))
        for member, marker in members or []:
            info = self.store.head(member.key)
            if info is None or info.etag.strip('"') != marker.etag:
                self.refresh(member.key, suspect=frozenset({name}))
                return "refreshed"
        self.evaluate(name, resign=True)
        return "renewed"

    def _withdraw(self, group: Group) -> None:
        """Take down a published manifest, if there is one. The publication record goes
        last: if a step fails, the group still says published and the next evaluation
        finishes the withdrawal. With no record, a manifest left by a publication that
        failed before its record is looked for (a read) and deleted only if it is there."""
        target = self.manifest_key(group.name)
        if not group.publications:
            if group.name and self.store.head(target) is not None:
                self.store.delete_manifest(target)
                logger.info("unfinished publication removed", extra={"omi": group.name})
            return
        self.store.delete_manifest(target)
        for publication in group.publications:
            self.store.delete_expiry(
                self.store.expiry_key(group.name, publication.expires, publication.digest)
            )
            self.store.delete_publication(publication.state_key)
        count("ManifestsWithdrawn")
        logger.info(
            "manifest withdrawn",
            extra={
                "omi": group.name,
                "manifest": target,
                "change": f"{group.name}: withdrawn {target}",
            },
        )

    def _write_statuses(self, statuses: dict[str, str], record_tags: dict[str, str]) -> set[str]:
        """Write each status that differs, merged into tags read just before."""
        drifted = set()
        for key, status in sorted(statuses.items()):

            def unchanged(tags: dict[str, str], key: str = key) -> bool:
                return tags_hash(convention.user_tags(tags)) == record_tags.get(key)

            outcome, _ = self.store.set_tag(key, convention.STATUS, status, unchanged)
            if outcome == "moved":  # retagged since its record: its own processing decides
                drifted.add(key)
            elif outcome == "full":
                logger.warning(
                    "status not written: the object already has 10 tags",
                    extra={"key": key, "status": status},
                )
            elif outcome == "written":
                extra = {"key": key, "status": status}
                if not status.startswith("published:"):  # the OMI's own line says it
                    extra["change"] = f"{key}: {status}"
                logger.info("status written", extra=extra)
                if status.startswith("error:"):
                    count("SnapshotErrors")
        return drifted


def current_markers(markers: list[Marker]) -> list[Marker]:
    """One record per snapshot: while a replacement is under way a snapshot can show two;
    the newest stands, and the worker replacing it evaluates again once it is done."""
    newest: dict[str, Marker] = {}
    for marker in sorted(markers, key=lambda m: (m.modified, m.state_key)):
        newest[marker.key_hash] = marker
    return sorted(newest.values(), key=lambda m: m.state_key)
