"""The scheduled pass: re-sign manifests before their URLs expire, and repair what events missed.

Its cost follows the work, not the bucket: due manifests come from a sorted
listing that stops at the first one not due, and reconciling compares two
listings (one request per 1,000 objects each) before touching any object.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from .inspection import declared_format
from .observability import count, logger
from .pipeline import Pipeline
from .store import key_hash

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
        self._run_all(self._renew_one, list(self.store.due(cutoff)))
        if not self.report.unfinished:
            self._run_all(self._refresh_one, self._reconcile_work())
        for outcome, metric in OUTCOME_METRICS.items():
            if self.report.outcomes[outcome]:
                count(metric, self.report.outcomes[outcome])
        logger.info(
            "pass finished",
            extra={**self.report.as_dict(), "seconds": round(time.monotonic() - started, 3)},
        )
        return self.report

    def _run_all(self, work: Callable[..., str], items: Iterable[tuple]) -> None:
        """Run ``work`` over ``items`` on a bounded pool; one failure does not stop the rest."""

        def guarded(item: tuple) -> str:
            if self.time_left() < self.margin:
                self.report.unfinished = True
                return "postponed"
            try:
                return work(*item)
            except Exception:
                logger.exception("pass step failed", extra={"item": str(item[-1])})
                return "failed"

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for outcome in pool.map(guarded, items):
                if outcome:
                    self.report.outcomes[outcome] += 1

    def _renew_one(self, expiry_marker: str, name: str) -> str:
        published = self.store.read_published(name)
        if published is None or published.get("expiry_marker") != expiry_marker:
            self.store.delete_expiry(expiry_marker)  # left by a withdrawal or a race
            return "stale"
        if (self.store.tags(published["manifest"]) or {}).get("omi:renew") == "false":
            return "not renewed: omi:renew=false"
        return self.pipeline.renew(name)

    def _refresh_one(self, key: str, outcome: str) -> str:
        self.pipeline.refresh(key)
        return outcome

    def _reconcile_work(self) -> list[tuple[str, str]]:
        """Snapshots whose state does not match the bucket, from listings alone."""
        recorded = {marker.key_hash: marker for marker in self.store.list_all_markers()}
        work: list[tuple[str, str]] = []
        present: set[str] = set()
        for listed in self.store.list_objects(self.pipeline.settings.reserved_prefixes):
            hashed = key_hash(listed.key)
            present.add(hashed)
            marker = recorded.get(hashed)
            unrecorded = marker is None and declared_format(listed.key) is not None
            if unrecorded or (marker is not None and marker.etag != listed.etag):
                work.append((listed.key, "reconciled"))
            elif self.check_tags:
                work.append((listed.key, "checked"))
        for hashed, marker in recorded.items():
            if hashed not in present:
                member = self.store.read_member(marker.state_key)
                if member is not None:
                    work.append((member.key, "reconciled"))
        for hashed in self.store.list_index_hashes() - present - recorded.keys():
            self.store.delete_index_hash(hashed)
            self.report.outcomes["orphan state removed"] += 1
        return work
