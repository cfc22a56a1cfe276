"""The scheduled pass: re-sign manifests before their URLs expire, and repair what events missed.

Its cost follows the work, not the bucket: it compares listings (one request per
1,000 keys each: the bucket's objects, the state records, the manifests) before
touching any object. Due manifests come from the publication hints in the records'
listing, and a manifest is trusted only when the listing shows it with the ETag its
hint names, of the current records (the fence, seen from listings). Tags are not in
listings: the members of OMIs that are waiting or in error have theirs read every
pass (that is where a fix by retagging is expected); every other object's are read
once every ``tag_rounds`` passes, a slice at a time.

A pass over a bucket where nothing changed reads and writes nothing else.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial

from . import convention, importing
from .notifications import ObjectChange
from .observability import count, logger
from .pipeline import Facts, Pipeline, Postponed
from .store import (
    Filed,
    Group,
    Listed,
    Marker,
    ObjectInfo,
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
        self.settings = settings
        self.interval = timedelta(seconds=settings.pass_interval)

    def run(self) -> PassReport:
        started = time.monotonic()
        self.margin = min(SAFETY_MARGIN, self.time_left() * MARGIN_SHARE)
        for find_work in (self._group_work, self._object_work):
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

    # --- objects ---------------------------------------------------------------------

    def _object_work(self) -> list[Step]:
        """Objects whose records do not match the bucket, found from listings; and, for a
        slice of the rest, tag changes that no event reported."""
        filed = self.store.all_filed()
        groups = self.store.list_groups()
        by_hash: dict[str, list[Marker]] = defaultdict(list)
        for group in groups.values():
            for marker in group.markers:
                by_hash[marker.key_hash].append(marker)
        manifests = self._manifests()
        trusted = {name for name, group in groups.items() if self._fenced(group, manifests)}
        recent = {name for name in trusted if self._recent(groups[name], manifests)}
        work: list[Step] = []
        present: set[str] = set()
        for listed in self.store.list_objects(self.pipeline.settings.reserved_prefixes):
            hashed = key_hash(listed.key)
            present.add(hashed)
            where = filed.get(hashed, Filed())
            markers = by_hash.get(hashed, [])
            hint = ObjectChange(self.store.bucket, listed.key, "Pass", listed.etag, listed.size)
            refresh = partial(self.pipeline.reconcile, listed.key, hint)
            if not where.filings and not markers:
                if convention.candidate_by_name(listed.key):
                    work.append((refresh, "reconciled", listed.key))
                elif in_slice(hashed, self.slot, self.tag_rounds):
                    work.append((partial(self._check_tags, listed, None), "checked", listed.key))
            elif not _consistent(listed, where.groups, markers) or self.pipeline.stale_filings(
                where, markers
            ):
                work.append((refresh, "reconciled", listed.key))
            elif markers[0].group in recent or (
                markers[0].group in trusted and in_slice(hashed, self.slot, self.tag_rounds)
            ):
                check = partial(self._check_tags, listed, markers[0])
                work.append((check, "checked", listed.key))
        for hashed in (filed.keys() | by_hash.keys()) - present:
            forget = partial(
                self.pipeline.forget, hashed, filed.get(hashed, Filed()), by_hash.get(hashed, [])
            )
            work.append((forget, "reconciled", hashed))
        return work

    def _check_tags(self, listed: Listed, marker: Marker | None) -> str:
        """Read one object's tags (its ETag and size are the listing's): refresh it if they
        changed since it was recorded, or if its status is not the published one."""
        key = listed.key
        tags = self.store.tags(key)
        if tags is None:  # gone since the listing: the next pass sees it
            return "checked"
        facts = self.pipeline.facts_from(ObjectInfo(key, listed.etag, listed.size), tags)
        if marker is None:
            if facts.group is None and convention.STATUS not in tags:
                return "checked"
            self.pipeline.refresh(key)
            return "reconciled"
        if facts.group != marker.group or not facts.recorded_by(marker):
            self.pipeline.refresh(key)
            return "reconciled"
        expected = convention.status_published(self.pipeline.manifest_key(marker.group))
        status = tags.get(convention.STATUS)
        if status != expected and not self._follows_import(status, facts):
            self.pipeline.evaluate(marker.group, last=key)
            return "reconciled"
        return "checked"

    def _follows_import(self, status: str | None, facts: Facts) -> bool:
        """A member of a published OMI that is imported says how the import goes; those
        statuses are kept current by ``follow_imports``, not by the pass."""
        assert facts.settings is not None
        if not importing.wanted(self.settings.import_images, facts.settings.image):
            return False
        return status is not None and importing.is_import_status(status)

    # --- OMIs ------------------------------------------------------------------------

    def _manifests(self) -> dict[str, tuple[str, datetime]]:
        """Every manifest's ETag and when it was written."""
        return dict(
            (key, (etag, written))
            for key, etag, written in self.store.list_etags(self.settings.manifest_prefix)
        )

    def _fenced(self, group: Group, manifests: dict[str, tuple[str, datetime]]) -> bool:
        """Published as its records say, as far as listings tell: complete, one hint, of
        the current records, naming the manifest listed (by its ETag)."""
        markers = group.markers
        if group.duplicated() or listing_state(markers)[0] != "complete":
            return False
        if len(group.publications) != 1:
            return False
        (hint,) = group.publications
        listed = manifests.get(self.pipeline.manifest_key(group.name))
        return (
            hint.digest == membership_digest(markers)
            and listed is not None
            and (listed[0] == hint.etag)
        )

    def _recent(self, group: Group, manifests: dict[str, tuple[str, datetime]]) -> bool:
        """Published since about the last pass: its members' statuses changed then, and
        are read once (a status write that failed for good is found here)."""
        listed = manifests.get(self.pipeline.manifest_key(group.name))
        return listed is not None and listed[1] >= self.now - 2 * self.interval

    def _group_work(self) -> list[Step]:
        """Renewals that are due; OMIs to evaluate: every one that is waiting or in error
        (their statuses and tags are checked each pass) and every one whose manifest is not
        what its records say; manifests that no OMI accounts for."""
        # Manifests are listed before the records: a publication writes its hint first, so
        # a manifest that lands between the listings is seen as accounted for.
        manifests = self._manifests()
        groups = self.store.list_groups()
        cutoff = self.now + timedelta(seconds=self.renew_before)
        work: list[Step] = []
        for name, group in groups.items():
            due = any(hint.expires <= cutoff for hint in group.publications)
            fenced = self._fenced(group, manifests)
            if due:
                work.append((partial(self._renew_one, name, fenced), "renewed", name))
            elif not fenced and (group.markers or group.publications):
                work.append((partial(self._evaluate, name), "evaluated", name))
        owned = {self.pipeline.manifest_key(name) for name, g in groups.items() if g.publications}
        for key in manifests.keys() - owned:
            work.append((partial(self.store.delete_manifest, key), "reconciled", key))
        return work

    def _renew_one(self, name: str, fenced: bool) -> str:
        target = self.pipeline.manifest_key(name)
        if (self.store.tags(target) or {}).get(convention.RENEW) == "false":
            return "not renewed: omi:renew=false" if fenced else self._evaluate(name)
        return self.pipeline.renew(name)

    def _evaluate(self, name: str) -> str:
        drifted = self.pipeline.evaluate(name)
        for key in sorted(drifted):
            self.pipeline.refresh(key)
        return "reconciled" if drifted else "evaluated"


def _consistent(listed: Listed, filed: frozenset[str], markers: list[Marker]) -> bool:
    """The object was recorded as it now is, as far as listings can tell: filed in one
    group, with one record there, of its current content."""
    if len(filed) != 1 or len(markers) != 1:
        return False
    return markers[0].etag == listed.etag and markers[0].group in filed
