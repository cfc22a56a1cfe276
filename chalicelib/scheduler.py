"""The scheduled pass: re-sign manifests before their URLs expire, and repair what events missed.

Its cost follows the work, not the bucket: due manifests come from a sorted
listing that stops at the first one not due, and reconciling compares two
listings (one request per 1,000 objects each) before touching any object.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial

from . import convention
from .inspection import declared_format
from .observability import count, logger
from .pipeline import Pipeline
from .store import Expiry, Marker, key_hash, listing_state, membership_digest

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


@dataclass
class PassReport:
    outcomes: Counter[str] = field(default_factory=Counter)
    unfinished: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            **{k: self.outcomes[k] for k in sorted(self.outcomes)},
            "unfinished": self.unfinished,
        }


def _forever() -> float:
    return float("inf")


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
        self.pipeline = pipeline
        self.store = pipeline.store
        self.renew_before = renew_before
        self.time_left = time_left
        self.workers = workers
        self.check_tags = check_tags
        self.report = PassReport()
        self.margin = SAFETY_MARGIN

    def run(self) -> PassReport:
        started = time.monotonic()
        self.margin = min(SAFETY_MARGIN, self.time_left() * MARGIN_SHARE)
        cutoff = self.pipeline.clock() + timedelta(seconds=self.renew_before)
        phases = (
            lambda: [
                (partial(self._renew_one, marker, name), "renewed", name)
                for marker, name in self.store.due(cutoff)
            ],
            self._object_work,
            self._group_work,
        )
        for find_work in phases:
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

    def _run_all(self, steps: Iterable[tuple[Callable[[], object], str, str]]) -> None:
        """Run (step, outcome, label) on a bounded pool; one failure does not stop the rest."""

        def guarded(item: tuple[Callable[[], object], str, str]) -> str:
            step, outcome, label = item
            if self.time_left() < self.margin:
                self.report.unfinished = True
                return "postponed"
            try:
                found = step()
            except Exception:
                logger.exception("pass step failed", extra={"item": label})
                return "failed"
            return found if isinstance(found, str) else outcome

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for outcome in pool.map(guarded, steps):
                self.report.outcomes[outcome] += 1

    def _renew_one(self, expiry_marker: str, name: str) -> str:
        published = self.store.read_published(name)
        if published is None or published.get("expiry_marker") != expiry_marker:
            # Left by a withdrawal, a race or a publication that failed half-way:
            # drop it, and let the OMI's own state decide.
            self.store.delete_expiry(expiry_marker)
            self.pipeline.evaluate(name)
            return "stale"
        if (self.store.tags(published["manifest"]) or {}).get(convention.RENEW) == "false":
            return "not renewed: omi:renew=false"
        return self.pipeline.renew(name)

    def _object_work(self) -> list[tuple[Callable[[], object], str, str]]:
        """Objects whose state does not match the bucket, found from listings alone."""
        markers = self.store.list_all_markers()
        by_hash: dict[str, list[Marker]] = defaultdict(list)
        by_group: dict[str, list[Marker]] = defaultdict(list)
        for marker in markers:
            by_hash[marker.key_hash].append(marker)
            by_group[marker.group].append(marker)
        indexed = self.store.list_index_hashes()
        work: list[tuple[Callable[[], object], str, str]] = []
        present: set[str] = set()
        for listed in self.store.list_objects(self.pipeline.settings.reserved_prefixes):
            hashed = key_hash(listed.key)
            present.add(hashed)
            found = by_hash.get(hashed, [])
            refresh = partial(self.pipeline.refresh, listed.key)
            if not found and declared_format(listed.key) is not None:
                work.append((refresh, "reconciled", listed.key))
            elif found and (
                len(found) > 1 or found[0].etag != listed.etag or hashed not in indexed
            ):
                # Changed without an event, or processing that did not finish.
                work.append((partial(refresh, force=True), "reconciled", listed.key))
            elif self.check_tags:
                work.append((refresh, "checked", listed.key))
        for hashed, found in by_hash.items():
            if hashed not in present:
                for marker in found:
                    work.append((partial(self.pipeline.forget, marker), "reconciled", marker.group))
        for hashed in indexed - present - by_hash.keys():
            self.store.delete_index_hash(hashed)
            self.report.outcomes["orphan state removed"] += 1
        return work

    def _group_work(self) -> list[tuple[Callable[[], object], str, str]]:
        """OMIs published when they should not be, or not as their members now are;
        listed after the objects were repaired."""
        by_group: dict[str, list[Marker]] = defaultdict(list)
        for marker in self.store.list_all_markers():
            by_group[marker.group].append(marker)
        published: dict[str, list[Expiry]] = defaultdict(list)
        for expiry in self.store.list_expiry():
            published[expiry.group].append(expiry)
        work: list[tuple[Callable[[], object], str, str]] = []
        for group in by_group.keys() | published.keys():
            current = self._current_digest(by_group.get(group, []))
            entries = published.get(group, [])
            if current is None and not entries:
                continue
            if current is not None and [e.digest for e in entries] == [current]:
                continue
            stale = [e.state_key for e in entries if e.digest != current]
            work.append((partial(self._repair_group, group, stale), "reconciled", group))
        return work

    def _repair_group(self, group: str, stale_expiry: list[str]) -> None:
        self.pipeline.evaluate(group)
        for key in stale_expiry:
            self.store.delete_expiry(key)

    @staticmethod
    def _current_digest(markers: list[Marker]) -> str | None:
        """The digest a publication of these members would carry; None if not publishable."""
        if listing_state(markers)[0] != "complete":
            return None
        return membership_digest([(marker.key_hash, marker.etag) for marker in markers])
