"""S3 requests the pipeline makes, counted at the (embedded) server.

Scenario from the issue: 20 OMIs of 3 snapshots, with events handled one at a
time and 4 at a time (as concurrent Lambda invocations). Beside it, the same with
1 and 6 snapshots per OMI, and 20 x 3 again into a bucket that already holds the
first run's 60 snapshots: the per-snapshot cost must stay flat across them.
Every delivered event counts, the pipeline's own tagging events included. Events are
as S3 sends them (the embedded server's: one per upload, each naming its writer).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

from chalicelib import runtime
from chalicelib.local.delivery import NotificationPump, chalice_handler
from chalicelib.local.events import own_principal
from chalicelib.local.server import EmbeddedServer

PROJECT = str(Path(__file__).parents[1])
REGION = "eu-west-2"
USER_KEY = "AKIABENCHUSER"
PIPELINE_KEY = "AKIABENCHPIPELINE"


def connect(server: EmbeddedServer, bucket: str, fresh: bool) -> tuple[Any, NotificationPump]:
    """Point the pipeline (its own key) at ``bucket``; a user's client and the event pump."""
    os.environ |= {
        "AWS_ACCESS_KEY_ID": PIPELINE_KEY,
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "OMI_BUCKET": bucket,
        "OMI_REGION": REGION,
        "OMI_ENDPOINT_URL": server.url,
        "OMI_PUBLIC_ENDPOINT_URL": server.url,
        # As on AWS, events name their writer and the pipeline knows its own principal.
        "OMI_OWN_PRINCIPAL": own_principal(PIPELINE_KEY),
    }
    runtime.pipeline.cache_clear()
    session = boto3.Session(
        aws_access_key_id=USER_KEY, aws_secret_access_key="user", region_name=REGION
    )
    s3 = session.client("s3", endpoint_url=server.url)
    pump = NotificationPump(
        s3, session.client("sqs", endpoint_url=server.url), bucket, f"{bucket}-q"
    )
    if fresh:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    pump.connect()
    return s3, pump


def run_scenario(
    server: EmbeddedServer,
    bucket: str,
    omis: int,
    per_omi: int,
    image: Path,
    fresh: bool,
    workers: int = 1,
):
    s3, pump = connect(server, bucket, fresh)
    handler = chalice_handler(PROJECT)
    body = image.read_bytes()
    tag = f"run{time.monotonic_ns()}"
    for omi in range(omis):
        for disk in range(per_omi):
            key = f"omi-{tag}-{omi:03d}/sd{chr(ord('a') + disk)}.qcow2"
            s3.put_object(Bucket=bucket, Key=key, Body=body, Tagging=f"omi:snapshots={per_omi}")
    server.requests.reset()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the handlers' JSON logs and EMF lines
        if workers == 1:
            events = pump.pump(handler)
        else:
            events = pump.pump_concurrently(handler, workers, lambda: True)
    seconds = time.perf_counter() - start
    published = s3.list_objects_v2(Bucket=bucket, Prefix=f"manifests/omi-{tag}")
    assert published.get("KeyCount") == omis, published.get("KeyCount")
    return {
        "events": events,
        "requests": server.requests.total(PIPELINE_KEY),
        "operations": server.requests.by_operation(PIPELINE_KEY),
        "seconds": seconds,
        "snapshots": omis * per_omi,
        "omis": omis,
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="omi-bench-") as tmp:
        image = Path(tmp) / "sda.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
        server = EmbeddedServer()
        server.start()
        try:
            rows = [
                ("20 OMIs x 1 snapshot", run_scenario(server, "bench-a", 20, 1, image, True)),
                ("20 OMIs x 3 snapshots", run_scenario(server, "bench-b", 20, 3, image, True)),
                (
                    "20 OMIs x 3, 4 workers",
                    run_scenario(server, "bench-w", 20, 3, image, True, workers=4),
                ),
                ("20 OMIs x 6 snapshots", run_scenario(server, "bench-c", 20, 6, image, True)),
                (
                    "20 OMIs x 6, 4 workers",
                    run_scenario(server, "bench-x", 20, 6, image, True, workers=4),
                ),
                (
                    "20 x 3 into a bucket of 60 more",
                    run_scenario(server, "bench-b", 20, 3, image, False),
                ),
            ]
        finally:
            server.stop()
    print("\n== S3 requests made by the pipeline, counted at the server")
    print("('bound': issue 15's ceiling per snapshot, n + 12 + 1/n for n-snapshot OMIs)")
    print(
        f"{'scenario':34} {'snapshots':>9} {'events':>7} {'requests':>9} "
        f"{'per snapshot':>13} {'bound':>6} {'per OMI':>8} {'seconds':>8}"
    )
    for label, row in rows:
        per_omi = row["snapshots"] // row["omis"]
        print(
            f"{label:34} {row['snapshots']:>9} {row['events']:>7} {row['requests']:>9} "
            f"{row['requests'] / row['snapshots']:>13.1f} {per_omi + 12 + 1 / per_omi:>6.1f} "
            f"{row['requests'] / row['omis']:>8.1f} {row['seconds']:>8.2f}"
        )
    print("\noperations for 20 OMIs x 3 snapshots, per snapshot:")
    for operation, n in sorted(rows[1][1]["operations"].items()):
        print(f"  {operation:20} {n / rows[1][1]['snapshots']:6.2f}")


if __name__ == "__main__":
    main()
