"""A load run: many OMIs uploaded at once by several uploaders, the pipeline delivering
with several workers; every manifest checked afterwards. Used by a test (scaled to CI)
and by ``make bench``."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from .. import manifest
from .delivery import Handler, Pump
from .samples import qcow2_image

GIB = 1 << 30


@dataclass(frozen=True)
class LoadResult:
    omis: int
    snapshots: int
    seconds: float
    problems: list[str]
    handled_at: list[float]  # seconds from the start at which each snapshot was first handled

    @property
    def snapshots_per_second(self) -> float:
        return self.snapshots / self.seconds

    def quarter_rates(self) -> list[float]:
        """Snapshots handled per second in each quarter of the snapshots, in the order they
        were handled: flat when a filling bucket does not slow the pipeline down."""
        marks = [0.0] + [self.handled_at[len(self.handled_at) * q // 4 - 1] for q in (1, 2, 3, 4)]
        count = len(self.handled_at) / 4
        return [count / max(end - start, 1e-9) for start, end in itertools.pairwise(marks)]


def plan(omis: int, seed: int = 7) -> dict[str, list[tuple[str, int]]]:
    """OMI name -> [(key, virtual size)], 1 to 4 snapshots each."""
    rng = random.Random(seed)
    layout = {}
    for number in range(omis):
        name = f"load-{number:04d}"
        count = rng.randint(1, 4)
        layout[name] = [
            (f"{name}/sd{chr(ord('a') + disk)}.qcow2", (disk + 1) * GIB) for disk in range(count)
        ]
    return layout


def run_load(
    s3: Any,
    pump: Pump,
    handler: Handler,
    bucket: str,
    omis: int,
    uploaders: int = 8,
    workers: int = 4,
) -> LoadResult:
    """Upload concurrently while the pipeline runs; the last two snapshots of every
    multi-disk OMI land at the same moment (two uploaders released together)."""
    layout = plan(omis)
    images = {size: qcow2_image(size) for size in {GIB * n for n in range(1, 5)}}
    uploads_done = threading.Event()

    def put(key: str, size: int, count: int) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=images[size], Tagging=f"omi:snapshots={count}")

    def upload_omi(snapshots: list[tuple[str, int]]) -> None:
        count = len(snapshots)
        for key, size in snapshots[:-2]:
            put(key, size, count)
        last = snapshots[-2:]
        together = threading.Barrier(len(last))

        def at_once(key: str, size: int) -> None:
            together.wait()
            put(key, size, count)

        threads = [threading.Thread(target=at_once, args=item) for item in last]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def upload_all() -> None:
        with ThreadPoolExecutor(max_workers=uploaders) as pool:
            list(pool.map(upload_omi, layout.values()))
        uploads_done.set()

    snapshots = {key for members in layout.values() for key, _ in members}
    handled_at: list[float] = []
    lock = threading.Lock()

    def handle_and_time(event: dict[str, Any]) -> None:
        handler(event)
        for record in event["Records"]:
            key = unquote_plus(record["s3"]["object"]["key"])
            if record["eventName"].startswith("ObjectCreated") and key in snapshots:
                with lock:
                    snapshots.discard(key)
                    handled_at.append(time.perf_counter() - started)

    started = time.perf_counter()
    uploader = threading.Thread(target=upload_all)
    uploader.start()
    pump.pump_concurrently(handle_and_time, workers, uploads_done.is_set)
    uploader.join()
    seconds = time.perf_counter() - started
    count = sum(map(len, layout.values()))
    return LoadResult(omis, count, seconds, check(s3, bucket, layout), sorted(handled_at))


def check(s3: Any, bucket: str, layout: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Every manifest as it should be, every snapshot published."""
    problems = []
    for name, snapshots in layout.items():
        try:
            body = s3.get_object(Bucket=bucket, Key=f"manifests/{name}.json")["Body"].read()
        except s3.exceptions.NoSuchKey:
            problems.append(f"{name}: no manifest")
            continue
        document = json.loads(body)
        problems += [f"{name}: {p}" for p in manifest.validate(document)]
        found = [(s["Filename"], s["Size"]) for s in document["Image"]["Snapshots"]]
        if found != snapshots:
            problems.append(f"{name}: snapshots {found}")
        for key, _ in snapshots:
            tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
            status = {t["Key"]: t["Value"] for t in tags}.get("omi:status")
            if status != f"published: manifests/{name}.json":
                problems.append(f"{key}: {status}")
    return problems
