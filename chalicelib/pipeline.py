"""The steps: a snapshot changed or went away; reconcile it, then its OMIs.

Level-triggered, like a Kubernetes controller: an event only names an object.
``refresh`` reads the object's current facts and files it in exactly one group;
``evaluate`` derives an OMI's whole desired state (a manifest or none, a status for
every member) from its current records with ``decide`` and writes only what
differs. One fencing rule guards what users consume: a manifest carries, in its own
metadata, the digest of the member records it was built from, and it is trusted
only when that digest is the one the current records give. The record kinds, the
order of writes and why every interleaving and crash converges are in
``docs/state.md``.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from hashlib import sha256

from botocore.exceptions import ClientError

from . import convention, importing, manifest, outscale, signing
from .config import Settings
from .events import Announcer, Event
from .grouping import ImageSpec, Member, plan_group
from .inspection import declared_format, inspect_snapshot
from .notifications import ObjectChange
from .observability import count, logger
from .store import (
    EXPIRES_FORMAT,
    Filed,
    Filing,
    Group,
    ManifestHead,
    Marker,
    ObjectInfo,
    Store,
    group_from_segment,
    group_segment,
    key_hash,
    membership_digest,
    tags_hash,
)

LONG_TERM_KEYS_NEEDED = "signing needs long-term keys - configure the signing secret"
SAFE_MANIFEST_NAME = re.compile(r"[A-Za-z0-9_./\-]+")
SIZING_MARGIN = 30.0  # seconds to record the result after sizing a raw.gz
ROUNDS = 5  # re-reads before giving up on a world that keeps moving (another worker finishes)
ANNOUNCEMENT_GRACE = timedelta(hours=1)  # longer than any invocation runs (Lambda: 15 min)
IMPORT_LEASE = timedelta(minutes=2)  # a publisher's own import, left to it this long after signing
KNOWN_RECORDS = 20_000  # member records kept in memory: a record never changes under its key
CHANGED = ("412", "PreconditionFailed", "404", "NoSuchKey")
CACHE_LOCK = threading.Lock()  # a local run's workers share one pipeline


@dataclass
class Turn:
    """One OMI's evaluations in this process: they take turns, and one that began after
    another was asked for, and wrote every status, makes the other's work redundant."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: int = 0
    started: int = 0  # evaluations begun so far
    covered: int = 0  # the begin number of the latest one that wrote every status


class Turns:
    """Evaluations of one OMI take turns within a process (a local run's workers share
    one pipeline): a second would only redo the first's writes, and one asked for while
    another runs is skipped when a later one covered it. Across processes (Lambda
    environments) nothing is shared; the fence and re-listing keep races correct there."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns: dict[str, Turn] = {}

    @contextmanager
    def of(self, name: str) -> Iterator[tuple[bool, Callable[[], None]]]:
        """Waits for the OMI's turn; yields whether an evaluation that began after this
        call wrote every status meanwhile, and how to say that this one did."""
        with self._lock:
            turn = self._turns.setdefault(name, Turn())
            turn.waiting += 1
            asked = turn.started
        try:
            with turn.lock:
                turn.started += 1
                begun = turn.started

                def cover() -> None:
                    turn.covered = begun

                yield turn.covered > asked, cover
        finally:
            with self._lock:
                turn.waiting -= 1
                if not turn.waiting:
                    del self._turns[name]


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


class PublishedByAnother(RuntimeError):
    """Another worker published this very content first: its evaluation writes the
    statuses (and lists again after, or its event is delivered again if it dies)."""


class ContentChanged(RuntimeError):
    """The object was replaced or removed while it was read: its facts are read again."""


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
        return self.info.etag if self.info else ""

    def recorded_by(self, marker: Marker) -> bool:
        return marker.etag == self.etag and marker.tags == self.tags_hash


@dataclass
class Decision:
    """What one OMI should be, from its current records: the status of every member and
    what to do with its manifest."""

    statuses: dict[str, str]
    action: str  # "keep" (nothing to do), "publish", "withdraw", or "tidy" (hints only)
    image: ImageSpec | None = None
    head: ManifestHead | None = None  # the manifest as it is, when it was read
    digest: str = ""
    imports: bool = False  # imported into OUTSCALE (OMI_IMPORT, or omi:import on a snapshot)
    image_name: str = ""  # the ImageName asked for
    signed: datetime | None = None  # when the manifest that still needs its import was signed


@dataclass
class Pipeline:
    store: Store
    settings: Settings
    keys: KeysProvider
    clock: Clock = utc_now
    time_left: Callable[[], float] = _forever  # seconds this invocation has left
    own_principal: str = ""  # who the pipeline is in S3 events (userIdentity.principalId)
    find_principal: Callable[[], str] | None = None  # asked once, at the first echo to tell
    known: OrderedDict[tuple[str, str], Member] = field(default_factory=OrderedDict)
    written: OrderedDict[str, str] = field(default_factory=OrderedDict)  # key: tags digest
    outscale: outscale.OutscaleApi | None = None  # made from the settings on first use
    announcer: Announcer | None = None  # made from the settings on first use
    import_reasons: dict[str, str] = field(default_factory=dict)  # failed image: StateComment
    turns: Turns = field(default_factory=Turns)

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
            if change.tags_only and self._own_echo(change):
                count("OwnEchoes")
                continue
            try:
                logger.debug(
                    "object changed", extra={"key": change.key, "event": change.event_name}
                )
                self.refresh(change.key, change)
            except Exception:
                failures += 1
                count("EventsFailed")
                logger.exception("processing failed", extra={"key": change.key})
        if failures:
            raise RuntimeError(f"{failures} object changes failed; see the log")

    def _own_echo(self, change: ObjectChange) -> bool:
        """A tagging event caused by the pipeline's own status write changes nothing.
        Where S3 names the writer, that costs no request; elsewhere, one read shows
        whether the tags are still exactly those this process wrote last."""
        if change.principal and not self.own_principal and self.find_principal is not None:
            find, self.find_principal = self.find_principal, None
            self.own_principal = find()
        if change.principal and self.own_principal:
            return change.principal == self.own_principal
        wrote = self.written.get(change.key)
        if wrote is None:
            return False
        tags = self.store.tags(change.key)
        return tags is not None and _tags_digest(tags) == wrote

    def facts(self, key: str, hint: ObjectChange | None = None) -> Facts:
        """The object now: its tags, and its ETag and size (from the event when it gives
        them: inspection reads are pinned to that ETag, so a stale one shows)."""
        tags = self.store.tags(key)
        if tags is None:
            return Facts(key, None, {}, None)
        if hint is not None and hint.etag and hint.size is not None:
            return self.facts_from(ObjectInfo(key, hint.etag, hint.size), tags)
        return self._as_stored(key, tags)

    def _as_stored(self, key: str, tags: dict[str, str]) -> Facts:
        """The object as the store has it now (one HEAD), with the tags just read. Also
        what an event's ETag gives way to for an object seen before (announced
        somewhere): an event delivered again carries the ETag of the upload it was for,
        which a later upload may have replaced; a first upload's reads are pinned to the
        event's ETag anyway."""
        info = self.store.head(key)
        return Facts(key, None, {}, None) if info is None else self.facts_from(info, tags)

    def facts_from(self, info: ObjectInfo, tags: dict[str, str]) -> Facts:
        reserved = self.settings.reserved_prefixes
        if not convention.is_candidate(info.key, tags, reserved):
            return Facts(info.key, info, tags, None)
        settings = convention.read_settings(info.key, tags, self.settings.defaults, reserved)
        return Facts(info.key, info, tags, settings)

    def refresh(self, key: str, hint: ObjectChange | None = None) -> None:
        """Bring one object's records, and its OMIs, in line with its current content and
        tags. Safe to run twice, concurrently, late, or again after dying anywhere: it
        first checks the outcome (``settled``) and does only what is missing."""
        facts = self.facts(key, hint)
        tags_only = hint is not None and hint.tags_only
        from_event = hint is not None and bool(hint.etag) and hint.size is not None
        for _ in range(ROUNDS):
            filed = self.store.filed_in(key)
            if from_event and filed.filings:
                facts, from_event = self._as_stored(key, facts.tags), False
            if self.settled(facts, filed):
                logger.debug("unchanged", extra={"key": key})
                return
            try:
                moved = self._apply(facts, filed, tags_only)
            except ContentChanged:
                moved = True
            if not moved:
                return
            logger.info("snapshot changed while it was processed", extra={"key": key})
            facts, tags_only = self.facts(key), False
        raise StillChanging(f"{key} changed on every one of {ROUNDS} reads")

    def settled(self, facts: Facts, filed: Filed) -> bool:
        """The object is recorded as its facts say and announced nowhere else, its OMI
        needs no write, and every member's status is the one its OMI gives: its own first
        (no request), then the others' (an invocation that died between two status
        writes may have left a stale one that nobody else would correct)."""
        target = facts.group
        if filed.groups - {target}:
            return False  # it left a group, lately: that group is evaluated again
        if target is None:
            return facts.info is None or convention.STATUS not in facts.tags
        if target not in filed.groups:
            return False
        group = self.store.read_group(target)
        mine = [m for m in group.markers if m.key_hash == key_hash(facts.key)]
        if len(mine) != 1 or not facts.recorded_by(mine[0]) or group.duplicated():
            return False
        decision = self.decide(group)
        if decision is None or decision.action != "keep":
            return False
        statuses = decision.statuses
        if not _shows(facts.tags, statuses.get(facts.key), mine[0].tags):
            return False
        recorded = self._recorded_tags(group)
        return all(
            _shows(self.store.tags(key), status, recorded.get(key))
            for key, status in sorted(statuses.items())
            if key != facts.key
        )

    def _apply(self, facts: Facts, filed: Filed, tags_only: bool = False) -> bool:
        """File the object in its group (or none), clear its records elsewhere, evaluate
        every group it touched, its own last. Returns whether the object's tags changed
        meanwhile (it is processed again).

        An announcement of a group the object left is replaced by its ``~left`` form
        (written first), never just removed (the pass prunes old, empty ones): a worker
        with stale facts may still be about to write a record where it announced one,
        and whoever processes the object next must find it there.
        """
        target = facts.group
        # A brand-new object has records nowhere; any other may have an older one in its
        # target group too, left by an invocation that was stale or died.
        listed = filed.groups | ({target} if target is not None and filed.filings else set())
        records = [m for group in sorted(listed) for m in self.store.records_of(group, facts.key)]
        own = None
        if target is not None:
            if tags_only and self._inspection_under_way(facts, filed, records):
                logger.debug("left to the inspection under way", extra={"key": facts.key})
                return False
            if filed.announced(target, facts.etag) is None:
                self.store.file_in(facts.key, target, facts.etag)  # before the record
            member = self._member(facts, records)
            own = self.store.marker_key(target, member, facts.tags_hash)
            if own not in {r.state_key for r in records}:
                version = self.store.write_member(own, member)
                self._remember(own, version, member)
                logger.info(
                    "snapshot recorded",
                    extra={"key": facts.key, "omi": target, "problems": list(member.problems)},
                )
        cleared = set()
        for record in records:
            if record.state_key != own:
                self.store.delete_record(record.state_key)
                cleared.add(record.group)
        for filing in filed.filings:
            if filing.group != target and not filing.left:
                self.store.mark_left(facts.key, filing)
        moved = False
        for group in sorted((filed.groups | cleared) - {target}):
            moved |= facts.key in self.evaluate(group)
        if target is not None:
            moved |= facts.key in self.evaluate(target, last=facts.key)
        elif facts.info is not None:
            moved |= self._clear_status(facts, left=bool(filed.filings))
        if target is None and cleared:
            logger.info("snapshot removed", extra={"key": facts.key})
        return moved

    def _inspection_under_way(self, facts: Facts, filed: Filed, records: list[Marker]) -> bool:
        """A tagging event that arrives while the upload's own event is still inspecting
        the content (announced, not yet recorded) leaves the work to it: that invocation
        reads the tags again before it finishes (``moved``), and if it dies, its event is
        delivered again. So the content is read once per upload."""
        if any(record.etag == facts.etag for record in records):
            return False
        young = self.clock() - ANNOUNCEMENT_GRACE
        return any(f.etag == facts.etag and f.written > young for f in filed.filings)

    def _clear_status(self, facts: Facts, left: bool) -> bool:
        """An object that stopped being a snapshot keeps no status of ours, unless its
        tags moved meanwhile (it may be one again): then it is processed again (True).
        One that ``left`` a group has its tags read even with no status to remove: a
        tagging event may have left its work to an upload whose record this removed."""
        user_tags = convention.user_tags(facts.tags)

        def unchanged(tags: dict[str, str]) -> bool:
            return convention.user_tags(tags) == user_tags

        if convention.STATUS not in facts.tags:
            tags = self.store.tags(facts.key) if left else None
            return tags is not None and not unchanged(tags)

        outcome, before = self.store.set_tag(facts.key, convention.STATUS, None, unchanged)
        if outcome == "written":
            self._wrote(
                facts.key, {k: v for k, v in (before or {}).items() if k != convention.STATUS}
            )
            logger.info(
                "status removed",
                extra={"key": facts.key, "change": f"{facts.key}: no longer a snapshot"},
            )
        return outcome == "moved"

    def _member(self, facts: Facts, records: list[Marker]) -> Member:
        """The member record for these facts; inspection is reused from a record of the
        same content (ETag) and size hint, so retagging never reads the file again."""
        assert facts.info is not None and facts.settings is not None
        settings = facts.settings
        content = self._earlier_inspection(facts, records)
        if content is None:
            self._check_time_for(facts)
            try:
                found = inspect_snapshot(
                    self.store.reader(facts.info),
                    facts.key,
                    size_hint=settings.size_hint,
                    ceilings=self.settings.ceilings,
                )
            except ClientError as error:
                if str(error.response.get("Error", {}).get("Code")) in CHANGED:
                    raise ContentChanged(facts.key) from None
                raise
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
            earlier = self.member(marker)
            hint = facts.settings.size_hint if facts.settings else None
            if earlier and earlier.settings.size_hint == hint and earlier.key == facts.key:
                return earlier.virtual_size, earlier.content_problems
        return None

    # --- member records, read once per process -----------------------------------

    def member(self, marker: Marker) -> Member | None:
        """A member record; a record never changes under its key and version, so one read
        (or this process's own write) serves every later evaluation."""
        cached = self.known.get((marker.state_key, marker.version))
        if cached is not None:
            return cached
        found = self.store.read_member(marker.state_key)
        if found is not None:
            self._remember(marker.state_key, marker.version, found)
        return found

    def _remember(self, state_key: str, version: str, member: Member) -> None:
        with CACHE_LOCK:
            self.known[(state_key, version)] = member
            while len(self.known) > KNOWN_RECORDS:
                self.known.popitem(last=False)

    def forget(self, hashed: str, filed: Filed, markers: list[Marker]) -> None:
        """Clear the records of an object that is gone, known only by its key's hash, and
        the announcements it left once they are old."""
        for marker in markers:
            member = self.member(marker)
            if member is not None:
                self.reconcile(member.key)
                return
        self.prune(hashed, filed, [])

    def reconcile(self, key: str, hint: ObjectChange | None = None) -> None:
        """What the pass does for an object that events may have missed: refresh it, then
        drop its announcements that are past their time."""
        self.refresh(key, hint)
        filed = self.store.filed_in(key)
        if self.stale_filings(filed, []):
            records = [m for g in sorted(filed.groups) for m in self.store.records_of(g, key)]
            self.prune(key_hash(key), filed, records)

    def stale_filings(self, filed: Filed, records: list[Marker]) -> list[Filing]:
        """Announcements older than the grace period with no record of their content: no
        invocation can still be about to write one there."""
        old = self.clock() - ANNOUNCEMENT_GRACE
        recorded = {(record.group, record.etag) for record in records}
        return [
            f for f in filed.filings if f.written < old and (f.group, f.content) not in recorded
        ]

    def prune(self, hashed: str, filed: Filed, records: list[Marker]) -> None:
        for filing in self.stale_filings(filed, records):
            self.store.unfile(hashed, filing)

    # --- one OMI ---------------------------------------------------------------

    def evaluate(self, name: str, last: str | None = None, resign: bool = False) -> set[str]:
        """Derive one OMI's manifest (or none) and every member's status from its current
        records; write what differs; re-list after writing, and go round again if a
        member record changed meanwhile (the last worker to finish sees every record).

        ``last`` is the member whose status is written last (the object the invocation
        is for). ``resign`` publishes anew even if the manifest is current (renewal).
        Returns the members seen, in any round, with user tags that no longer match
        their record (a tag change whose processing is still to come).

        A round after one that wrote statuses rewrites only those it wrote whose value
        the new listing changes: they may be stale; every other status is its writer's
        to check, as each writer lists again after writing (a writer that dies leaves
        its event to be delivered again, and ``settled`` reads every status). A round
        that writes the manifest or a hint (publish, withdraw, tidy, import) checks
        them all. A worker that loses the race to
        publish the same records leaves the statuses to the winner.
        """
        with self.turns.of(name) as (covered, cover):
            if covered and not resign:
                return set()
            drifted, complete = self._evaluate(name, last, resign)
            if complete:
                cover()
            return drifted

    def _evaluate(self, name: str, last: str | None, resign: bool) -> tuple[set[str], bool]:
        """``evaluate``'s rounds; also whether every status is now written (nothing
        drifted in any round, nothing left to another worker)."""
        mine: dict[str, str] | None = None  # statuses this evaluation wrote; None: check all
        drifted: set[str] = set()  # seen in any round: their processing is still to come
        group = self.store.read_group(name)
        for _ in range(ROUNDS):
            if group.duplicated():
                self._settle_duplicates(group)
                group = self.store.read_group(name)
                continue
            decision = self.decide(group, resign)
            if decision is None:
                group = self.store.read_group(name)
                continue  # a record went away between listing and reading: list again
            if decision.action == "import" and self._publisher_importing(decision):
                # Its publisher imports it (or, if it dies, the retry).
                return drifted | self._drifted(group, last), False
            try:
                wrote = self._carry_out(group, decision)
            except PublishedByAnother:
                return drifted | self._drifted(group, last), False
            if wrote is None:
                group = self.store.read_group(name)
                continue  # another worker published other records first: evaluate again
            resign = False
            statuses = decision.statuses
            if mine is not None and not wrote:
                statuses = {k: v for k, v in statuses.items() if k in mine and mine[k] != v}
            moved, written = self._write_statuses(group, statuses, last)
            drifted |= moved
            if not (wrote or written):
                return drifted, not drifted
            mine = (mine or {}) | {key: statuses[key] for key in written}
            after = self.store.read_group(name)
            if _members(after) == _members(group):
                return drifted, not drifted
            group = after
            logger.info("group changed while it was evaluated", extra={"omi": name})
        raise StillChanging(f"OMI {name} changed on every one of {ROUNDS} listings")

    def _drifted(self, group: Group, key: str | None) -> set[str]:
        """``{key}`` when its user tags, read now, no longer match its record: an evaluation
        that leaves the statuses to another worker still tells its caller (a tagging event
        may have left the work to it, see ``_inspection_under_way``)."""
        recorded = self._recorded_tags(group).get(key) if key is not None else None
        if key is None or recorded is None:
            return set()
        tags = self.store.tags(key)
        return set() if tags is None or _as_recorded(tags, recorded) else {key}

    def _settle_duplicates(self, group: Group) -> None:
        """Two records of one snapshot (a replacement or retag under way, or one written
        by a stale or dead invocation): the object's facts now decide which stays."""
        for hashed in sorted(group.duplicated()):
            records = [m for m in group.markers if m.key_hash == hashed]
            member = next((m for r in records if (m := self.member(r)) is not None), None)
            if member is None:
                continue
            facts = self.facts(member.key)
            for record in records:
                if facts.group != group.name or not facts.recorded_by(record):
                    self.store.delete_record(record.state_key)

    def decide(self, group: Group, resign: bool = False) -> Decision | None:
        """The one place statuses and publication are decided, from a group's listing,
        its records (each read once per process) and the manifest as it is (one HEAD,
        whatever the hints say). None: a record went away meanwhile."""
        markers = group.markers
        members = [self.member(marker) for marker in markers]
        if any(member is None for member in members):
            return None
        plan = plan_group(group.name, members, self.settings.defaults)  # type: ignore[arg-type]
        digest = membership_digest(markers)
        if plan.image is None or not group.name:
            there = bool(group.publications) or self._manifest_head(group) is not None
            return Decision(plan.statuses, "withdraw" if there else "keep", digest=digest)
        target = self.manifest_key(group.name)
        published = convention.status_published(target)
        statuses = {s.key: published for s in plan.image.snapshots}
        values = {k: v for m in members for k, v in m.settings.image.items()}  # type: ignore[union-attr]
        imports = importing.wanted(self.settings.import_images, values)
        image_name = importing.image_name_of(group.name, values)
        head = self._manifest_head(group)
        if resign or head is None or head.digest != digest:
            return Decision(statuses, "publish", plan.image, head, digest, imports, image_name)
        hints = [p for p in group.publications if p.digest == digest]
        tidy = len(group.publications) != 1 or len(hints) != 1
        action, signed = ("tidy" if tidy else "keep"), None
        if imports:
            tags = self.store.tags(target) or {}
            if not self._imported(tags, image_name, statuses):
                action, signed = "import", _signed_at(tags)
        return Decision(statuses, action, plan.image, head, digest, imports, image_name, signed)

    def _manifest_head(self, group: Group) -> ManifestHead | None:
        """The manifest as it is, whatever the hints say: a withdrawal can delete a
        publisher's hint after the publisher wrote it and before its manifest lands, and
        a tidy can delete a renewal's new hint the same way."""
        if not group.name:
            return None
        return self.store.manifest_head(self.manifest_key(group.name))

    def fenced(self, group: Group) -> ManifestHead | None:
        """The manifest, only if it is there and built from the current records."""
        digest = membership_digest(group.markers)
        if not any(p.digest == digest for p in group.publications) or group.duplicated():
            return None
        head = self.store.manifest_head(self.manifest_key(group.name))
        return head if head is not None and head.digest == digest else None

    def manifest_key(self, name: str) -> str:
        return manifest_key(self.settings.manifest_prefix, name)

    def _carry_out(self, group: Group, decision: Decision) -> bool | None:
        """Publish, withdraw or tidy as decided; whether anything was written (None: a
        concurrent publication won)."""
        if decision.action == "publish":
            assert decision.image is not None
            published = self._publish(group, decision.image, decision.digest, decision.head)
            if published is None:
                return None
            decision.statuses.update(published)
            done = convention.status_published(self.manifest_key(group.name))
            if decision.imports and set(published.values()) == {done}:
                return self._import(group, decision)  # in the invocation that published it
            return True
        if decision.action == "import":
            self._tidy(group, decision.head, decision.digest)
            return self._import(group, decision)
        if decision.action == "withdraw":
            self._withdraw(group)
            return True
        if decision.action == "tidy":
            self._tidy(group, decision.head, decision.digest)
            return True
        return False

    def _publish(
        self, group: Group, image: ImageSpec, digest: str, head: ManifestHead | None
    ) -> dict[str, str] | None:
        """Sign, write the publication hint, then the manifest (conditionally: of workers
        publishing at once exactly one writes), then drop superseded hints. Returns the
        statuses it implies, or None when another worker's manifest won."""
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
        if head is not None:  # the user's own tags on the manifest (omi:renew)
            current = self.store.tags(target) or {}
            kept = {k: v for k, v in current.items() if not signing.is_url_tag(k)}
            if head.digest != digest:  # an import of earlier content is not this content's
                kept = {k: v for k, v in kept.items() if k not in importing.MANIFEST_TAGS}
        try:
            tags = kept | signing.url_to_tags(
                sign(target), expires_at, convention.MAX_TAGS - len(kept)
            )
        except signing.UrlDoesNotFit:
            logger.error(LONG_TERM_KEYS_NEEDED, extra={"omi": image.name})
            self._withdraw(group)
            return {s.key: convention.status_error(LONG_TERM_KEYS_NEEDED) for s in image.snapshots}
        body = manifest.render(manifest.build(image, {s.key: sign(s.key) for s in image.snapshots}))
        hint = self.store.publication_key(image.name, digest, expires_at, _md5(body))
        self.store.write_publication(hint)
        if not self.store.put_manifest(target, body, tags, digest, expires_at, head):
            self._lost(target, digest, hint, _md5(body))
            return None
        for earlier in group.publications:
            if earlier.state_key != hint:
                self.store.delete_record(earlier.state_key)
        count("ManifestsPublished")
        shown = signing.format_expiry(expires_at)
        renewed = head is not None and head.digest == digest
        logger.info(
            "manifest renewed" if renewed else "manifest published",
            extra={
                "omi": image.name,
                "manifest": target,
                "snapshots": len(image.snapshots),
                "expires": shown,
            },
        )
        kind = "renewed" if renewed else "published"
        self.announce(Event(kind, image.name, bucket, target, digest, expires=shown))
        status = convention.status_published(target)
        return {s.key: status for s in image.snapshots}

    def _lost(self, target: str, digest: str, hint: str, md5: str) -> None:
        """After a conditional write lost: when the manifest that won is of the same records,
        take back this worker's hint (unless the two bodies, hence hints, are one) and leave
        the statuses to the winner. Anything else is evaluated again."""
        head = self.store.manifest_head(target)
        if head is None or head.digest != digest:
            return
        if head.etag != md5:
            self.store.delete_record(hint)
        logger.info("another worker published first", extra={"manifest": target})
        raise PublishedByAnother(target)

    def _tidy(self, group: Group, head: ManifestHead | None, digest: str) -> None:
        """The manifest is current; its hint is written if missing (a publisher that lost
        a race, or died, may have left others), and superseded hints dropped."""
        assert head is not None and head.expires is not None
        keep = self.store.publication_key(group.name, digest, head.expires, head.etag)
        if keep not in {p.state_key for p in group.publications}:
            self.store.write_publication(keep)
        for hint in group.publications:
            if hint.state_key != keep:
                self.store.delete_record(hint.state_key)

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
        if not group.publications:
            return "gone"
        for marker in group.markers:
            member = self.member(marker)
            info = self.store.head(member.key) if member is not None else None
            if member is None:
                self.evaluate(name)
                return "refreshed"
            if info is None or info.etag != marker.etag:
                self.refresh(member.key)
                return "refreshed"
        self.evaluate(name, resign=True)
        return "renewed"

    def _withdraw(self, group: Group) -> None:
        """Take down the manifest, then the hints that said it may exist: a withdrawal
        that stops half-way leaves a hint, so the next evaluation finishes it."""
        target = self.manifest_key(group.name)
        pending = importing.pending_image(self.store.tags(target) or {})
        if pending:
            logger.warning(
                f"manifest withdrawn while image {pending} is still importing from it",
                extra={"omi": group.name, "manifest": target, "image": pending},
            )
        self.store.delete_manifest(target)
        for hint in group.publications:
            self.store.delete_record(hint.state_key)
        count("ManifestsWithdrawn")
        logger.info("manifest withdrawn", extra={"omi": group.name, "manifest": target})
        digest = group.publications[0].digest if group.publications else None
        self.announce(Event("withdrawn", group.name, self.settings.bucket, target, digest, pending))

    def _write_statuses(
        self, group: Group, statuses: dict[str, str], last: str | None
    ) -> tuple[set[str], set[str]]:
        """Write each status that differs, merged into tags read just before, ``last``'s
        last. A status is never written on a member whose user tags no longer match its
        record: it moved, or is about to, and its own processing decides it. Returns
        those members, and the members whose status was written."""
        recorded = self._recorded_tags(group)
        drifted, wrote, errors = set(), set(), []
        for key in sorted(statuses, key=lambda k: (k == last, k)):
            status = statuses[key]

            def unchanged(tags: dict[str, str], key: str = key) -> bool:
                return _as_recorded(tags, recorded.get(key))

            outcome, before = self.store.set_tag(key, convention.STATUS, status, unchanged)
            if outcome == "moved":
                drifted.add(key)
            elif outcome == "full":
                logger.warning(
                    "status not written: the object already has 10 tags",
                    extra={"key": key, "status": status},
                )
            elif outcome == "written":
                wrote.add(key)
                self._wrote(key, {**(before or {}), convention.STATUS: status})
                extra = {"key": key, "status": status}
                if not _announced(status):  # the OMI's own event says it
                    extra["change"] = f"{key}: {status}"
                logger.info("status written", extra=extra)
                if status.startswith("error:"):
                    count("SnapshotErrors")
                    errors += [] if _announced(status) else [status]
        if errors:
            reason = sorted(errors)[0].removeprefix("error: ")
            rejected = Event("rejected", group.name, self.settings.bucket, reason=reason)
            self.announce(rejected, lines=False)  # each snapshot's error line says it
        return drifted, wrote

    def _recorded_tags(self, group: Group) -> dict[str, str]:
        """Each member's user tags (their hash) as its record says."""
        recorded = {}
        for marker in group.markers:
            member = self.member(marker)
            if member is not None:
                recorded[member.key] = marker.tags
        return recorded

    def _wrote(self, key: str, tags: dict[str, str]) -> None:
        """Remember the tag set this process wrote last, to know its echo by one read."""
        with CACHE_LOCK:
            self.written[key] = _tags_digest(tags)
            self.written.move_to_end(key)
            while len(self.written) > KNOWN_RECORDS:
                self.written.popitem(last=False)

    # --- import into OUTSCALE (spec section 9; docs/import.md) ------------------------

    def announce(self, event: Event, lines: bool = True) -> None:
        if self.announcer is None:
            self.announcer = Announcer(self.settings.event_bus)
        self.announcer.announce([event], lines)

    def _importer(self) -> importing.Importer:
        if self.outscale is None:
            self.outscale = outscale.connect(self.settings.outscale_secret)
        return importing.Importer(self.outscale)

    def _publisher_importing(self, decision: Decision) -> bool:
        """The manifest was signed moments ago: its publisher is starting the import (a
        duplicate event must not send a second CreateImage meanwhile)."""
        return decision.signed is not None and self.clock() - decision.signed < IMPORT_LEASE

    def _imported(self, tags: dict[str, str], image_name: str, statuses: dict[str, str]) -> bool:
        """Whether the published manifest's ``tags`` record its import (``_publish`` drops
        image tags with a new content, so they are this content's); if so, ``statuses``
        become the import's. ``decide`` reads the tags only for an OMI that is imported."""
        state, image_id = tags.get(importing.IMAGE_STATE_TAG), tags.get(importing.IMAGE_ID_TAG)
        if state is None or (state != importing.ERROR and not image_id):
            return False
        status = self._import_status(state, image_id, image_name)
        statuses.update(dict.fromkeys(statuses, status))
        return True

    def _import_status(self, state: str, image_id: str | None, image_name: str) -> str:
        """Every snapshot's status, from the manifest's two tags; a failed image's
        StateComment is read once per process (it never changes)."""
        comment = ""
        if state == importing.FAILED and image_id:
            if image_id not in self.import_reasons:
                followed = self._importer().follow([image_id])[image_id]
                self.import_reasons[image_id] = followed.comment
            comment = self.import_reasons[image_id]
        elif state == importing.ERROR:
            comment = importing.refusal(image_name)
        found = importing.ImportState("", "", image_id, image_name, state, comment)
        return importing.snapshot_status(found)

    def _import(self, group: Group, decision: Decision) -> bool | None:
        """Start the import of the published content, or find it started (``Importer.start``
        sends one CreateImage per (OMI, digest) whatever the concurrency and crashes), and
        record it on the manifest. None: the manifest changed meanwhile (look again)."""
        target = self.manifest_key(group.name)
        seen = self.store.tags(target) or {}
        url, signed = signing.url_from_tags(seen), _signed_at(seen)
        head = self.store.manifest_head(target)  # after the tags: they are its, or older
        if url is None or signed is None or head is None or head.digest != decision.digest:
            return None
        if not self._imported(seen, decision.image_name, decision.statuses):
            claim = self._import_key(group.name, decision.digest)
            self.store.write_publication(claim)  # before CreateImage: the check finds it
            state = self._importer().start(
                group.name, decision.image_name, decision.digest, target, url, signed
            )
            if state.state == importing.FAILED and state.image_id:
                self.import_reasons[state.image_id] = state.comment
            if not self._record_import(target, seen, state):
                return None
            if state.state != importing.PENDING:
                self.store.delete_record(claim)
            status = self._import_status(state.state, state.image_id, decision.image_name)
            decision.statuses.update(dict.fromkeys(decision.statuses, status))
        return True

    def _record_import(self, target: str, seen: dict[str, str], state) -> bool:
        """The image id, then its state, on the manifest whose URL tags were ``seen`` (a
        manifest published since is left alone); the event when the state changed."""

        def same_manifest(tags: dict[str, str]) -> bool:
            return _url_tags(tags) == _url_tags(seen)

        outcome = "unchanged"
        for name, value in (
            (importing.IMAGE_ID_TAG, state.image_id),
            (importing.IMAGE_STATE_TAG, state.state),
        ):
            outcome, _ = self.store.set_tag(target, name, value, same_manifest)
            if outcome in ("moved", "missing"):
                return False
            if outcome == "full":
                logger.warning(
                    "the import is not recorded on the manifest: it has 10 tags already "
                    "(remove omi:renew from it)",
                    extra={"omi": state.omi, "manifest": target, "image": state.image_id},
                )
                return True
        if outcome == "written":
            self._announce_import(state, target)
        return True

    def _announce_import(self, state: importing.ImportState, target: str) -> None:
        event = Event(
            importing.event_kind(state),
            state.omi,
            self.settings.bucket,
            target,
            state.digest or None,
            state.image_id,
            state.state,
            state.comment or None,
        )
        self.announce(event)

    def _import_key(self, name: str, digest: str) -> str:
        """An empty record per import under way, written before CreateImage and deleted
        once it ended: the short schedule lists them (one request when none is under way)
        instead of reading every manifest's tags."""
        return f"{self.settings.state_prefix}imports/{group_segment(name)}@{digest}"

    def follow_imports(self, name: str | None = None) -> int:
        """The short schedule (and ``run``'s loop, and ``import NAME``): the imports under way
        (or those of ``name``), from one listing; one ReadImages for the pending ones; each
        that ended gets its manifest's state tag, its event and its snapshots' statuses,
        and its record goes. An import whose publisher died before recording it is started
        (or found) once its lease is over. Returns how many are still pending."""
        prefix = f"{self.settings.state_prefix}imports/"
        pending: dict[str, tuple[str, str]] = {}
        for key, _, written in self.store.list_etags(prefix):
            segment, digest = key[len(prefix) :].split("@")
            omi = group_from_segment(segment)
            if name is not None and omi != name:
                continue
            target = self.manifest_key(omi)
            tags = self.store.tags(target) or {}
            head = self.store.manifest_head(target)
            state, image_id = tags.get(importing.IMAGE_STATE_TAG), tags.get(importing.IMAGE_ID_TAG)
            if head is None or head.digest != digest or (state and state != importing.PENDING):
                self.store.delete_record(key)  # ended, or this content is published no more
            elif state == importing.PENDING and image_id:
                pending[image_id] = (key, omi)
            elif self.clock() - written >= IMPORT_LEASE:
                logger.info("finishing an import its publisher left", extra={"omi": omi})
                self.evaluate(omi)
        states = self._importer().follow(pending) if pending else {}
        still = 0
        for image_id, (key, omi) in sorted(pending.items()):
            state = replace(states[image_id], omi=omi)
            if state.state == importing.PENDING:
                still += 1
                continue
            if state.state == importing.FAILED:
                self.import_reasons[image_id] = state.comment
            self._settle_import(state)
            self.store.delete_record(key)
        return still

    def _settle_import(self, state: importing.ImportState) -> None:
        """An import ended: the manifest that records it says so (one that names another
        image, or is gone, is left alone), then its OMI's statuses follow from it."""
        target = self.manifest_key(state.omi)

        def names_it(tags: dict[str, str]) -> bool:
            return tags.get(importing.IMAGE_ID_TAG) == state.image_id

        outcome, _ = self.store.set_tag(target, importing.IMAGE_STATE_TAG, state.state, names_it)
        if outcome == "written":
            self._announce_import(state, target)
            self.evaluate(state.omi)
        elif outcome == "moved":
            logger.info(
                "an import ended for content no longer published",
                extra={"omi": state.omi, "image": state.image_id, "state": state.state},
            )


def _members(group: Group) -> frozenset[tuple[str, str]]:
    return frozenset((m.state_key, m.version) for m in group.markers)


def _tags_digest(tags: dict[str, str]) -> str:
    return tags_hash(dict(tags))


def _as_recorded(tags: dict[str, str], recorded: str | None) -> bool:
    """Whether an object's user tags are those its record (``recorded``: their hash) was
    made from; otherwise its own processing is still to come."""
    return tags_hash(convention.user_tags(tags)) == recorded


def _shows(tags: dict[str, str] | None, status: str | None, recorded: str | None) -> bool:
    """Whether an object shows the status an evaluation would write on it, or would
    not have it written: the object is gone, its user tags moved on from its record (its
    own processing decides), or it has 10 tags already."""
    if tags is None or tags.get(convention.STATUS) == status:
        return True
    if not _as_recorded(tags, recorded):
        return True
    return convention.STATUS not in tags and len(tags) >= convention.MAX_TAGS


def _url_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if signing.is_url_tag(k)}


def _signed_at(tags: dict[str, str]) -> datetime | None:
    """When the manifest's URL was signed: just before the manifest was written."""
    stamp = tags.get("X-Amz-Date")
    return datetime.strptime(stamp, EXPIRES_FORMAT).replace(tzinfo=UTC) if stamp else None


def _announced(status: str) -> bool:
    """A status whose change the OMI's own event line says (published, or the import's)."""
    return status.startswith("published:") or importing.is_import_status(status)


def _md5(body: bytes) -> str:
    """The ETag S3 gives an object written in one PutObject (without SSE-KMS)."""
    return hashlib.md5(body, usedforsecurity=False).hexdigest()
