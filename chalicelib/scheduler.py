"""The scheduled pass: re-sign manifests before their URLs expire, and repair what events missed.

Its cost follows the work, not the bucket: due manifests come from a sorted
listing that stops at the first one not due, and reconciling compares listings
(one request per 1,000 objects each) before touching any object. Tags are not
in listings: the members of OMIs that are waiting or in error have theirs read
every pass (that is where a fix by retagging is expected); every other object's
are read once every ``tag_rounds`` passes, a slice at a time.

A pass over a bucket where nothing changed reads and writes nothing else.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial

from . import convention
from .observability import count, logger
from .pipeline import Pipeline, Postponed, current_markers
from .store import (
    Group,
    Listed,
    Marker,
    ObjectInfo,
    ObjectState,
    key_hash,
    listing_state,
    membership_digest,
)

WORKERS = 8
SAFETY_MARGIN = 30.0  # seconds left when the pass stops starting new work (at most)
MARGIN_SHARE = 0.1  # ... or this share of the time it started with, if that is less
OUTCOME_METRICS = {
    "renewed": "ManifestsRenewed",
    "refreshed": "ManifestsRepublishedOrWithdrawn",
    "reconciled": "SnapshotsReconciled",
    "failed": "PassFailures",
}

TimeLeft = Callable[[], float]
Step = tuple[Callable[[], object], str, str]


@dataclass
class PassReport:
    outcomes: Counter[str] = field(default_factory=Counter)
    unfinished: bool = False

    @property
    def failed(self) -> int:
        return self.outcomes["failed"]

    def as_dict(self) -> dict[str, object]:
        return {
            **{k: self.outcomes[k] for k in sorted(self.outcomes)},
            "unfinished": self.unfinished,
        }


def _forever() -> float:
    return float("inf")


def in_slice(hashed: str, slot: int, rounds: int) -> bool:
    """Whether this pass reads the tags of the object with this key hash."""
    return rounds <= 1 or int(hashed[:8], 16) % rounds == slot % rounds


class Pass:
    """One re-sign and reconcile pass over the bucket."""

    def __init__(
        self,
        pipeline: Pipeline,
        renew_before: int,
        time_left: TimeLeft = _forever,
        workers: int = WORKERS,
        check_tags: bool = False,
    ) -> None:
        self.pipeline = replace(pipeline, time_left=time_left)
        self.store = pipeline.store
        self.renew_before = renew_before
        self.time_left = time_left
        self.workers = workers
        settings = pipeline.settings
        self.tag_rounds = 1 if check_tags else settings.tag_rounds
        self.report = PassReport()
        self.margin = SAFETY_MARGIN
        self.now = pipeline.clock()
        self.slot = int(self.now.timestamp() // settings.pass_interval)

    def run(self) -> PassReport:
        started = time.monotonic()
        self.margin = min(SAFETY_MARGIN, self.time_left() * MARGIN_SHARE)
        for find_work in (self._due_work, self._object_work, self._group_work):
            if self.report.unfinished:
                break
            try:
                work = find_work()
            except Exception:  # a listing failed: the other phases may still succeed
                logger.exception("pass phase failed")
                self.report.outcomes["failed"] += 1
                continue
            self._run_all(work)
        for outcome, metric in OUTCOME_METRICS.items():
            if self.report.outcomes[outcome]:
                count(metric, self.report.outcomes[outcome])
        logger.info(
            "pass finished",
            extra={**self.report.as_dict(), "seconds": round(time.monotonic() - started, 3)},
        )
        return self.report

    def _run_all(self, steps: Iterable[Step]) -> None:
        """Run (step, outcome, label) on a bounded pool; one failure does not stop the rest."""

        def guarded(item: Step) -> str:
            step, outcome, label = item
            if self.time_left() < self.margin:
                self.report.unfinished = True
                return "postponed"
            try:
                found = step()
            except Postponed as postponed:
                logger.info("postponed to the next pass", extra={"reason": str(postponed)})
                self.report.unfinished = True
                return "postponed"
            except Exception:
                logger.exception("pass step failed", extra={"item": label})
                return "failed"
            return found if isinstance(found, str) else outcome

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for outcome in pool.map(guarded, steps):
                self.report.outcomes[outcome] += 1

    # --- re-signing ------------------------------------------------------------------

    def _due_work(self) -> list[Step]:
        cutoff = self.now + timedelta(seconds=self.renew_before)
        return [
            (partial(self._renew_one, marker, name, digest), "renewed", name)
            for marker, name, digest in self.store.due(cutoff)
        ]

    def _renew_one(self, expiry_marker: str, name: str, digest: str) -> str:
        group = self.store.read_group(name)
        if group.published is None or group.published.digest != digest:
            # Left by a withdrawal or a republication that did not finish: the group's
            # own records decide, and the group phase drops the stale entry.
            self.pipeline.evaluate(name)
            return "stale"
        target = self.pipeline.manifest_key(name)
        if (self.store.tags(target) or {}).get(convention.RENEW) == "false":
            return "not renewed: omi:renew=false"
        return self.pipeline.renew(name)

    # --- objects ---------------------------------------------------------------------

    def _object_work(self) -> list[Step]:
        """Objects whose records do not match the bucket, found from listings; and, for a
        slice of the rest, tag changes that no event reported."""
        states = self.store.all_object_states()
        groups = self.store.list_groups()
        by_hash: dict[str, list[Marker]] = defaultdict(list)
        for group in groups.values():
            for marker in group.markers:
                by_hash[marker.key_hash].append(marker)
        unpublished = {name for name, group in groups.items() if group.published is None}
        work: list[Step] = []
        present: set[str] = set()
        for listed in self.store.list_objects(self.pipeline.settings.reserved_prefixes):
            hashed = key_hash(listed.key)
            present.add(hashed)
            state = states.get(hashed, ObjectState(hashed))
            markers = by_hash.get(hashed, [])
            refresh = partial(self.pipeline.refresh, listed.key)
            if state.empty and not markers:
                if convention.candidate_by_name(listed.key):
                    work.append((refresh, "reconciled", listed.key))
                elif in_slice(hashed, self.slot, self.tag_rounds):
                    work.append((partial(self._check_tags, listed, None), "checked", listed.key))
            elif not _consistent(listed, state, markers):
                # Records its state does not account for are cleared too (left by an
                # invocation that died), even if the object's own state says done.
                suspect = frozenset(marker.group for marker in markers) | state.groups
                work.append((partial(refresh, suspect=suspect), "reconciled", listed.key))
            elif next(iter(state.groups)) not in unpublished and in_slice(
                hashed, self.slot, self.tag_rounds
            ):
                work.append((partial(self._check_tags, listed, state), "checked", listed.key))
        for hashed in (states.keys() | by_hash.keys()) - present:
            state = states.get(hashed, ObjectState(hashed))
            forget = partial(self.pipeline.forget, hashed, state, by_hash.get(hashed, []))
            work.append((forget, "reconciled", hashed))
        return work

    def _check_tags(self, listed: Listed, state: ObjectState | None) -> str:
        """Read one object's tags (its ETag and size are the listing's): refresh it if they
        changed since it was processed, or if its status is not what its OMI says."""
        key = listed.key
        tags = self.store.tags(key)
        if tags is None:  # gone since the listing: the next pass sees it
            return "checked"
        facts = self.pipeline.facts_from(ObjectInfo(key, listed.etag, listed.size), tags)
        if state is None:
            if facts.group is None:
                return "checked"
            self.pipeline.refresh(key)
            return "reconciled"
        if not facts.finished_in(state):
            self.pipeline.refresh(key)
            return "reconciled"
        expected = convention.status_published(self.pipeline.manifest_key(facts.group or ""))
        if facts.tags.get(convention.STATUS) != expected:
            self.pipeline.evaluate(facts.group or "")
            return "reconciled"
        return "checked"

    # --- OMIs ------------------------------------------------------------------------

    def _group_work(self) -> list[Step]:
        """OMIs to evaluate: every one that is waiting or in error (their statuses and tags
        are checked each pass), published ones whose records disagree with the publication
        or whose manifest is missing; expiry entries and manifests that no publication
        accounts for."""
        settings = self.pipeline.settings
        # Manifests and expiry entries are listed before the records: a publication writes
        # its records first, so one that lands between the listings is seen as owned.
        manifests = {key for key, _ in self.store.list_keys(settings.manifest_prefix)}
        entries = {key for key, _ in self.store.list_keys(f"{settings.state_prefix}expiry/")}
        groups = self.store.list_groups()
        owners = {self.pipeline.manifest_key(name): name for name in groups}
        expected: dict[str, str] = {}
        work: list[Step] = []
        for name, group in groups.items():
            if self._needs_evaluation(group):
                work.append((partial(self._evaluate, name), "evaluated", name))
            elif group.published is not None:
                published = group.published
                expected[self.store.expiry_key(name, published.expires, published.digest)] = name
                if self.pipeline.manifest_key(name) not in manifests:
                    work.append((partial(self.pipeline.renew, name), "refreshed", name))
        for marker, name in expected.items():
            if marker not in entries:
                work.append((partial(self.store.write_expiry, marker), "reconciled", name))
        for marker in entries - expected.keys():
            work.append((partial(self._drop_expiry, marker), "reconciled", marker))
        accounted = {self.pipeline.manifest_key(name) for name in expected.values()}
        for key in manifests - accounted:
            drop = partial(self._drop_manifest, key, owners.get(key))
            work.append((drop, "reconciled", key))
        return work

    def _drop_expiry(self, marker: str) -> str:
        """An expiry entry no publication accounts for, unless one does by now."""
        name, _ = self.store.parse_expiry(marker)
        published = self.store.read_group(name).published
        if published is not None and marker == self.store.expiry_key(
            name, published.expires, published.digest
        ):
            return "checked"
        self.store.delete_expiry(marker)
        return "reconciled"

    def _drop_manifest(self, key: str, name: str | None) -> str:
        """A manifest no publication accounts for (a publication or withdrawal that did
        not finish): the OMI is evaluated if it may be publishable, else it goes."""
        group = self.store.read_group(name) if name is not None else None
        if group is not None and group.published is not None:
            return "checked"
        if group is not None and listing_state(current_markers(group.markers))[0] == "complete":
            self.pipeline.evaluate(group.name)
            return "reconciled"
        self.store.delete_manifest(key)
        return "reconciled"

    def _needs_evaluation(self, group: Group) -> bool:
        markers = current_markers(group.markers)
        if group.published is None or not markers or len(group.publications) > 1:
            return True
        if listing_state(markers)[0] != "complete":
            return True
        return membership_digest(markers) != group.published.digest

    def _evaluate(self, name: str) -> str:
        drifted = self.pipeline.evaluate(name)
        for key in sorted(drifted):
            self.pipeline.refresh(key)
        return "reconciled" if drifted else "evaluated"


def _consistent(listed: Listed, state: ObjectState, markers: list[Marker]) -> bool:
    """The object was processed as it now is, as far as listings can tell: filed in one
    group, finished for its current content, with one record there of that content."""
    if len(state.groups) != 1 or len(state.done) != 1 or len(markers) != 1:
        return False
    (etag, tags), marker = next(iter(state.done)), markers[0]
    return (
        etag == listed.etag
        and marker.etag == listed.etag
        and marker.tags == tags
        and marker.group in state.groups
    )
