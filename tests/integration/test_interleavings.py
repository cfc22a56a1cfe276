"""Issue 9's scenarios, each forced deterministically: whatever the interleaving, events
alone leave the bucket true (spec sections 4 and 5).

Workers are pipelines built by ``runtime.build_pipeline`` on clients of their own,
paused at chosen S3 calls (tests/interleave.py). Where no single pause point is *the*
race, a test tries every one: the first worker is held before its k-th S3 call while
the other runs to its end, for every k. Results are read from the bucket only: tags,
manifests, and requests counted at the embedded server.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws

from chalicelib import cli, runtime
from chalicelib.config import Settings
from chalicelib.local.delivery import NotificationPump
from chalicelib.notifications import object_changes
from chalicelib.scheduler import Pass
from tests import images
from tests.interleave import Background, Worker, bytes_served, on, paused_run, recording_server

REGION = "eu-west-2"
PUBLIC = "https://oos.eu-west-2.outscale.com"
RENEW_BEFORE = 48 * 3600
MOST_SPLITS = 200  # more pause points than any one invocation has calls: a runaway loop
USER_KEY = "AKIAUSERUPLOADS0001"
PIPELINE_KEY = "AKIAPIPELINEWORKER1"
_buckets = itertools.count(1)


class Scene:
    """One bucket and the user's client; workers are pipelines on clients of their own."""

    def __init__(self, s3: Any, endpoint_url: str | None = None) -> None:
        self.s3 = s3
        self.endpoint_url = endpoint_url
        self.bucket = f"interleave-{next(_buckets)}"
        s3.create_bucket(
            Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        self.settings = Settings(
            bucket=self.bucket,
            region=REGION,
            endpoint_url=endpoint_url,
            public_endpoint_url=PUBLIC,
        )

    def fresh(self) -> Scene:
        return Scene(self.s3, self.endpoint_url)

    def worker(self, settings: Settings | None = None) -> Worker:
        return Worker(settings or self.settings, runtime.s3_client(self.settings))

    # --- the user ---------------------------------------------------------------

    def put(self, key: str, source: Path | bytes, tags: dict[str, str] | None = None) -> None:
        body = source.read_bytes() if isinstance(source, Path) else source
        extra = {"Tagging": urlencode(tags)} if tags else {}
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, **extra)

    def retag(self, key: str, tags: dict[str, str]) -> None:
        tag_set = [{"Key": k, "Value": v} for k, v in tags.items()]
        self.s3.put_object_tagging(Bucket=self.bucket, Key=key, Tagging={"TagSet": tag_set})

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    # --- what the user reads ------------------------------------------------------

    def tags(self, key: str) -> dict[str, str]:
        found = self.s3.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in found}

    def status(self, key: str) -> str | None:
        return self.tags(key).get("omi:status")

    def statuses(self, *keys: str) -> dict[str, str | None]:
        return {key: self.status(key) for key in keys}

    def manifests(self) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix="manifests/")
        return [item["Key"] for item in listed.get("Contents", [])]

    def manifest(self, name: str) -> dict[str, Any]:
        body = self.s3.get_object(Bucket=self.bucket, Key=f"manifests/{name}.json")["Body"]
        return json.loads(body.read())

    def listed_in(self, key: str) -> list[str]:
        """The manifests that list ``key`` as a snapshot."""
        return [
            manifest_key
            for manifest_key in self.manifests()
            if any(
                snap["Filename"] == key
                for snap in self.manifest(manifest_key[len("manifests/") : -len(".json")])["Image"][
                    "Snapshots"
                ]
            )
        ]


def published(name: str) -> str:
    return f"published: manifests/{name}.json"


def waiting(present: int, expected: int, name: str) -> str:
    return f"waiting: {present} of {expected} snapshots of {name}"


@pytest.fixture
def scene(monkeypatch):
    """A bucket on moto (in process); long-term keys in the environment sign."""
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    with mock_aws():
        yield Scene(boto3.client("s3", region_name=REGION))


def each_split(run: Any) -> int:
    """Call ``run(k)`` for k = 1, 2, ... until the pause point is past the paused worker's
    last call (``run`` returns False); how many splits were tried."""
    for split in range(1, MOST_SPLITS):
        if not run(split):
            return split
    raise AssertionError(f"a worker made more than {MOST_SPLITS} S3 calls")


# --- 1. a user tag written while the pipeline works ---------------------------------------


@pytest.mark.parametrize(
    ("uploaded", "added", "status"),
    [
        ({"team": "blue"}, {"omi:snapshots": "2"}, waiting(1, 2, "web")),
        ({"omi:snapshots": "3"}, {"team": "blue", "omi:description": "web"}, waiting(1, 3, "web")),
        ({"omi:snapshots": "3"}, {"omi:snapshots": "1"}, published("web")),
    ],
    ids=["single-disk-becomes-two", "tags-added-while-waiting", "count-lowered-while-waiting"],
)
def test_user_tag_written_while_the_pipeline_inspects_is_kept(
    scene, samples, uploaded, added, status
):
    key = "web/sda1.qcow2"
    scene.put(key, samples["qcow2"], uploaded)
    worker = scene.worker()

    def user_adds_tags() -> None:
        mine = {k: v for k, v in scene.tags(key).items() if k != "omi:status"}
        scene.retag(key, {**mine, **added})

    reached = paused_run(
        lambda: worker.deliver(key),
        worker.hooks,
        at=on("GetObject", key),  # the pipeline is reading the content: inspecting
        occurrence=1,
        meanwhile=user_adds_tags,
    )
    assert reached, "the pipeline never read the content"
    worker.deliver(key, "ObjectTagging:Put")  # the user's own tagging event
    worker.deliver_echoes()
    assert scene.tags(key) == {**uploaded, **added, "omi:status": status}
    assert scene.manifests() == (["manifests/web.json"] if status == published("web") else [])


# --- 2. statuses are derived from the group, never left stale -----------------------------


def test_waiting_counts_follow_the_disks_present(scene, samples):
    keys = ["app/sda1.qcow2", "app/sdb.qcow2", "app/sdc.qcow2"]
    for present, key in enumerate(keys, start=1):
        scene.put(key, samples["qcow2"], {"omi:snapshots": "3"})
        invocation = scene.worker()  # every event its own invocation
        invocation.deliver(key)
        invocation.deliver_echoes()
        expected = published("app") if present == 3 else waiting(present, 3, "app")
        assert scene.statuses(*keys[:present]) == dict.fromkeys(keys[:present], expected)


@pytest.mark.parametrize("paused", ["race/sda1.qcow2", "race/sdb.qcow2"])
def test_two_workers_completing_an_omi_at_once_publish_one_manifest(scene, samples, paused):
    keys = ["race/sda1.qcow2", "race/sdb.qcow2"]
    (other,) = (key for key in keys if key != paused)

    def split(at: int) -> bool:
        bucket = scene.fresh()
        bucket.put(keys[0], samples["qcow2"], {"omi:snapshots": "2"})
        bucket.put(keys[1], samples["qcow2-2g"], {"omi:snapshots": "2"})
        first, second = bucket.worker(), bucket.worker()
        reached = paused_run(
            lambda: first.deliver(paused), first.hooks, on(), at, lambda: second.deliver(other)
        )
        first.deliver_echoes(second)
        where = f"first worker held before its S3 call {at}"
        assert bucket.manifests() == ["manifests/race.json"], where
        assert bucket.statuses(*keys) == dict.fromkeys(keys, published("race")), where
        snaps = bucket.manifest("race")["Image"]["Snapshots"]
        assert [(s["Filename"], s["Size"]) for s in snaps] == [
            (keys[0], 1 << 30),
            (keys[1], 2 << 30),
        ], where
        return reached

    assert each_split(split) > 3


@pytest.mark.parametrize("fix", ["deleted", "replaced"])
def test_blocked_status_clears_when_the_bad_file_is_fixed(scene, samples, fix):
    bad, good = "app/sda1.raw", "app/sdb.qcow2"
    tags = {"omi:snapshots": "2"}
    scene.put(bad, samples["vmdk"], tags)  # a VMDK named .raw
    scene.put(good, samples["qcow2"], tags)
    worker = scene.worker()
    worker.deliver(bad)
    worker.deliver(good)
    worker.deliver_echoes()
    blocked = scene.status(good)
    assert blocked.startswith("error: ") and bad in blocked
    if fix == "deleted":
        scene.delete(bad)
        worker.deliver(bad, "ObjectRemoved:Delete")
        worker.deliver_echoes()
        assert scene.status(good) == waiting(1, 2, "app")
    else:
        scene.put(bad, samples["raw"], tags)
        worker.deliver(bad)
        worker.deliver_echoes()
        assert scene.statuses(bad, good) == dict.fromkeys((bad, good), published("app"))
    assert scene.manifests() == (["manifests/app.json"] if fix == "replaced" else [])


@pytest.mark.parametrize(
    ("drops", "named"),
    [
        (
            {
                "xyz/sda1.qcow2": {"omi:architecture": "x86_64"},
                "xyz/sdb.qcow2": {"omi:architecture": "i386"},
            },
            "omi:architecture",
        ),
        (
            {"xyz/a.qcow2": {"omi:device": "/dev/sdb"}, "xyz/b.qcow2": {"omi:device": "/dev/sdb"}},
            "/dev/sdb",
        ),
    ],
    ids=["disagreeing-image-tags", "two-disks-on-one-device"],
)
def test_group_errors_show_at_once_not_waiting(scene, samples, drops, named):
    """Two of three disks present, and already they cannot make an OMI together."""
    worker = scene.worker()
    for key, tags in drops.items():
        scene.put(key, samples["qcow2"], {"omi:snapshots": "3", **tags})
        worker.deliver(key)
    worker.deliver_echoes()
    for key, status in scene.statuses(*drops).items():
        assert status.startswith("error: ") and named in status, (key, status)
    assert scene.manifests() == []


# --- 3. processing that died, then a retag --------------------------------------------------


def test_snapshot_whose_processing_died_moves_wholly_to_its_new_omi(scene, samples):
    key = "old-omi/sda1.qcow2"
    probe = scene.fresh()
    probe.put(key, samples["qcow2"])
    counted = probe.worker()
    counted.deliver(key)
    assert probe.status(key) == published("old-omi")
    for failing in range(1, counted.hooks.writes + 1):
        bucket = scene.fresh()
        bucket.put(key, samples["qcow2"])
        dying = bucket.worker()
        dying.hooks.fail_write = failing
        with contextlib.suppress(Exception):  # the invocation fails
            dying.deliver(key)
        bucket.retag(key, {"omi:name": "new-omi"})
        worker = bucket.worker()
        worker.deliver(key, "ObjectTagging:Put")
        worker.deliver(key)  # the platform delivers the failed event again
        worker.deliver_echoes(dying)  # the dying invocation's writes, notified late
        where = f"write {failing} of the first processing failed"
        assert bucket.status(key) == published("new-omi"), where
        assert bucket.listed_in(key) == ["manifests/new-omi.json"], where
        assert bucket.manifests() == ["manifests/new-omi.json"], where


# --- 4. a replacement while the complete OMI is evaluated -----------------------------------


@pytest.mark.parametrize("paused", ["evaluation", "replacement"])
def test_concurrent_replacement_never_withdraws_a_complete_omi(scene, samples, paused):
    keys = ["app/sda1.qcow2", "app/sdb.qcow2"]
    tags = {"omi:snapshots": "2"}

    def split(at: int) -> bool:
        bucket = scene.fresh()
        setup = bucket.worker()
        for key in keys:
            bucket.put(key, samples["qcow2"], tags)
            setup.deliver(key)
        assert bucket.statuses(*keys) == dict.fromkeys(keys, published("app"))
        # The user changes the first disk's tags (the OMI is evaluated again) and, at the
        # same moment, replaces the second disk. The setup's own events come late.
        bucket.retag(keys[0], {**tags, "omi:description": "replaced"})
        bucket.put(keys[1], samples["qcow2-2g"], tags)
        held = bucket.worker()
        runs = {
            "evaluation": lambda worker: worker.deliver(keys[0], "ObjectTagging:Put"),
            "replacement": lambda worker: worker.deliver(keys[1]),
        }
        (other,) = (run for name, run in runs.items() if name != paused)
        reached = paused_run(lambda: runs[paused](held), held.hooks, on(), at, lambda: other(setup))
        setup.deliver_echoes(held)
        where = f"the {paused} held before its S3 call {at}"
        assert bucket.manifests() == ["manifests/app.json"], where
        assert bucket.statuses(*keys) == dict.fromkeys(keys, published("app")), where
        image = bucket.manifest("app")["Image"]
        assert image["Description"] == "replaced", where
        assert [s["Size"] for s in image["Snapshots"]] == [1 << 30, 2 << 30], where
        return reached

    assert each_split(split) > 3


# --- 4b. an invocation that dies after a newer one finished; statuses of members that moved ---


def is_write_to(prefix: str):
    return lambda call: call.operation == "PutObject" and (call.key or "").startswith(prefix)


def test_record_of_an_invocation_that_died_after_a_retag_is_cleared_by_one_pass(scene, samples):
    """W1 inspects, the user retags, W2 files the snapshot in its new OMI; W1 then writes
    its record in the old OMI, publishes it and dies. Its retry finds the snapshot done;
    the next pass sees a record its state does not account for and clears it."""
    key = "old/sda1.qcow2"
    scene.put(key, samples["qcow2"])
    first, second = scene.worker(), scene.worker()
    first.hooks.failing.append(
        lambda call: call.operation == "PutObject" and "/done=" in (call.key or "")
    )

    def retag_and_process() -> None:
        scene.retag(key, {"omi:name": "new"})
        second.deliver(key, "ObjectTagging:Put")

    def dies() -> None:
        with contextlib.suppress(Exception):
            first.deliver(key)

    assert paused_run(
        dies, first.hooks, is_write_to(".omi-state/groups/old/"), 1, retag_and_process
    )
    first.hooks.failing.clear()
    first.deliver(key)  # the platform's retry
    first.deliver_echoes(second)
    Pass(second.pipeline, RENEW_BEFORE).run()
    assert scene.listed_in(key) == ["manifests/new.json"]
    assert scene.manifests() == ["manifests/new.json"]
    assert scene.status(key) == published("new")


def test_record_of_an_invocation_that_died_after_a_deletion_is_cleared_by_one_pass(scene, samples):
    key = "web/sda1.qcow2"
    scene.put(key, samples["qcow2"])
    first, second = scene.worker(), scene.worker()
    first.hooks.failing.append(is_write_to("manifests/"))

    def delete_and_process() -> None:
        scene.delete(key)
        second.deliver(key, "ObjectRemoved:Delete")

    def dies() -> None:
        with contextlib.suppress(Exception):
            first.deliver(key)

    assert paused_run(dies, first.hooks, is_write_to(".omi-state/groups/"), 1, delete_and_process)
    first.hooks.failing.clear()
    first.deliver(key)
    first.deliver_echoes(second)
    assert scene.manifests() == []  # no pass needed
    listed = scene.s3.list_objects_v2(Bucket=scene.bucket, Prefix=".omi-state/groups/")
    assert listed.get("KeyCount", 0) == 0
    # Announcements go once no invocation can still be writing where they point.
    later = replace(first.pipeline, clock=lambda: datetime.now(UTC) + timedelta(hours=2))
    for _ in range(2):  # the first pass clears them; the second must not bring anything back
        Pass(later, RENEW_BEFORE).run()
        assert scene.manifests() == []
    listed = scene.s3.list_objects_v2(Bucket=scene.bucket, Prefix=".omi-state/")
    assert listed.get("KeyCount", 0) == 0


def test_status_from_a_stale_view_never_lands_on_a_member_that_moved(scene, samples):
    a, b = "web/sda1.qcow2", "web/sdb.qcow2"
    setup = scene.worker()
    for key in (a, b):
        scene.put(key, samples["qcow2"], {"omi:snapshots": "2"})
        setup.deliver(key)
    setup.deliver_echoes()
    scene.retag(b, {"omi:snapshots": "2", "omi:description": "x"})
    scene.retag(a, {"omi:name": "app"})
    first, second = scene.worker(), scene.worker()
    reached = paused_run(
        lambda: first.deliver(b, "ObjectTagging:Put"),
        first.hooks,
        lambda call: call.operation == "GetObjectTagging" and call.key == a,
        1,
        lambda: second.deliver(a, "ObjectTagging:Put"),
    )
    assert reached
    first.deliver_echoes(second, setup)
    assert scene.statuses(a, b) == {a: published("app"), b: waiting(1, 2, "web")}
    assert scene.manifests() == ["manifests/app.json"]


def test_tag_set_written_back_with_an_old_status_gets_the_current_one(scene, samples):
    """A user's tool reads the tags, the OMI is published meanwhile, and the tool writes
    the set back with one tag more: the old ``waiting`` status must not stick."""
    a, b = "web/sda1.qcow2", "web/sdb.qcow2"
    worker = scene.worker()
    scene.put(a, samples["qcow2"], {"omi:snapshots": "2"})
    worker.deliver(a)
    worker.deliver_echoes()
    read_earlier = scene.tags(a)
    assert read_earlier["omi:status"] == waiting(1, 2, "web")
    scene.put(b, samples["qcow2"], {"omi:snapshots": "2"})
    worker.deliver(b)
    worker.deliver_echoes()
    scene.retag(a, {**read_earlier, "owner": "team-blue"})
    worker.deliver(a, "ObjectTagging:Put")
    worker.deliver_echoes()
    assert scene.statuses(a, b) == dict.fromkeys((a, b), published("web"))
    assert scene.tags(a)["owner"] == "team-blue"


# --- 5. own writes cause no second work (real notifications, counted at the server) ---------


@pytest.fixture(scope="module")
def served():
    server, log = recording_server()
    yield server, log
    server.stop()


@pytest.fixture
def live(served, monkeypatch):
    """A bucket on the embedded server with notifications into a queue; the user's requests
    are signed with USER_KEY, any other is the pipeline's."""
    server, log = served
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # credentials from this environment
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", PIPELINE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "pipeline-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    session = boto3.Session(
        aws_access_key_id=USER_KEY, aws_secret_access_key="user-secret", region_name=REGION
    )
    user = session.client("s3", endpoint_url=server.url, config=Config(signature_version="s3v4"))
    bucket = Scene(user, server.url)
    bucket.pump = NotificationPump(
        user, session.client("sqs", endpoint_url=server.url), bucket.bucket, bucket.bucket
    )
    bucket.pump.connect()
    bucket.log = log
    log.clear()
    return bucket


def drain(pump: NotificationPump) -> list[dict[str, Any]]:
    """Take every notification waiting in the queue."""
    taken = []
    while batch := pump.sqs.receive_message(QueueUrl=pump.queue_url, MaxNumberOfMessages=10).get(
        "Messages", []
    ):
        for message in batch:
            taken.append(json.loads(message["Body"]))
            pump.sqs.delete_message(QueueUrl=pump.queue_url, ReceiptHandle=message["ReceiptHandle"])
    return [event for event in taken if event.get("Records")]


def invoke(worker: Worker):
    return lambda event: worker.pipeline.handle(object_changes(event))


@pytest.fixture(scope="module")
def large_raw_gz(tmp_path_factory):
    """A raw.gz that does not compress: its stream dwarfs any ranged probe."""
    folder = tmp_path_factory.mktemp("stream")
    raw = folder / "disk.raw"
    raw.write_bytes(os.urandom(2 << 20))
    return images.gzip_file(raw)


def test_own_writes_cause_no_second_inspection_or_publication(live, large_raw_gz):
    key = "stream/sda1.raw.gz"
    live.put(key, large_raw_gz)
    uploaded = drain(live.pump)
    first, second = live.worker(), live.worker()

    def first_invocation() -> None:
        for event in uploaded:
            invoke(first)(event)

    # Held just after its first status write, while the events its writes caused
    # (the status tag's included) are delivered to another invocation.
    paused_run(
        first_invocation,
        first.hooks,
        on("PutObjectTagging", key),
        1,
        lambda: live.pump.pump(invoke(second)),
        after=True,
    )
    live.pump.pump(invoke(second))
    assert live.status(key) == published("stream")
    mine = live.log.besides(USER_KEY)
    size = large_raw_gz.stat().st_size
    reads = [r for r in mine if r.path == f"/{live.bucket}/{key}" and r.operation == "GetObject"]
    served_bytes = bytes_served(reads, size)
    ranges = [r.range for r in reads]
    assert size <= served_bytes < size * 3 // 2, f"{served_bytes} of {size} bytes: {ranges}"
    manifest_puts = [
        r
        for r in mine
        if r.operation == "PutObject" and r.path == f"/{live.bucket}/manifests/stream.json"
    ]
    assert len(manifest_puts) == 1


# --- 6. no signature in the logs ------------------------------------------------------------


def test_no_signature_in_logs_when_the_url_does_not_fit_and_the_status_write_fails(
    scene, samples, monkeypatch, captured_logs, capsys, caplog
):
    token = "FwoGZXIvYXdzEBYaDH" + uuid.uuid4().hex * 40  # far past what 10 tags hold
    secret = "temporary-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIATEMPORARYKEY01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    key = "web/sda1.qcow2"
    scene.put(key, samples["qcow2"])
    worker = scene.worker()
    worker.hooks.failing.append(on("PutObjectTagging", key))
    with contextlib.suppress(Exception):
        worker.deliver(key)
    assert worker.hooks.count(on("PutObjectTagging", key)) >= 1  # the status write was tried
    assert scene.manifests() == []
    out, err = capsys.readouterr()
    emitted = captured_logs.getvalue() + out + err + caplog.text
    assert "X-Amz-Signature" not in emitted
    assert secret not in emitted
    pieces = [token[i : i + 32] for i in range(0, len(token) - 32, 32)]
    assert not [piece for piece in pieces if piece in emitted], "the session token was logged"


# --- 7. quiet passes (counted at the server) ------------------------------------------------


def test_passes_over_an_unchanged_bucket_make_no_write_requests(live, samples, capsys):
    drops = {
        "good/sda1.qcow2": (samples["qcow2"], {}),
        "bad/sda1.raw": (samples["vmdk"], {}),
        "fast/sda1.qcow2": (samples["qcow2"], {"omi:volume-type": "io1"}),  # no iops
        "half/sda1.qcow2": (samples["qcow2"], {"omi:snapshots": "2"}),
        "disks/boot": (samples["qcow2"], {"omi:name": "boot-omi"}),
        "pair/sda1.qcow2": (samples["qcow2"], {"omi:snapshots": "2", "omi:architecture": "i386"}),
        "pair/sdb.qcow2": (samples["qcow2"], {"omi:snapshots": "2", "omi:architecture": "x86_64"}),
    }
    for key, (source, tags) in drops.items():
        live.put(key, source, tags)
    worker = live.worker()
    live.pump.pump(invoke(worker))
    assert live.manifests() == ["manifests/boot-omi.json", "manifests/good.json"]
    for key in ("bad/sda1.raw", "fast/sda1.qcow2", "pair/sda1.qcow2", "pair/sdb.qcow2"):
        assert live.status(key).startswith("error: "), key
    passes = {
        "reconcile and re-sign": lambda: Pass(worker.pipeline, RENEW_BEFORE).run(),
        "re-sign with nothing due": lambda: Pass(worker.pipeline, 0).run(),
        "resign command": lambda: cli.main(
            ["resign", "--endpoint-url", live.endpoint_url, "--bucket", live.bucket]
        ),
    }
    writes = {}
    for name, run in passes.items():
        live.log.clear()
        run()
        assert live.log.besides(USER_KEY), f"{name}: no request of the pipeline seen"
        writes[name] = [(r.operation, r.path) for r in live.log.writes_besides(USER_KEY)]
    capsys.readouterr()
    assert writes == {name: [] for name in passes}


# --- 8. lost events repaired by the scheduled pass ------------------------------------------


def every_tag_pass(scene: Scene) -> Pass:
    """A pass that reads every object's tags (``OMI_TAG_ROUNDS=1``, as polling stages do)."""
    return Pass(scene.worker(replace(scene.settings, tag_rounds=1)).pipeline, RENEW_BEFORE)


def test_pass_processes_a_tag_only_candidate_whose_events_were_lost(scene, samples):
    scene.put("disks/boot", samples["qcow2"], {"omi:name": "boot-omi"})  # no event
    every_tag_pass(scene).run()
    assert scene.status("disks/boot") == published("boot-omi")
    assert scene.listed_in("disks/boot") == ["manifests/boot-omi.json"]


def lose_a_tag_change(scene: Scene, samples) -> str:
    key = "web/sda1.qcow2"
    scene.put(key, samples["qcow2"])
    worker = scene.worker()
    worker.deliver(key)
    worker.deliver_echoes()
    scene.retag(key, {"omi:name": "api"})  # its event is lost
    return key


def test_pass_repairs_a_lost_tag_change(scene, samples):
    key = lose_a_tag_change(scene, samples)
    every_tag_pass(scene).run()
    assert scene.status(key) == published("api")
    assert scene.manifests() == ["manifests/api.json"]


def test_passes_of_one_tag_round_repair_a_lost_tag_change_by_default(scene, samples):
    """By default a published snapshot's tags are read once every OMI_TAG_ROUNDS passes."""
    key = lose_a_tag_change(scene, samples)
    pipeline = scene.worker().pipeline
    rounds, interval = scene.settings.tag_rounds, scene.settings.pass_interval
    assert rounds > 1
    start = datetime(2026, 12, 1, tzinfo=UTC)
    for number in range(rounds):
        moment = start + timedelta(seconds=number * interval)
        Pass(replace(pipeline, clock=lambda moment=moment: moment), RENEW_BEFORE).run()
    assert scene.status(key) == published("api")
    assert scene.manifests() == ["manifests/api.json"]


# --- 9. smaller ------------------------------------------------------------------------------


def test_unicode_digit_iops_gives_an_error_status(scene, samples):
    key = "fast/sda1.qcow2"
    scene.put(key, samples["qcow2"], {"omi:volume-type": "io1", "omi:iops": "\u00b2"})
    scene.worker().deliver(key)  # the event succeeds
    status = scene.status(key)
    assert status.startswith("error: ") and "omi:iops" in status
    assert scene.manifests() == []


def test_zero_ordering_gives_an_error_status(scene, samples):
    key = "zero/sda1.qcow2"
    scene.put(key, samples["qcow2"], {"omi:ordering": "0"})
    scene.worker().deliver(key)
    status = scene.status(key)
    assert status.startswith("error: ") and "omi:ordering" in status
    assert scene.manifests() == []


@pytest.mark.parametrize("suffix", ["", ".json", "\U0010ffff"])
def test_pass_ends_with_a_key_after_the_manifest_prefix_that_sorts_last(scene, samples, suffix):
    scene.put("manifests/\U0010ffff" + suffix, b"not a snapshot")
    scene.put("web/sda1.qcow2", samples["qcow2"])
    worker = scene.worker()
    listings = on("ListObjectsV2")
    # A pass over a bucket this small makes a handful of listings; past MOST_SPLITS it is
    # looping, and failing its listings is what stops it.
    worker.hooks.failing.append(
        lambda call: listings(call) and worker.hooks.count(listings) > MOST_SPLITS
    )
    running = Background(Pass(worker.pipeline, RENEW_BEFORE).run, "pass")
    running.join()
    assert worker.hooks.count(listings) < MOST_SPLITS
    assert scene.status("web/sda1.qcow2") == published("web")


@pytest.mark.parametrize("secret", [None, "not json", '{"aws_access_key_id": "AKIAONLY"}'])
def test_a_signing_secret_missing_or_malformed_gives_error_statuses(scene, samples, secret):
    name = f"omi-manifest/signer-{uuid.uuid4().hex}"
    if secret is not None:
        client = boto3.client("secretsmanager", region_name=REGION)
        client.create_secret(Name=name, SecretString=secret)
    settings = Settings(
        bucket=scene.bucket, region=REGION, public_endpoint_url=PUBLIC, signing_secret=name
    )
    keys = ["signed/sda1.qcow2", "signed/sdb.qcow2"]
    worker = scene.worker(settings)
    for key in keys:
        scene.put(key, samples["qcow2"], {"omi:snapshots": "2"})
        worker.deliver(key)  # the events succeed
    worker.deliver_echoes()
    for key, status in scene.statuses(*keys).items():
        assert status.startswith("error: ") and "secret" in status, (key, status)
    assert scene.manifests() == []
