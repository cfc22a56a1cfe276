"""A re-sign pass over 5,000 published manifests of which 50 are due.

Requests are counted at the embedded server (moto's HTTP server). Beside it, in
the same run, the same pass when none is due: the baseline cost of the 4,950
manifests that are not due, which must be list requests only.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import boto3

from chalicelib.config import Settings
from chalicelib.convention import SnapshotSettings
from chalicelib.grouping import Member
from chalicelib.local.server import EmbeddedServer
from chalicelib.pipeline import Pipeline
from chalicelib.scheduler import Pass
from chalicelib.signing import SigningKeys
from chalicelib.store import Store, key_hash, tags_hash

MANIFESTS = 5000
DUE = 50
BUCKET = "resign-bench"
REGION = "eu-west-2"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
KEYS = SigningKeys("AKIABENCHSIGNER", "bench-secret")
WINDOW = 48 * 3600


def pipeline_for(server: EmbeddedServer, access_key: str, now: datetime) -> Pipeline:
    client = boto3.client(
        "s3",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key="x",
    )
    settings = Settings(bucket=BUCKET, region=REGION, public_endpoint_url=server.url)
    return Pipeline(Store(client, settings), settings, lambda: KEYS, lambda: now)


def publish_one(pipeline: Pipeline, index: int) -> None:
    """A published one-disk OMI, as the event path leaves it, written directly."""
    store = pipeline.store
    key = f"omi-{index:05d}/sda1.raw"
    store.client.put_object(Bucket=BUCKET, Key=key, Body=b"\0" * 512)
    info = store.head(key)
    name = f"omi-{index:05d}"
    member = Member(key, info.etag, 512, 512, (), SnapshotSettings(name=name, device="/dev/sda1"))
    no_tags = tags_hash({})
    store.add_group_entry(key, name)
    store.write_member(name, member, no_tags)
    store.set_done(key_hash(key), (info.etag.strip('"'), no_tags), ())
    signed_at = NOW - timedelta(days=6) if index < DUE else NOW
    replace(pipeline, clock=lambda: signed_at).evaluate(name)


def measure(server: EmbeddedServer, now: datetime, caller: str) -> dict:
    server.requests.reset()
    started = time.perf_counter()
    report = Pass(pipeline_for(server, caller, now), WINDOW).run()
    return {
        "seconds": time.perf_counter() - started,
        "requests": server.requests.total(caller),
        "operations": server.requests.by_operation(caller),
        "report": report.as_dict(),
    }


def main() -> None:
    server = EmbeddedServer()
    server.start()
    try:
        setup = pipeline_for(server, "AKIABENCHSETUP", NOW)
        setup.store.client.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda i: publish_one(setup, i), range(MANIFESTS)))
        print(
            f"\n(set-up: {MANIFESTS} published manifests in {time.perf_counter() - started:.0f} s)"
        )
        baseline = measure(server, NOW - timedelta(days=3), "AKIABENCHBASELINE")  # none due
        due = measure(server, NOW, "AKIABENCHPASS")  # the first 50 are due
    finally:
        server.stop()
    print(f"\n== re-sign pass over {MANIFESTS} published manifests (moto HTTP server)")
    print(f"{'pass':26} {'due':>5} {'requests':>9} {'list reqs':>10} {'seconds':>8}  outcome")
    for label, row in (("none due (baseline)", baseline), (f"{DUE} due", due)):
        print(
            f"{label:26} {row['report'].get('renewed', 0):>5} {row['requests']:>9} "
            f"{row['operations']['ListObjectsV2']:>10} {row['seconds']:>8.2f}  {row['report']}"
        )
    extra = due["requests"] - baseline["requests"]
    print(f"\nper due manifest: {extra / DUE:.1f} requests; operations of the {DUE}-due pass:")
    for operation, n in sorted(due["operations"].items()):
        print(f"  {operation:20} {n}")


if __name__ == "__main__":
    main()
