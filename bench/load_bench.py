"""``omi-manifest run`` under load: 200 OMIs of 1-4 snapshots (tags set at upload) from
8 uploaders into the embedded server, the pipeline delivering with 1 and 4 workers;
every manifest checked afterwards. Beside it, in the same run, the baseline: moto's
own delivery (bucket notifications through its SQS queue, the pipeline's own record
and manifest events included) on 40 OMIs, and the cost of one small listing as the
bucket fills, moto's listing against the embedded server's sorted index."""

from __future__ import annotations

import contextlib
import io
import os
import time

import boto3

from chalicelib import runtime
from chalicelib.local.delivery import EmbeddedPump, chalice_handler
from chalicelib.local.load import LoadResult, run_load
from chalicelib.local.server import EmbeddedServer

from .pipeline_bench import PIPELINE_KEY, PROJECT, REGION, USER_KEY, connect

OMIS = int(os.environ.get("OMI_BENCH_LOAD_OMIS", "200"))
SMALL = int(os.environ.get("OMI_BENCH_LOAD_SMALL", "40"))
LISTED_SIZES = (1_000, 5_000)


def scenario(server: EmbeddedServer, bucket: str, omis: int, workers: int, mine: bool) -> dict:
    """One load run; ``mine``: the embedded server's delivery (as ``run``), else moto's."""
    s3, pump = connect(server, bucket, fresh=True)
    if mine:
        server.skip_events_under(bucket, runtime.pipeline().settings.reserved_prefixes)
        pump = EmbeddedPump(server.deliver_in_process(bucket))
    server.requests.reset()
    handler = chalice_handler(PROJECT)
    spent = [0.0]

    def timed(event: dict) -> None:
        started = time.perf_counter()
        try:
            handler(event)
        finally:
            spent[0] += time.perf_counter() - started

    with contextlib.redirect_stdout(io.StringIO()):
        result = run_load(s3, pump, timed, bucket, omis, uploaders=8, workers=workers)
    assert result.problems == [], result.problems[:5]
    return {
        "result": result,
        "requests": server.requests.total(PIPELINE_KEY),
        "handler": spent[0],
        "served": server.requests.seconds[PIPELINE_KEY],
    }


def listing_cost(server: EmbeddedServer, indexed: bool) -> list[float]:
    """Milliseconds per ListObjectsV2 of a 3-key prefix, in buckets of ``LISTED_SIZES`` keys."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.s3.utils import _VersionedKeyStore

    s3 = boto3.Session(
        aws_access_key_id=USER_KEY, aws_secret_access_key="user", region_name=REGION
    ).client("s3", endpoint_url=server.url)
    costs = []
    for size in LISTED_SIZES:
        bucket = f"listing-{'indexed' if indexed else 'moto'}-{size}"
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        if not indexed:  # moto's own store, before any key is in it
            s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[bucket].keys = _VersionedKeyStore()
        for number in range(size):
            s3.put_object(Bucket=bucket, Key=f".omi-state/objects/{number:05d}/x", Body=b"")
        started, rounds = time.perf_counter(), 50
        for number in range(rounds):
            s3.list_objects_v2(Bucket=bucket, Prefix=f".omi-state/objects/{number * 7:05d}/")
        costs.append((time.perf_counter() - started) / rounds * 1000)
    return costs


def main() -> None:
    server = EmbeddedServer()
    server.start()
    load = os.getloadavg()[0]
    try:
        rows = [
            (f"moto's delivery, {SMALL} OMIs", scenario(server, "load-moto", SMALL, 1, False)),
            (f"embedded, {SMALL} OMIs", scenario(server, "load-small", SMALL, 1, True)),
            (f"embedded, {OMIS} OMIs", scenario(server, "load-one", OMIS, 1, True)),
            (f"embedded, {OMIS} OMIs, 4 workers", scenario(server, "load-four", OMIS, 4, True)),
        ]
        listings = {"moto": listing_cost(server, False), "indexed": listing_cost(server, True)}
    finally:
        server.stop()
    print(f"\n== load: OMIs of 1-4 snapshots, tags at upload, 8 uploaders (load {load:.1f})")
    columns = ("snapshots", "seconds", "snaps/s", "req/snap", "in handler", "served")
    print(f"{'delivery (1 worker unless said)':34} " + " ".join(f"{c:>10}" for c in columns))
    for label, row in rows:
        result: LoadResult = row["result"]
        cells = (
            f"{result.snapshots:>10}",
            f"{result.seconds:>10.1f}",
            f"{result.snapshots_per_second:>10.2f}",
            f"{row['requests'] / result.snapshots:>10.1f}",
            f"{row['handler'] / result.seconds:>10.0%}",
            f"{row['served'] / result.seconds:>10.0%}",
        )
        print(f"{label:34} " + " ".join(cells))
    print("snapshots/s by quarter of the run (flat: the bucket filling costs nothing)")
    for label, row in rows:
        print(f"  {label:32} " + " ".join(f"{r:>7.2f}" for r in row["result"].quarter_rates()))
    print("'in handler': share of the run inside the pipeline's invocations (the rest is")
    print("delivery and waiting); 'served': share the server spent on the pipeline's requests")
    sizes = " / ".join(f"{size:,}" for size in LISTED_SIZES)
    print(f"ms per ListObjectsV2 of a small prefix, buckets of {sizes} keys:")
    for label, costs in listings.items():
        print(f"  {label:10} " + " / ".join(f"{cost:.1f}" for cost in costs))
    print("every manifest checked: snapshots, sizes, validation, statuses")
