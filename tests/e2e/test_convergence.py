"""Randomized convergence (issues 9 and 15): whatever the interleaving, and wherever an
invocation dies, events alone leave the bucket in the state a one-at-a-time run over the
same final objects reaches.

Uploaders drop the snapshots of many OMIs in parallel (in one call, or uploaded then tagged
a moment later), retag some to another OMI, delete, replace, fix and tag them; meanwhile
several workers invoke the real Chalice handler on the bucket's notifications, delivered
with duplicates and in an order a seeded ``random.Random`` shuffles; some invocations are
killed before a random S3 call, and their event is delivered again. Once events stop, a
second bucket gets the same final objects one at a time, and the two must read the same:
statuses, user tags, manifests (without their signed URLs). A pass afterwards writes nothing.
"""

from __future__ import annotations

import json
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlencode

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws

from chalicelib import runtime
from chalicelib.config import Settings
from chalicelib.local.delivery import NotificationPump, chalice_handler
from chalicelib.observability import logger
from chalicelib.scheduler import Pass
from tests import images
from tests.interleave import TIMEOUT, Killed, Request, Worker, recording_server

SEEDS = [int(s) for s in os.environ.get("OMI_TEST_SEEDS", "1 2 3").split()]
# Seeds that ever failed, kept as regression cases. 1-3 failed (statuses or manifests unlike
# the sequential run, or a pass that wrote) on the code before the level-triggered pipeline;
# 13 and 18 left a status missing after a user's tag write replaced the set.
REGRESSION_SEEDS = [1, 2, 3, 13, 18]
PROJECT = str(Path(__file__).parents[2])
REGION = "eu-west-2"
PUBLIC = "https://oos.eu-west-2.outscale.com"
USER_KEY = "AKIAUSERUPLOADS0002"
PIPELINE_KEY = "AKIAPIPELINEWORKER2"
OMIS = 15
UPLOADERS = 4
WORKERS = 3
PACE = 4  # deliveries an uploader lets happen between two of its steps, at most
DUPLICATES = 0.25  # share of notifications delivered twice
CRASH_EVERY = 6  # every 6th first delivery's invocation dies before some S3 call:
LATEST_CRASH = 30  # the first, every fourth time (so some die whatever they do), else a later one
WINDOW_REQUESTS = 4 * 3  # pipeline requests between a re-read of tags and their write: "close"
RETRIES = 2  # a failed asynchronous invocation is retried twice, as Lambda does
IDLE = 0.02  # seconds an idle worker waits for work to arrive (pacing, not synchronisation)
SUFFIXES = ("qcow2", "raw", "qcow2.gz", "raw.gz")
MIB = 1 << 20
RENEW_BEFORE = 48 * 3600
_buckets = iter(range(1, 1_000_000))


@pytest.fixture(scope="module")
def served():
    server, log = recording_server()
    yield server, log
    server.stop()


@pytest.fixture(scope="module")
def contents(tmp_path_factory) -> dict[str, list[bytes]]:
    """Two different files of each format, 1 MiB raw or qcow2 disks, made once."""
    folder = tmp_path_factory.mktemp("convergence")
    found: dict[str, list[bytes]] = {suffix: [] for suffix in SUFFIXES}
    for number, virtual in enumerate((1 << 30, 2 << 30)):
        raw = folder / f"disk{number}.raw"
        raw.write_bytes(os.urandom(MIB))
        qcow2 = images.create(folder / f"disk{number}.qcow2", "qcow2", virtual)
        for suffix, path in (("raw", raw), ("qcow2", qcow2)):
            found[suffix].append(path.read_bytes())
            found[f"{suffix}.gz"].append(images.gzip_file(path).read_bytes())
    return found


@pytest.fixture
def environment(served, monkeypatch):
    """The pipeline's settings and identity, as a deployed stage reads them."""
    server, _ = served
    for name, value in {
        "AWS_ACCESS_KEY_ID": PIPELINE_KEY,
        "AWS_SECRET_ACCESS_KEY": "pipeline-secret",
        "AWS_DEFAULT_REGION": REGION,
        "OMI_REGION": REGION,
        "OMI_ENDPOINT_URL": server.url,
        "OMI_PUBLIC_ENDPOINT_URL": server.url,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # credentials from this environment
    level = logger.log_level
    logger.setLevel("CRITICAL")  # thousands of lines otherwise, and failed retries on purpose
    yield monkeypatch
    logger.setLevel(level)
    runtime.pipeline.cache_clear()


class View:
    """What a user reads from a bucket."""

    def __init__(self, s3: Any, name: str) -> None:
        self.s3 = s3
        self.name = name

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def tags(self, key: str) -> dict[str, str]:
        found = self.s3.get_object_tagging(Bucket=self.name, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in found}

    def body(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.name, Key=key)["Body"].read()

    def snapshots(self) -> dict[str, tuple[str | None, dict[str, str]]]:
        """Every object outside the pipeline's prefixes: (status, the user's tags)."""
        found = {}
        for key in self.keys():
            if key.startswith(("manifests/", ".omi-state/")):
                continue
            tags = self.tags(key)
            status = tags.pop("omi:status", None)
            found[key] = (status, tags)
        return found

    def manifests(self) -> dict[str, Any]:
        """Every manifest, without its signed URLs and with the bucket's name blanked."""
        found = {}
        for key in self.keys("manifests/"):
            document = json.loads(self.body(key).decode().replace(self.name, "<bucket>"))
            for snapshot in document["Image"]["Snapshots"]:
                snapshot.pop("PreSignedUrl", None)
            found[key] = document
        return found


class Bucket(View):
    """A bucket on the embedded server, its notification queue, and the user's client."""

    def __init__(self, url: str, monkeypatch: Any) -> None:
        self.name = f"converge-{next(_buckets)}"
        self.monkeypatch = monkeypatch
        session = boto3.Session(
            aws_access_key_id=USER_KEY, aws_secret_access_key="user-secret", region_name=REGION
        )
        config = Config(signature_version="s3v4", max_pool_connections=32)
        super().__init__(session.client("s3", endpoint_url=url, config=config), self.name)
        self.s3.create_bucket(
            Bucket=self.name, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        self.pump = NotificationPump(
            self.s3, session.client("sqs", endpoint_url=url), self.name, queue=self.name
        )
        self.pump.connect()

    def attach(self) -> None:
        """Point the pipeline (the Chalice app's) at this bucket."""
        self.monkeypatch.setenv("OMI_BUCKET", self.name)
        runtime.pipeline.cache_clear()

    def put(self, key: str, body: bytes, tags: dict[str, str] | None) -> None:
        extra = {"Tagging": urlencode(tags)} if tags else {}
        self.s3.put_object(Bucket=self.name, Key=key, Body=body, **extra)

    def retag(self, key: str, tags: dict[str, str]) -> None:
        tag_set = [{"Key": k, "Value": v} for k, v in tags.items()]
        self.s3.put_object_tagging(Bucket=self.name, Key=key, Tagging={"TagSet": tag_set})


# --- what the user does ---------------------------------------------------------------------


@dataclass
class Disk:
    key: str
    suffix: str
    tags: dict[str, str]
    content: int = 0
    deleted: bool = False


@dataclass
class Uploader:
    """One user's sequence of actions on the OMIs given to it; the disks' final tags.

    Each step waits until the platform has made a number of deliveries (or has nothing
    left to do), so that actions land before, during and after the processing of others.
    """

    bucket: Bucket
    contents: dict[str, list[bytes]]
    rng: random.Random
    steps: list[tuple[int, str, Disk, dict[str, str]]] = field(default_factory=list)

    def upload(self, disk: Disk) -> None:
        body = self.contents[disk.suffix][disk.content]
        if self.rng.random() < 0.5:
            self.bucket.put(disk.key, body, disk.tags)
        else:  # `aws s3 cp`, then `aws s3api put-object-tagging`
            self.bucket.put(disk.key, body, None)
            if disk.tags:
                self.bucket.retag(disk.key, disk.tags)

    def run(self, platform: Platform) -> None:
        for after, action, disk, change in self.steps:
            platform.wait_for(after)
            if disk.deleted:
                continue
            if action == "upload":
                self.upload(disk)
            elif action == "delete":
                disk.deleted = True
                self.bucket.s3.delete_object(Bucket=self.bucket.name, Key=disk.key)
            elif action == "replace":
                disk.content = 1 - disk.content
                self.upload(disk)
            else:  # retag, fix, label: the user's whole tag set, as put-object-tagging takes it
                disk.tags = {**disk.tags, **change}
                self.bucket.retag(disk.key, disk.tags)


def plan(seed: int, bucket: Bucket, contents: dict[str, list[bytes]]) -> list[Uploader]:
    """OMIs of one to three disks, their uploads and what happens to them next."""
    rng = random.Random(seed)
    uploaders = [Uploader(bucket, contents, random.Random(rng.random())) for _ in range(UPLOADERS)]
    names = [f"omi-{number:02d}" for number in range(OMIS)]
    for number, name in enumerate(names):
        uploader = uploaders[number % UPLOADERS]
        count = rng.choice((1, 1, 1, 2, 3))
        disks = []
        for device in ("sda1", "sdb", "sdc")[:count]:
            suffix = rng.choice(SUFFIXES)
            tags = {"omi:snapshots": str(count)} if count > 1 else {}
            if suffix == "qcow2" and rng.random() < 0.4:
                tags["omi:volume-type"] = "io1"  # no iops yet: an error until fixed
            disks.append(Disk(f"{name}/{device}.{suffix}", suffix, tags, rng.randrange(2)))
        steps: list[tuple[str, Disk, dict[str, str]]] = [("upload", disk, {}) for disk in disks]
        for disk in disks:
            if disk.tags.get("omi:volume-type") == "io1" and rng.random() < 0.7:
                steps.append(("fix", disk, {"omi:iops": "100"}))
            roll = rng.random()
            if roll < 0.12:
                steps.append(("delete", disk, {}))
            elif roll < 0.3:
                steps.append(("replace", disk, {}))
            elif roll < 0.45:
                target = rng.choice([n for n in names if n != name] + [f"moved-{number:02d}"])
                steps.append(("retag", disk, {"omi:name": target}))
            if rng.random() < 0.3:
                steps.append(("label", disk, {"team": rng.choice(("x", "y"))}))
        uploader.steps += [(0, *step) for step in steps]
    for uploader in uploaders:
        after = 0
        for index, (_, *step) in enumerate(uploader.steps):
            after += rng.randint(0, PACE)
            uploader.steps[index] = (after, *step)
    return uploaders


# --- the platform: notifications delivered with duplicates, out of order ---------------------

RESERVED = ("manifests/", ".omi-state/")


def pipelines_own(event: dict[str, Any]) -> bool:
    """A notification of the pipeline's own records or manifests. The handler ignores those
    (tested elsewhere); skipping them here halves the deliveries, and the time."""
    return all(
        unquote_plus(record["s3"]["object"]["key"]).startswith(RESERVED)
        for record in event["Records"]
    )


class Crashes:
    """Kills the invocation running in this thread before its n-th S3 call, when armed."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.killed = 0

    def watch(self, pipeline: Any) -> None:
        for client in {
            id(c): c for c in (pipeline.store.client, pipeline.store.tag_client)
        }.values():
            client.meta.events.register("before-parameter-build.s3.*", self._before)

    def arm(self, at: int) -> None:
        self.local.left = at

    def disarm(self) -> None:
        self.local.left = None

    def _before(self, **_: Any) -> None:
        left = getattr(self.local, "left", None)
        if left is None:
            return
        self.local.left = left - 1
        if left <= 1:
            self.local.left = None
            raise Killed("killed by the test")


class Environments:
    """The handler's pipeline, one per worker thread: each Lambda environment builds its
    own, so workers share no cache and no turn (a local run's workers would share both)."""

    def __init__(self, build: Any, crashes: Crashes) -> None:
        self.build = build
        self.crashes = crashes
        self.local = threading.local()

    def __call__(self) -> Any:
        made = getattr(self.local, "pipeline", None)
        if made is None:
            made = self.local.pipeline = self.build()
            self.crashes.watch(made)
        return made

    def cache_clear(self) -> None:
        self.local = threading.local()


class Platform:
    """Takes the bucket's notifications from its queue and hands them to ``WORKERS``
    concurrent invocations of the handler, some twice, in a shuffled order."""

    def __init__(self, bucket: Bucket, handler: Any, rng: random.Random) -> None:
        self.bucket = bucket
        self.handler = handler
        self.rng = rng
        self.crashes = Crashes()
        environments = Environments(runtime.pipeline.__wrapped__, self.crashes)
        bucket.monkeypatch.setattr(runtime, "pipeline", environments)
        self.first_deliveries = 0
        self.pending: list[tuple[dict[str, Any], int]] = []
        self.busy = 0
        self.delivered = 0
        self.failed: list[str] = []
        self.stopping = False
        self.changed = threading.Condition()

    def collect(self) -> int:
        pump = self.bucket.pump
        batch = pump.sqs.receive_message(QueueUrl=pump.queue_url, MaxNumberOfMessages=10).get(
            "Messages", []
        )
        for message in batch:
            pump.sqs.delete_message(QueueUrl=pump.queue_url, ReceiptHandle=message["ReceiptHandle"])
            event = json.loads(message["Body"])
            if not event.get("Records") or pipelines_own(event):
                continue
            with self.changed:
                copies = 2 if self.rng.random() < DUPLICATES else 1
                for _ in range(copies):
                    self._insert(event, 0)
                self.changed.notify_all()
        return len(batch)

    def _insert(self, event: dict[str, Any], attempt: int) -> None:
        """Somewhere in the pending deliveries (the lock held)."""
        self.pending.insert(self.rng.randint(0, len(self.pending)), (event, attempt))

    def wait_for(self, deliveries: int) -> None:
        """Until ``deliveries`` were made, or there is nothing to deliver."""
        with self.changed:
            while self.delivered < deliveries and (self.pending or self.busy):
                self.changed.wait(IDLE)

    def work(self) -> None:
        while True:
            with self.changed:
                while not self.pending and not self.stopping:
                    self.changed.wait()
                if not self.pending:
                    return
                event, attempt = self.pending.pop(self.rng.randrange(len(self.pending)))
                self.busy += 1
                if attempt == 0:
                    self.first_deliveries += 1
                    if self.first_deliveries % CRASH_EVERY == 1:
                        armed = self.first_deliveries // CRASH_EVERY
                        at = 1 if armed % 4 == 0 else self.rng.randint(2, LATEST_CRASH)
                        self.crashes.arm(at)
            try:
                self.handler(event)
            except Killed:  # the platform delivers the event again
                with self.changed:
                    self.crashes.killed += 1
                    self._insert(event, attempt + 1)
            except Exception as error:
                with self.changed:
                    if attempt < RETRIES:
                        self.pending.insert(
                            self.rng.randint(0, len(self.pending)), (event, attempt + 1)
                        )
                    else:
                        self.failed.append(f"{event['Records'][0]['s3']['object']['key']}: {error}")
            finally:
                self.crashes.disarm()
                with self.changed:
                    self.busy -= 1
                    self.delivered += 1
                    self.changed.notify_all()

    def run_until_quiet(self, uploads: list[threading.Thread]) -> None:
        workers = [threading.Thread(target=self.work, daemon=True) for _ in range(WORKERS)]
        for thread in workers:
            thread.start()
        try:
            while True:
                if self.collect():
                    continue
                with self.changed:
                    idle = not self.pending and self.busy == 0
                    if not idle or any(thread.is_alive() for thread in uploads):
                        self.changed.wait(IDLE)
                        continue
                # Nothing runs and the queue was empty: anything a finished invocation wrote
                # was notified while it ran, so one more empty receive means quiet.
                if self.collect() == 0:
                    return
        finally:
            with self.changed:
                self.stopping = True
                self.changed.notify_all()
            for thread in workers:
                thread.join(TIMEOUT)


# --- the test ---------------------------------------------------------------------------------


def concurrent_run(bucket: Bucket, contents, seed: int, handler) -> tuple[dict, Platform]:
    """Everything at once; returns each remaining disk's final user tags."""
    bucket.attach()
    uploaders = plan(seed, bucket, contents)
    platform = Platform(bucket, handler, random.Random(seed))
    threads = [threading.Thread(target=u.run, args=(platform,), daemon=True) for u in uploaders]
    for thread in threads:
        thread.start()
    platform.run_until_quiet(threads)
    for thread in threads:
        thread.join(TIMEOUT)
    final = {
        disk.key: disk.tags
        for uploader in uploaders
        for _, _, disk, _ in uploader.steps
        if not disk.deleted
    }
    return final, platform


def sequential_state(final: dict[str, tuple[bytes, dict[str, str]]]) -> tuple[dict, dict]:
    """The same final objects in a fresh bucket, one at a time in key order, each one's
    events (and those its processing causes) delivered once before the next is put.

    In process (moto's decorator) for speed: the same pipeline, built the same way."""
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(
            Bucket="sequential", CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        settings = Settings(bucket="sequential", region=REGION, public_endpoint_url=PUBLIC)
        worker = Worker(settings, runtime.s3_client(settings))
        for key, (body, tags) in sorted(final.items()):
            extra = {"Tagging": urlencode(tags)} if tags else {}
            s3.put_object(Bucket="sequential", Key=key, Body=body, **extra)
            worker.deliver(key, "ObjectCreated:Put")
            worker.deliver(key, "ObjectTagging:Put")
            worker.deliver_echoes()
        reference = View(s3, "sequential")
        return reference.snapshots(), reference.manifests()


def lost_in_the_window(requests: list[Request], bucket: str, key: str) -> bool:
    """Whether the user's last tag write on ``key`` fell between a pipeline's re-read of the
    tags and its write of them, those two close together (spec section 5: S3 has no
    conditional tag write, so only a user write landing in those few milliseconds can be
    overwritten). A pipeline that wrote from a read made before a whole inspection is not
    excused: its read and its write are far apart."""
    path = f"/{bucket}/{key}"
    tag_writes = ("PutObject", "PutObjectTagging")
    users = [i for i, r in enumerate(requests) if r.caller == USER_KEY and r.path == path]
    last_write = max(i for i in users if requests[i].operation in tag_writes)
    for write, request in enumerate(requests):
        if write <= last_write or request.caller == USER_KEY or request.path != path:
            continue
        if request.operation != "PutObjectTagging":
            continue
        reads = [
            i
            for i, r in enumerate(requests[:write])
            if r.caller != USER_KEY and r.path == path and r.operation == "GetObjectTagging"
        ]
        if reads and reads[-1] < last_write:
            between = requests[reads[-1] + 1 : write]
            return sum(r.caller != USER_KEY for r in between) <= WINDOW_REQUESTS
    return False


@pytest.mark.parametrize("seed", sorted(set(SEEDS + REGRESSION_SEEDS)))
def test_concurrent_events_converge_to_the_sequential_state(served, contents, environment, seed):
    server, log = served
    log.clear()
    concurrent = Bucket(server.url, environment)
    intended, platform = concurrent_run(concurrent, contents, seed, chalice_handler(PROJECT))
    assert platform.delivered > len(intended)
    assert platform.crashes.killed > 0, "no invocation was killed"
    got, got_manifests = concurrent.snapshots(), concurrent.manifests()
    requests = list(log.requests)
    context = (
        f"seed {seed}: {platform.delivered} deliveries, {platform.crashes.killed} killed, "
        f"failed: {platform.failed}"
    )
    assert sorted(got) == sorted(intended), context
    lost = {
        key: (tags, intended[key])
        for key, (_, tags) in got.items()
        if tags != intended[key] and not lost_in_the_window(requests, concurrent.name, key)
    }
    assert lost == {}, f"{context}: the user's tags were lost"

    log.clear()
    concurrent.attach()
    Pass(runtime.pipeline(), RENEW_BEFORE).run()
    assert log.besides(USER_KEY), "no request of the pass seen"
    writes = [(r.operation, r.path) for r in log.writes_besides(USER_KEY)]

    # The same final objects: their content, and the user's tags as they ended.
    want, want_manifests = sequential_state(
        {key: (concurrent.body(key), tags) for key, (_, tags) in got.items()}
    )
    mismatched = {key: (got[key][0], want[key][0]) for key in got if got[key] != want[key]}
    assert mismatched == {}, context
    assert got_manifests == want_manifests, context
    assert writes == [], f"{context}: a pass after the events wrote"
