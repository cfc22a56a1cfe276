"""Issue 15: what users consume is checked, never assumed, and crashes need no pass.

One test per defect an independent review reproduced (each named after its scenario,
each failing on the pipeline before the fencing rule), then the crash harness: for
every scenario below, one invocation is killed before each of its S3 calls in turn,
its event is delivered again (as Lambda retries an asynchronous invocation), and the
bucket must read exactly as after a run where nothing died. No scheduled pass runs.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from chalicelib import overview
from chalicelib.notifications import ObjectChange
from tests.integration.test_interleavings import Scene, is_write_to, published, waiting
from tests.interleave import (
    Background,
    Killed,
    Worker,
    is_manifest_write,
    on,
    paused_run,
    twice_paused_run,
)

MOST_CALLS = 300  # more S3 calls than any one invocation makes: a runaway loop


# --- the seven defects ------------------------------------------------------------------


def publish_two(bucket: Scene, samples, name: str = "app") -> tuple[str, str]:
    keys = (f"{name}/sda1.qcow2", f"{name}/sdb.qcow2")
    setup = bucket.worker()
    for key in keys:
        bucket.put(key, samples["qcow2"], {"omi:snapshots": "2"})
        setup.deliver(key)
    assert bucket.statuses(*keys) == dict.fromkeys(keys, published(name))
    return keys


@pytest.mark.parametrize("change", ["replaced", "renamed"])
def test_stale_manifest_of_a_worker_that_dies_after_writing_it_is_replaced(scene, samples, change):
    """W1 (a retag of sda1) is held before its manifest write while W2 (sdb replaced by a
    2 GiB disk, or sdb.qcow2 swapped for sdb.raw) publishes; W1 then writes a manifest of
    the records it read, and dies. Its event, delivered again, leaves the right manifest."""
    sda, sdb = publish_two(scene, samples)
    scene.retag(sda, {"omi:snapshots": "2", "omi:description": "retagged"})
    if change == "replaced":
        scene.put(sdb, samples["qcow2-2g"], {"omi:snapshots": "2"})
        events = [(sdb, "ObjectCreated:Put")]
    else:
        scene.delete(sdb)
        scene.put("app/sdb.raw", samples["raw"], {"omi:snapshots": "2"})
        events = [(sdb, "ObjectRemoved:Delete"), ("app/sdb.raw", "ObjectCreated:Put")]
    new = [key for key, _ in events]
    first, second = scene.worker(), scene.worker()
    first.hooks.failing.append(lambda call: call.operation == "PutObjectTagging")  # then dies

    def meanwhile() -> None:
        for key, event in events:
            second.deliver(key, event)

    with contextlib.suppress(RuntimeError):
        paused_run(
            lambda: first.deliver(sda, "ObjectTagging:Put"),
            first.hooks,
            is_manifest_write,
            1,
            meanwhile,
        )
    first.hooks.failing.clear()
    first.deliver(sda, "ObjectTagging:Put")  # the platform's retry
    first.deliver_echoes(second)
    image = scene.manifest("app")["Image"]
    assert image["Description"] == "retagged"
    files = [(s["Filename"], s["Size"]) for s in image["Snapshots"]]
    if change == "replaced":
        assert files == [(sda, 1 << 30), (sdb, 2 << 30)]
    else:
        assert files == [(sda, 1 << 30), ("app/sdb.raw", 4 << 20)]
    members = [sda, new[-1]]
    assert scene.statuses(*members) == dict.fromkeys(members, published("app"))


def test_identical_bytes_uploaded_again_with_an_old_tag_set_get_the_current_status(scene, samples):
    sda, sdb = "app/sda1.qcow2", "app/sdb.qcow2"
    worker = scene.worker()
    scene.put(sda, samples["qcow2"], {"omi:snapshots": "2"})
    worker.deliver(sda)
    old_tags = scene.tags(sda)  # a tool reads them while the OMI waits
    assert old_tags["omi:status"] == waiting(1, 2, "app")
    scene.put(sdb, samples["qcow2"], {"omi:snapshots": "2"})
    worker.deliver(sdb)
    scene.put(sda, samples["qcow2"], old_tags)  # same bytes, the tags read earlier
    worker.deliver(sda)
    worker.deliver_echoes()
    assert scene.statuses(sda, sdb) == dict.fromkeys((sda, sdb), published("app"))


def test_object_that_stops_being_a_snapshot_loses_its_status(scene, samples):
    key = "web/disk.bin"  # a candidate by its omi: tag only
    worker = scene.worker()
    scene.put(key, samples["raw"], {"omi:name": "web"})
    worker.deliver(key)
    assert scene.status(key) == published("web")
    tags = {k: v for k, v in scene.tags(key).items() if k != "omi:name"}  # as a console does
    scene.retag(key, tags)
    worker.deliver(key, "ObjectTagging:Put")
    worker.deliver_echoes()
    assert scene.manifests() == []
    assert scene.tags(key) == {}


class Unavailable:
    """The body of a 503 answer, as botocore reads it."""

    def stream(self, **_: Any):
        yield b"<Error><Code>ServiceUnavailable</Code><Message>slow down</Message></Error>"


def test_a_failed_tag_write_is_retried_with_the_tags_read_again(live, samples):
    """The first status write gets a 503; the user adds a tag before the retry. botocore
    would re-send the set it built first; the pipeline reads and merges again. (On the
    embedded server: a 503 answered before sending means nothing was written.)"""
    scene = live
    key = "web/sda1.qcow2"
    scene.put(key, samples["qcow2"])
    worker = scene.worker()
    worker.pipeline.store.pause = lambda _: None
    failed = []

    def fail_first(request: Any, **_: Any) -> AWSResponse | None:
        if failed:
            return None
        failed.append(request)
        scene.retag(key, {**scene.tags(key), "owner": "team-blue"})  # the user, meanwhile
        return AWSResponse(request.url, 503, {}, Unavailable())

    tag_client = worker.pipeline.store.tag_client
    tag_client.meta.events.register("before-send.s3.PutObjectTagging", fail_first)
    worker.deliver(key)
    assert failed, "no status write was made"
    assert scene.tags(key) == {"owner": "team-blue", "omi:status": published("web")}


def test_upload_then_tag_reads_the_content_once(scene, samples):
    key = "web/sda1.raw.gz"
    scene.put(key, samples["raw.gz"])
    created, tagging = scene.worker(), scene.worker()

    def user_tags_it() -> None:
        scene.retag(key, {"omi:description": "tagged a moment later"})
        tagging.deliver(key, "ObjectTagging:Put")

    reached = paused_run(
        lambda: created.deliver(key), created.hooks, on("GetObject", key), 1, user_tags_it
    )
    assert reached
    created.deliver_echoes(tagging)
    reads = created.hooks.count(on("GetObject", key)) + tagging.hooks.count(on("GetObject", key))
    assert tagging.hooks.count(on("GetObject", key)) == 0
    assert reads == created.hooks.count(on("GetObject", key)) > 0
    assert scene.manifest("web")["Image"]["Description"] == "tagged a moment later"
    assert scene.status(key) == published("web")


def test_workers_publishing_in_lockstep_write_one_manifest(scene, samples):
    key = "one/sda1.qcow2"
    scene.put(key, samples["qcow2"])
    first, second = scene.worker(), scene.worker()
    reached = paused_run(
        lambda: first.deliver(key),
        first.hooks,
        is_manifest_write,
        1,
        lambda: second.deliver(key, "ObjectTagging:Put"),
    )
    assert reached
    written = [
        echo
        for worker in (first, second)
        for echo in worker.hooks.take_echoes()
        if echo[0].startswith("manifests/")
    ]
    assert written == [("manifests/one.json", "ObjectCreated:Put")]
    assert scene.status(key) == published("one")
    listed = scene.s3.list_objects_v2(Bucket=scene.bucket, Prefix=".omi-state/groups/one/")
    hints = [item["Key"] for item in listed["Contents"] if "/~published@" in item["Key"]]
    assert len(hints) == 1, "the loser took back its own hint"


@pytest.mark.parametrize("retried_in", ["the same environment", "another environment"])
def test_a_worker_that_dies_after_writing_a_stale_status_leaves_none(scene, samples, retried_in):
    """The victim (sdb's event) decides "2 of 3" and is held before its first status
    write while another worker records sdc and publishes; the victim then writes sda1's
    stale "waiting" status and dies before writing its own. Its own status is current
    (the publisher wrote it), so only a check of every member shows the stale one: the
    event delivered again must correct it, with no pass."""
    keys = ("app/sda1.qcow2", "app/sdb.qcow2", "app/sdc.qcow2")
    setup = scene.worker()
    scene.put(keys[0], samples["qcow2"], {"omi:snapshots": "3"})
    setup.deliver(keys[0])
    for key in keys[1:]:
        scene.put(key, samples["qcow2"], {"omi:snapshots": "3"})
    victim, other = scene.worker(), scene.worker()

    def meanwhile() -> None:
        other.deliver(keys[2])
        assert scene.statuses(*keys) == dict.fromkeys(keys, published("app"))
        victim.hooks.kill_at = len(victim.hooks.calls) + 1  # after the held write

    with contextlib.suppress(Killed):
        paused_run(
            lambda: victim.deliver(keys[1]), victim.hooks, on("PutObjectTagging"), 1, meanwhile
        )
    assert scene.status(keys[0]) == waiting(2, 3, "app")  # the stale write landed
    retry = victim if retried_in == "the same environment" else scene.worker()
    retry.deliver(keys[1])  # the platform delivers the event again
    retry.deliver_echoes(victim, other, setup)
    assert scene.statuses(*keys) == dict.fromkeys(keys, published("app"))


@pytest.mark.parametrize("then", ["another worker publishes", "another disk arrives"])
def test_a_tag_change_left_to_the_upload_under_way_is_not_lost(scene, samples, then):
    """The user moves sda to OMI `other` while its upload's event (L) inspects it; the
    tagging event leaves the work to L (the content is read once). Then, before L writes
    the manifest, another worker publishes the same records (L loses the race and leaves
    the statuses to it), or, after L's first status write, a third disk arrives (L goes
    round). Either way L must still see that sda moved and process it again."""
    sda, sdb, sdc = "app/sda.qcow2", "app/sdb.qcow2", "app/sdc.qcow2"
    count = "2" if then == "another worker publishes" else "3"
    setup = scene.worker()
    scene.put(sdb, samples["qcow2"], {"omi:snapshots": count})
    setup.deliver(sdb)
    scene.put(sda, samples["qcow2"], {"omi:snapshots": count})
    upload, tagging, other = scene.worker(), scene.worker(), scene.worker()

    def retag() -> None:
        scene.retag(sda, {"omi:name": "other"})
        tagging.deliver(sda, "ObjectTagging:Put")  # left to the upload's event

    if then == "another worker publishes":
        second = (
            upload.hooks.pause(is_manifest_write),
            lambda: other.deliver(sdb, "ObjectTagging:Put"),
        )
    else:

        def third_disk() -> None:
            scene.put(sdc, samples["qcow2"], {"omi:snapshots": count})
            other.deliver(sdc)

        second = (upload.hooks.pause(on("PutObjectTagging", sdb), after=True), third_disk)
    twice_paused_run(
        lambda: upload.deliver(sda),
        upload.hooks,
        [(upload.hooks.pause(on("GetObject", sda)), retag), second],
    )
    upload.deliver_echoes(tagging, other, setup)
    assert scene.listed_in(sda) == ["manifests/other.json"]
    assert scene.status(sda) == published("other")


def test_status_does_not_say_published_once_the_manifest_is_deleted_by_hand(scene, samples):
    key = "gzq/sda1.qcow2"
    worker = scene.worker()
    scene.put(key, samples["qcow2"])
    worker.deliver(key)
    (before,) = overview.omi_statuses(worker.pipeline, "gzq")
    assert before.state == "published"
    scene.delete("manifests/gzq.json")
    (after,) = overview.omi_statuses(worker.pipeline, "gzq")
    assert after.state == "pending" and after.manifest is None


# --- found by a second independent review ----------------------------------------------


ME = "AWS:AROAPIPELINE:omi-manifest"  # the pipeline as S3 names it on Lambda


@pytest.mark.parametrize("publisher", ["lives", "dies after the manifest"])
def test_withdrawal_between_a_first_publication_hint_and_its_manifest(scene, samples, publisher):
    """C (sdb's upload) completes `app` and is held before its first manifest PutObject
    (hint written, If-None-Match). Meanwhile sdb is deleted and D processes it: D lists
    {sda} + C's hint, withdraws (deletes no manifest, deletes C's hint). C resumes: its
    If-None-Match write succeeds; its re-list shows sda alone and no hint. Or C dies
    right after that write, and its event is delivered again once sdb is gone."""
    sda, sdb = "app/sda1.qcow2", "app/sdb.qcow2"
    setup = scene.worker()
    scene.put(sda, samples["qcow2"], {"omi:snapshots": "2"})
    setup.deliver(sda)
    scene.put(sdb, samples["qcow2"], {"omi:snapshots": "2"})
    c, d = scene.worker(), scene.worker()
    dies = publisher == "dies after the manifest"

    def meanwhile() -> None:
        scene.delete(sdb)
        d.deliver(sdb, "ObjectRemoved:Delete")
        if dies:
            c.hooks.kill_at = len(c.hooks.calls) + 2  # right after the held write

    if not dies:
        assert paused_run(lambda: c.deliver(sdb), c.hooks, is_manifest_write, 1, meanwhile)
        c.deliver_echoes(d, setup)
        assert scene.status(sda) == waiting(1, 2, "app")
        assert scene.manifests() == [], "a manifest of a deleted disk, with no hint, stays"
        return
    with contextlib.suppress(Killed):
        paused_run(lambda: c.deliver(sdb), c.hooks, is_manifest_write, 1, meanwhile)
    retry = scene.worker()
    retry.deliver(sdb)  # redelivered: sdb is gone now
    retry.deliver_echoes(c, d, setup)
    assert scene.manifests() == [], "orphan manifest survives the retry"


def test_clearing_the_status_of_a_former_candidate_erases_a_newer_status(scene, samples):
    """web/disk.bin is a candidate by its omi:name tag only. The user removes omi:name
    (A handles the tagging event); while A evaluates the old group, the user uploads new
    content with omi:name=web again (B handles it: records, publishes, writes the status).
    A's _clear_status then removes that status with no check; on Lambda its echo is
    dropped by the principal comparison, so nothing puts it back."""
    key = "web/disk.bin"
    setup = scene.worker()
    scene.put(key, samples["raw"], {"omi:name": "web"})
    setup.deliver(key)
    setup.deliver_echoes()
    assert scene.status(key) == published("web")
    a, b = scene.worker(), scene.worker()
    for w in (a, b):
        w.pipeline.own_principal = ME
    scene.retag(key, {"omi:status": published("web")})  # omi:name removed, status kept

    def meanwhile() -> None:
        scene.put(key, samples["qcow2"], {"omi:name": "web"})
        b.deliver(key)
        assert scene.status(key) == published("web")

    held = on("GetObjectTagging", key)  # A's 2nd read of the key: in _clear_status
    assert paused_run(lambda: a.deliver(key, "ObjectTagging:Put"), a.hooks, held, 2, meanwhile)
    for worker in (a, b):
        for echo_key, event in worker.hooks.take_echoes():
            b.pipeline.handle([ObjectChange(scene.bucket, echo_key, event, principal=ME)])
    assert scene.manifests() == ["manifests/web.json"]
    assert scene.status(key) == published("web"), scene.tags(key)


def test_a_candidate_tagged_again_within_the_hour_is_processed(scene, samples):
    """One at a time, nothing concurrent: web/disk.bin (a candidate by omi:name only)
    is published, stops being a candidate, and is tagged again. The last tagging event
    finds the first upload's announcement (young, same ETag) and no record of that ETag:
    _inspection_under_way leaves the work to an inspection that does not exist."""
    key = "web/disk.bin"
    worker = scene.worker()
    scene.put(key, samples["raw"], {"omi:name": "web"})
    worker.deliver(key)
    worker.deliver_echoes()
    assert scene.status(key) == published("web")
    scene.retag(key, {"owner": "team-blue"})  # omi:name removed, as a console does
    worker.deliver(key, "ObjectTagging:Put")
    worker.deliver_echoes()
    assert scene.manifests() == [] and scene.tags(key) == {"owner": "team-blue"}
    scene.retag(key, {"owner": "team-blue", "omi:name": "web"})
    worker.deliver(key, "ObjectTagging:Put")
    worker.deliver_echoes()
    assert scene.manifests() == ["manifests/web.json"]
    assert scene.status(key) == published("web")


def test_identical_bytes_uploaded_again_then_tagged(scene, samples):
    """Upload-then-tag (the spec's common case) of bytes identical to a file deleted
    less than an hour ago."""
    key = "web/disk.bin"
    worker = scene.worker()
    scene.put(key, samples["raw"], {"omi:name": "web"})
    worker.deliver(key)
    worker.deliver_echoes()
    scene.delete(key)
    worker.deliver(key, "ObjectRemoved:Delete")
    worker.deliver_echoes()
    scene.put(key, samples["raw"])  # no tags yet: not a candidate
    worker.deliver(key)
    scene.retag(key, {"omi:name": "web"})
    worker.deliver(key, "ObjectTagging:Put")
    worker.deliver_echoes()
    assert scene.manifests() == ["manifests/web.json"]
    assert scene.status(key) == published("web")


def created(scene, key: str, event: str = "ObjectCreated:Put") -> ObjectChange:
    """The event S3 sends for the object as it is now: an upload's names the ETag and size
    it wrote (and a redelivery names them again, whatever happened since)."""
    if not event.startswith("ObjectCreated"):
        return ObjectChange(scene.bucket, key, event)
    head = scene.s3.head_object(Bucket=scene.bucket, Key=key)
    etag = head["ETag"].strip('"')
    return ObjectChange(scene.bucket, key, event, etag, head["ContentLength"])


def test_a_redelivered_upload_event_carries_the_old_etag(scene, samples):
    """V handles sda1's upload (v1) and is held before writing its record; the user
    replaces sda1 (v2, same tags) and R handles that fully (v2 published). V writes its
    v1 record and dies. Lambda redelivers V's event, which carries v1's ETag and size:
    facts() trusts them, the v1 record is 'own', the v2 record is deleted as stale, and
    v1 (1 GiB) is published again. The harness misses this: Worker.deliver sends events
    without an ETag, so facts() HEADs."""
    key = "app/sda1.qcow2"
    scene.put(key, samples["qcow2"])
    first = created(scene, key)
    victim, other = scene.worker(), scene.worker()

    def meanwhile() -> None:
        scene.put(key, samples["qcow2-2g"])
        other.pipeline.handle([created(scene, key)])
        assert scene.manifest("app")["Image"]["Snapshots"][0]["Size"] == 2 << 30
        victim.hooks.kill_at = len(victim.hooks.calls) + 2  # dies after the held write

    with contextlib.suppress(Killed):
        paused_run(
            lambda: victim.pipeline.handle([first]),
            victim.hooks,
            is_write_to(".omi-state/groups/"),
            1,
            meanwhile,
        )
    retry = scene.worker()
    retry.pipeline.handle([first])  # the same event, delivered again
    retry.deliver_echoes(victim, other)
    assert scene.manifest("app")["Image"]["Snapshots"][0]["Size"] == 2 << 30


def test_a_current_manifest_whose_hint_went_missing_gets_it_back_unchanged(scene, samples):
    """A tidy that listed the old hint can delete a renewal's new one after the renewal
    wrote it and before its manifest landed (the renewal then drops the old one): the
    manifest is current, and no hint says so. The next evaluation writes the hint
    again; it neither republishes nor loops on conditional writes it cannot win."""
    key = "one/sda1.qcow2"
    worker = scene.worker()
    scene.put(key, samples["qcow2"])
    worker.deliver(key)
    before = scene.s3.head_object(Bucket=scene.bucket, Key="manifests/one.json")["ETag"]
    prefix = ".omi-state/groups/one/"
    (hint,) = [
        item["Key"]
        for item in scene.s3.list_objects_v2(Bucket=scene.bucket, Prefix=prefix)["Contents"]
        if "/~published@" in item["Key"]
    ]
    scene.s3.delete_object(Bucket=scene.bucket, Key=hint)
    again = scene.worker()
    again.deliver(key)  # a duplicate event
    listed = scene.s3.list_objects_v2(Bucket=scene.bucket, Prefix=prefix)["Contents"]
    assert [item["Key"] for item in listed if "/~published@" in item["Key"]] == [hint]
    after = scene.s3.head_object(Bucket=scene.bucket, Key="manifests/one.json")["ETag"]
    assert after == before
    assert again.hooks.count(is_manifest_write) == 0
    assert scene.status(key) == published("one")


def test_tag_change_left_to_an_upload_whose_record_a_stale_worker_deleted(scene, samples):
    """U uploads web/disk.bin (omi:name=web, t1) and is held before its record write.
    User removes omi:name (t2): S reads t2 and is held. User sets omi:name=web again (t3):
    T's tagging event finds U's young announcement, no record: left to U. U writes its
    record A(t1); S resumes, deletes it, marks the announcement ~left, has no status to
    clear (_clear_status returns False without reading tags). U evaluates 'web': empty,
    writes no status of the key, sees no drift. Nobody processes t3."""
    key = "web/disk.bin"
    scene.put(key, samples["raw"], {"omi:name": "web"})
    u, s, t = scene.worker(), scene.worker(), scene.worker()
    held_s = s.hooks.pause(on("GetObjectTagging", key), 1, after=True)
    box = {}

    def m1() -> None:
        scene.retag(key, {"owner": "x"})
        box["s"] = Background(lambda: s.deliver(key, "ObjectTagging:Put"), "stale")
        assert held_s.wait(box["s"])
        scene.retag(key, {"owner": "x", "omi:name": "web"})
        t.deliver(key, "ObjectTagging:Put")  # left to U

    def m2() -> None:
        held_s.release()
        box["s"].join()

    twice_paused_run(
        lambda: u.deliver(key),
        u.hooks,
        [
            (u.hooks.pause(is_write_to(".omi-state/groups/")), m1),
            (u.hooks.pause(is_write_to(".omi-state/groups/"), after=True), m2),
        ],
    )
    u.deliver_echoes(s, t)
    assert scene.status(key) == published("web"), scene.tags(key)


# --- the crash harness -------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """The user's steps before, one invocation (the one that is killed), and what happens
    before its event comes again: the user's next step and its event, handled by another
    invocation. Each step is run on a bucket by a healthy worker, one at a time."""

    before: Callable[[Scene, dict, Worker], None]
    victim: tuple[str, str]  # key, event
    meanwhile: Callable[[Scene, dict, Worker], None] = lambda *_: None


def drop(*keys: str, source: str = "qcow2", **tags: str):
    def step(bucket: Scene, samples: dict, worker: Worker) -> None:
        for key in keys:
            bucket.put(key, samples[source], {k.replace("_", ":", 1): v for k, v in tags.items()})
            worker.deliver(key)

    return step


def steps(*parts):
    def step(bucket: Scene, samples: dict, worker: Worker) -> None:
        for part in parts:
            part(bucket, samples, worker)

    return step


def user(action: Callable[[Scene, dict], None]):
    return lambda bucket, samples, _worker: action(bucket, samples)


TWO = {"omi_snapshots": "2"}
SCENARIOS = {
    "first-drop": Scenario(
        user(lambda b, s: b.put("web/sda1.qcow2", s["qcow2"])),
        ("web/sda1.qcow2", "ObjectCreated:Put"),
    ),
    "completes-two-disks": Scenario(
        steps(
            drop("app/sda1.qcow2", **TWO),
            user(lambda b, s: b.put("app/sdb.qcow2", s["qcow2-2g"], {"omi:snapshots": "2"})),
        ),
        ("app/sdb.qcow2", "ObjectCreated:Put"),
    ),
    "retag-to-another-omi": Scenario(
        steps(
            drop("app/sda1.qcow2", "app/sdb.qcow2", **TWO),
            user(lambda b, s: b.retag("app/sdb.qcow2", {"omi:name": "other"})),
        ),
        ("app/sdb.qcow2", "ObjectTagging:Put"),
    ),
    "deletion-withdraws": Scenario(
        steps(
            drop("app/sda1.qcow2", "app/sdb.qcow2", **TWO),
            user(lambda b, s: b.delete("app/sdb.qcow2")),
        ),
        ("app/sdb.qcow2", "ObjectRemoved:Delete"),
    ),
    "replacement-republishes": Scenario(
        steps(drop("app/sda1.qcow2"), user(lambda b, s: b.put("app/sda1.qcow2", s["qcow2-2g"]))),
        ("app/sda1.qcow2", "ObjectCreated:Put"),
    ),
    "bad-file-fixed": Scenario(
        steps(
            drop("app/sda1.raw", source="vmdk", **TWO),
            drop("app/sdb.qcow2", **TWO),
            user(lambda b, s: b.put("app/sda1.raw", s["raw"], {"omi:snapshots": "2"})),
        ),
        ("app/sda1.raw", "ObjectCreated:Put"),
    ),
    "tag-only-candidate-leaves": Scenario(
        steps(
            drop("web/disk.bin", source="raw", omi_name="web"),
            user(lambda b, s: b.retag("web/disk.bin", {"owner": "team-blue"})),
        ),
        ("web/disk.bin", "ObjectTagging:Put"),
    ),
    "old-tag-set-written-back": Scenario(
        steps(
            drop("app/sda1.qcow2", "app/sdb.qcow2", **TWO),
            user(
                lambda b, s: b.retag(
                    "app/sda1.qcow2", {"omi:snapshots": "2", "omi:status": waiting(1, 2, "app")}
                )
            ),
        ),
        ("app/sda1.qcow2", "ObjectTagging:Put"),
    ),
    "tagged-while-waiting": Scenario(
        steps(
            drop("app/sda1.qcow2", **TWO),
            user(lambda b, s: b.retag("app/sda1.qcow2", {"omi:snapshots": "1"})),
        ),
        ("app/sda1.qcow2", "ObjectTagging:Put"),
    ),
    "bad-file-deleted": Scenario(
        steps(
            drop("app/sda1.raw", source="vmdk", **TWO),
            drop("app/sdb.qcow2", **TWO),
            user(lambda b, s: b.delete("app/sda1.raw")),
        ),
        ("app/sda1.raw", "ObjectRemoved:Delete"),
    ),
    "disagreeing-image-tags": Scenario(
        steps(
            drop("xyz/sda1.qcow2", omi_snapshots="3", omi_architecture="x86_64"),
            user(
                lambda b, s: b.put(
                    "xyz/sdb.qcow2",
                    s["qcow2"],
                    {"omi:snapshots": "3", "omi:architecture": "i386"},
                )
            ),
        ),
        ("xyz/sdb.qcow2", "ObjectCreated:Put"),
    ),
    "tagged-while-inspected": Scenario(
        user(lambda b, s: b.put("web/sda1.raw.gz", s["raw.gz"])),
        ("web/sda1.raw.gz", "ObjectCreated:Put"),
        steps(
            user(lambda b, s: b.retag("web/sda1.raw.gz", {"omi:description": "later"})),
            lambda b, s, worker: worker.deliver("web/sda1.raw.gz", "ObjectTagging:Put"),
        ),
    ),
    "replaced-while-evaluated": Scenario(
        steps(
            drop("app/sda1.qcow2", "app/sdb.qcow2", **TWO),
            user(
                lambda b, s: b.retag(
                    "app/sda1.qcow2", {"omi:snapshots": "2", "omi:description": "retagged"}
                )
            ),
        ),
        ("app/sda1.qcow2", "ObjectTagging:Put"),
        steps(
            user(lambda b, s: b.put("app/sdb.qcow2", s["qcow2-2g"], {"omi:snapshots": "2"})),
            lambda b, s, worker: worker.deliver("app/sdb.qcow2", "ObjectCreated:Put"),
        ),
    ),
    "replaced-while-its-upload-is-dead": Scenario(
        user(lambda b, s: b.put("web/sda1.qcow2", s["qcow2"])),
        ("web/sda1.qcow2", "ObjectCreated:Put"),  # delivered again with the first ETag
        steps(
            user(lambda b, s: b.put("web/sda1.qcow2", s["qcow2-2g"])),
            lambda b, s, worker: worker.deliver("web/sda1.qcow2", "ObjectCreated:Put"),
        ),
    ),
    "invalid-iops": Scenario(
        user(
            lambda b, s: b.put(
                "web/sda1.qcow2", s["qcow2"], {"omi:volume-type": "io1", "omi:iops": "5"}
            )
        ),
        ("web/sda1.qcow2", "ObjectCreated:Put"),
    ),
}


def observed(bucket: Scene) -> dict[str, Any]:
    """What a user reads, and the records that decide it (announcements aside: they only
    say where a record may be, and the pass prunes old ones)."""
    found: dict[str, Any] = {}
    listed = bucket.s3.list_objects_v2(Bucket=bucket.bucket).get("Contents", [])
    for item in listed:
        key = item["Key"]
        if key.startswith(".omi-state/objects/"):
            continue
        if key.startswith(".omi-state/groups/"):
            found[key.rsplit("@", 2)[0] if "/~published@" in key else key] = "record"
        elif key.startswith("manifests/"):
            document = json.loads(
                bucket.s3.get_object(Bucket=bucket.bucket, Key=key)["Body"].read()
            )
            for snapshot in document["Image"]["Snapshots"]:
                snapshot.pop("PreSignedUrl")
            found[key] = (document, sorted(bucket.tags(key)))
        else:
            found[key] = bucket.tags(key)
    return found


def run_scenario(bucket: Scene, samples: dict, scenario: Scenario, kill_at: int | None) -> int:
    """The scenario with the victim killed before its ``kill_at``-th S3 call and its event
    delivered again; how many calls the victim made."""
    setup = bucket.worker()
    scenario.before(bucket, samples, setup)
    setup.deliver_echoes()
    victim = bucket.worker()
    victim.hooks.kill_at = kill_at
    key, event = scenario.victim
    change = created(bucket, key, event)  # as S3 sends it, ETag and size included
    with contextlib.suppress(Killed):
        victim.pipeline.handle([change])
    made = len(victim.hooks.calls)
    other = bucket.worker()
    scenario.meanwhile(bucket, samples, other)
    retry = bucket.worker()
    retry.pipeline.handle([change])  # the platform delivers the same event again
    retry.deliver_echoes(victim, other)
    return made


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_crash_before_any_call_ends_as_if_nothing_died(scene, samples, name):
    scenario = SCENARIOS[name]
    reference = scene.fresh()
    calls = run_scenario(reference, samples, scenario, None)
    expected = observed(reference)
    assert calls > 1
    for kill_at in range(1, min(calls, MOST_CALLS) + 1):
        bucket = scene.fresh()
        run_scenario(bucket, samples, scenario, kill_at)
        assert observed(bucket) == expected, f"{name}: killed before S3 call {kill_at}"
