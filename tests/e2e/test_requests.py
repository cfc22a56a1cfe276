"""Issue 15: what the pipeline costs, counted at the embedded server.

20 OMIs of 1, 3 and 6 snapshots, uploaded with their tags, then their events delivered
as S3 sends them (one ObjectCreated per upload; a tagging event for each of the
pipeline's own status writes, which names the pipeline as its writer), one at a time
and four at a time (sharing one pipeline, as `omi-manifest run --workers 4` does; separate
Lambda environments would each read the member records they have not seen).
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import replace
from urllib.parse import urlencode

import boto3
import pytest
from botocore.config import Config

from chalicelib import runtime
from chalicelib.config import Settings
from chalicelib.local.server import EmbeddedServer
from chalicelib.notifications import ObjectChange
from chalicelib.pipeline import Pipeline

REGION = "eu-west-2"
USER_KEY = "AKIAUSERUPLOADS0003"
PIPELINE_KEY = "AKIAPIPELINEWORKER3"
OMIS = 20
# The bounds: about n + 12 + 1/n requests per snapshot for n-disk OMIs.
BOUNDS = {1: 14.0, 3: 15.3, 6: 18.2}
WORKERS_FACTOR = 1.25  # four workers cost at most this much more than one
_buckets = itertools.count(1)


@pytest.fixture(scope="module")
def server(embedded_server):
    return embedded_server


def pipeline_for(server: EmbeddedServer, bucket: str) -> Pipeline:
    settings = Settings(bucket=bucket, region=REGION, endpoint_url=server.url)
    return replace(runtime.build_pipeline(settings), own_principal=f"AWS:{PIPELINE_KEY}")


def echoes_of(pipeline: Pipeline, events: queue.Queue) -> None:
    """Every status write the pipeline makes comes back as a tagging event naming it."""

    def notify(http_response, model, params, **_):
        if http_response.status_code < 300 and model.name in (
            "PutObjectTagging",
            "DeleteObjectTagging",
        ):
            events.put(
                ObjectChange(
                    pipeline.settings.bucket,
                    params["Key"],
                    f"ObjectTagging:{model.name[:3].title()}",
                    principal=pipeline.own_principal,
                )
            )

    def keep_params(params, context, **_):
        context["params"] = dict(params)

    client = pipeline.store.tag_client
    client.meta.events.register("before-parameter-build.s3.*", keep_params)
    client.meta.events.register(
        "after-call.s3.*", lambda context, **kw: notify(params=context["params"], **kw)
    )


def run(server: EmbeddedServer, tmp_image: bytes, disks: int, workers: int) -> dict:
    bucket = f"requests-{next(_buckets)}"
    user = boto3.client(
        "s3",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=USER_KEY,
        aws_secret_access_key="user",
        config=Config(signature_version="s3v4"),
    )
    user.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    events: queue.Queue = queue.Queue()
    for omi in range(OMIS):
        for disk in range(disks):
            key = f"omi-{omi:02d}/sd{chr(ord('a') + disk)}{'1' if disk == 0 else ''}.qcow2"
            tags = urlencode({"omi:snapshots": str(disks)})
            put = user.put_object(Bucket=bucket, Key=key, Body=tmp_image, Tagging=tags)
            events.put(
                ObjectChange(
                    bucket,
                    key,
                    "ObjectCreated:Put",
                    put["ETag"].strip('"'),
                    len(tmp_image),
                    f"AWS:{USER_KEY}",
                )
            )
    server.requests.reset()
    failures: list[BaseException] = []

    pipeline = pipeline_for(server, bucket)
    echoes_of(pipeline, events)

    def worker() -> None:
        while True:
            try:
                change = events.get(timeout=1.0)
            except queue.Empty:
                return
            try:
                pipeline.handle([change])
            except Exception as error:
                failures.append(error)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    listed = user.list_objects_v2(Bucket=bucket, Prefix="manifests/")
    assert listed.get("KeyCount") == OMIS
    return {
        "per_snapshot": server.requests.total(PIPELINE_KEY) / (OMIS * disks),
        "manifest_writes": server.requests.written("PutObject", f"/{bucket}/manifests/"),
    }


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> bytes:
    from tests import images

    return images.create(
        tmp_path_factory.mktemp("requests") / "d.qcow2", "qcow2", 1 << 30
    ).read_bytes()


@pytest.mark.parametrize("disks", sorted(BOUNDS))
def test_requests_per_snapshot_stay_within_the_bounds(server, image, monkeypatch, disks):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", PIPELINE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "pipeline")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    one = run(server, image, disks, workers=1)
    four = run(server, image, disks, workers=4)
    assert one["per_snapshot"] <= BOUNDS[disks], one
    assert four["per_snapshot"] <= WORKERS_FACTOR * one["per_snapshot"], (one, four)
    assert one["manifest_writes"] == four["manifest_writes"] == OMIS
