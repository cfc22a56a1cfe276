"""A load run: many OMIs uploaded at once by several uploaders, the pipeline delivering
with several workers; every manifest checked afterwards. Used by a test (scaled to CI)
and by ``make bench``."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .. import manifest
from .delivery import Handler, NotificationPump
from .samples import qcow2_image

GIB = 1 << 30


@dataclass(frozen=True)
class LoadResult:
    omis: int
    snapshots: int
    seconds: float
    problems: list[str]

    @property
    def snapshots_per_second(self) -> float:
        return self.snapshots / self.seconds


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
    pump: NotificationPump,
    handler: Handler,
    bucket: str,
    omis: int,
    uploaders: int = 4,
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

    started = time.perf_counter()
    uploader = threading.Thread(target=upload_all)
    uploader.start()
    pump.pump_concurrently(handler, workers, uploads_done.is_set)
    uploader.join()
    seconds = time.perf_counter() - started
    return LoadResult(omis, sum(map(len, layout.values())), seconds, check(s3, bucket, layout))


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
