"""200 OMIs of 1-4 snapshots uploaded concurrently into the embedded server while the
pipeline delivers with several workers; beside it, the same with one worker."""

from __future__ import annotations

import contextlib
import io
import os

from chalicelib.local.delivery import chalice_handler
from chalicelib.local.load import run_load
from chalicelib.local.server import EmbeddedServer

from .pipeline_bench import PIPELINE_KEY, PROJECT, connect

OMIS = int(os.environ.get("OMI_BENCH_LOAD_OMIS", "200"))  # 200 takes over half an hour here


def scenario(server: EmbeddedServer, bucket: str, workers: int, omis: int) -> dict:
    s3, pump = connect(server, bucket, fresh=True)
    server.requests.reset()
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_load(s3, pump, chalice_handler(PROJECT), bucket, omis, workers=workers)
    assert result.problems == [], result.problems[:5]
    return {"result": result, "requests": server.requests.total(PIPELINE_KEY)}


def main() -> None:
    server = EmbeddedServer()
    server.start()
    try:
        rows = [
            ("1 worker (baseline)", scenario(server, "load-one", 1, OMIS)),
            ("4 workers", scenario(server, "load-four", 4, OMIS)),
        ]
    finally:
        server.stop()
    print(f"\n== load: {OMIS} OMIs of 1-4 snapshots, 4 concurrent uploaders (embedded server)")
    columns = ("snapshots", "seconds", "snapshots/s", "requests/snapshot")
    print(f"{'pipeline':22} " + " ".join(f"{c:>18}" for c in columns))
    for label, row in rows:
        result = row["result"]
        print(
            f"{label:22} {result.snapshots:>18} {result.seconds:>18.1f} "
            f"{result.snapshots_per_second:>18.2f} {row['requests'] / result.snapshots:>18.1f}"
        )
    print("every manifest checked: snapshots, sizes, validation, statuses")
