"""Polling a store without events (OOS): requests per pass over 1,000 and 10,000 published
snapshots when nothing changed, and how many passes a retag takes to show.

Two passes, measured in the same run: one that reads every object's tags (what
``run --poll`` and the oos stage, ``OMI_TAG_ROUNDS=1``, run), and the event stages'
default, which reads a 24th of them per pass (``OMI_TAG_ROUNDS=24``). Requests are
counted at the embedded server (moto's HTTP server). The bucket is filled through the
pipeline itself, with its events, against moto in this process (no HTTP: about 1 ms a
request); the server then serves the same data. ``OMI_BENCH_POLL_SIZES`` (default
``1000 10000``) chooses the sizes.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from collections.abc import Callable
from typing import Any

import boto3
from moto import mock_aws

from chalicelib.config import Settings
from chalicelib.local.server import EmbeddedServer
from chalicelib.notifications import ObjectChange
from chalicelib.observability import logger
from chalicelib.pipeline import Pipeline
from chalicelib.scheduler import Pass
from chalicelib.signing import SigningKeys
from chalicelib.store import Marker, Publication, Store, key_hash, membership_digest

SIZES = [int(n) for n in os.environ.get("OMI_BENCH_POLL_SIZES", "1000 10000").split()]
REGION = "eu-west-2"
KEYS = SigningKeys("AKIABENCHSIGNER", "bench-secret")
DISK = b"\0" * 4096  # a raw disk of 8 sectors: inspection costs nothing beside the requests
MAX_PASSES = 3
WRITES = ("Put", "Delete", "Copy", "CreateMultipart", "Complete")


def pipeline_on(client: Any, bucket: str, endpoint: str | None) -> Pipeline:
    settings = Settings(bucket=bucket, region=REGION, public_endpoint_url=endpoint or "https://oos")
    return Pipeline(Store(client, settings), settings, lambda: KEYS)


def snapshot_key(index: int) -> str:
    return f"omi-{index:05d}/sda1.raw"


def renamer(names: dict[str, str]) -> Callable[[str], str]:
    pattern = re.compile("|".join(map(re.escape, names)))
    return lambda text: pattern.sub(lambda found: names[found.group()], text)


def fill(bucket: str, snapshots: int) -> float:
    """``snapshots`` published one-disk OMIs. The first goes through the event path
    against moto in this process; the others are its copies, renamed, written straight
    into moto's backend (about 0.1 ms an object instead of some 18 requests of 14 ms).
    The plain pass over them must then find nothing to do, which checks the copies."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    started = time.perf_counter()
    mock = mock_aws()
    mock.start()
    try:
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        template = snapshot_key(0)
        s3.put_object(Bucket=bucket, Key=template, Body=DISK)
        pipeline_on(s3, bucket, None).handle([ObjectChange(bucket, template, "ObjectCreated:Put")])
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        originals = []
        for listed in s3.list_objects_v2(Bucket=bucket)["Contents"]:
            stored = backend.get_object(bucket, listed["Key"])
            tagging = backend.get_object_tagging(stored)["Tags"]
            tags = {tag["Key"]: tag["Value"] for tag in tagging}
            originals.append((listed["Key"], stored.value.decode(), tags))

        published = next(key for key, _, _ in originals if "/~published@" in key)
        template_digest = Publication.parse(published).digest

        def copy(key: str, body: str, tags: dict[str, str], rename) -> Any:
            stored = backend.put_object(
                bucket, rename(key), rename(body).encode(), disable_notification=True
            )
            if tags:
                backend.put_object_tagging(stored, {rename(k): rename(v) for k, v in tags.items()})
            return stored

        for index in range(1, snapshots):
            key = snapshot_key(index)
            # What differs between two one-disk OMIs: the name and the key's hash; then the
            # digest of the member record, which holds the key.
            renamed = renamer(
                {template.split("/")[0]: key.split("/")[0], key_hash(template): key_hash(key)}
            )
            records = []
            for original, body, tags in originals:
                if template_digest not in original:
                    stored = copy(original, body, tags, renamed)
                    if "/groups/" in original:
                        records.append(Marker.parse(renamed(original), stored.etag.strip('"')))
            digest = renamer({template_digest: membership_digest(records)})
            for original, body, tags in originals:
                if template_digest in original:
                    copy(original, body, tags, lambda text, d=digest, r=renamed: d(r(text)))
    finally:
        # Keep the data: the server serves moto's same in-process backends.
        mock.stop(remove_data=False)
    return time.perf_counter() - started


def client_for(server: EmbeddedServer, caller: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=caller,
        aws_secret_access_key="x",
    )


def one_pass(server: EmbeddedServer, bucket: str, caller: str, check_tags: bool) -> dict:
    pipeline = pipeline_on(client_for(server, caller), bucket, server.url)
    server.requests.reset()
    started = time.perf_counter()
    report = Pass(pipeline, 48 * 3600, check_tags=check_tags).run()
    return {
        "requests": server.requests.total(caller),
        "operations": dict(server.requests.by_operation(caller)),
        "seconds": time.perf_counter() - started,
        "report": report.as_dict(),
    }


def passes_until_retag_shows(server: EmbeddedServer, bucket: str, key: str, check_tags: bool):
    """Retag one snapshot (a bad architecture), then pass until its status says so."""
    user = client_for(server, "AKIABENCHUSER")
    tagging = {"TagSet": [{"Key": "omi:architecture", "Value": "sparc"}]}
    user.put_object_tagging(Bucket=bucket, Key=key, Tagging=tagging)
    for number in range(1, MAX_PASSES + 1):
        one_pass(server, bucket, "AKIABENCHRETAG", check_tags)
        found = user.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        if {t["Key"]: t["Value"] for t in found}.get("omi:status", "").startswith("error:"):
            return f"pass {number}"
    return f"not in {MAX_PASSES} passes"


def main() -> None:
    logger.setLevel("WARNING")  # the pipeline's JSON lines
    rows = []
    for size in SIZES:
        bucket = f"poll-bench-{size}"
        with contextlib.redirect_stdout(io.StringIO()):  # metric lines
            seeded = fill(bucket, size)
            server = EmbeddedServer()
            server.start()
            try:
                # Each retags a snapshot of its own; the one --check-tags finds first is
                # settled (in error) before the plain pass measures "nothing changed".
                for index, (label, check_tags) in enumerate(
                    (("every tag (poll)", True), ("1/24 of tags", False))
                ):
                    nothing = one_pass(server, bucket, f"AKIABENCHNOCHANGE{index}", check_tags)
                    # An OMI in error (the retag of the pass before) is evaluated every
                    # pass, reading only.
                    idle = ("checked", "evaluated")
                    done = {k: v for k, v in nothing["report"].items() if k not in idle and v}
                    writes = {op for op in nothing["operations"] if op.startswith(WRITES)}
                    assert done == {} and not writes, f"the unchanged pass did {done} {writes}"
                    key = snapshot_key(index)
                    shows = passes_until_retag_shows(server, bucket, key, check_tags)
                    rows.append((size, label, nothing, shows, seeded))
            finally:
                server.stop()
    print("\n== polling: one pass over published snapshots, nothing changed (moto HTTP server)")
    print(
        f"{'snapshots':>9} {'pass':18} {'requests':>9} {'per 1,000':>9} {'seconds':>8}  "
        f"{'retag shows':16} operations"
    )
    for size, label, row, shows, _ in rows:
        print(
            f"{size:>9} {label:18} {row['requests']:>9} {row['requests'] * 1000 / size:>9.1f} "
            f"{row['seconds']:>8.1f}  {shows:16} {row['operations']}"
        )
    print("(set-up: " + ", ".join(f"{r[0]} in {r[4]:.0f} s" for r in rows[::2]) + ")")
