"""The scheduled pass, with a controllable clock: re-signing and reconciling."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from chalicelib import manifest
from chalicelib.scheduler import Pass
from tests import sigv4
from tests.harness import BUCKET, NOW

WINDOW = 48 * 3600


def run_pass(omi, **options):
    return Pass(omi.pipeline, WINDOW, **options).run()


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def state_keys(omi, prefix):
    listed = omi.s3.list_objects_v2(Bucket=BUCKET, Prefix=f".omi-state/{prefix}")
    return [item["Key"] for item in listed.get("Contents", [])]


def hints(omi):
    """The publication hints: one per published OMI."""
    return [key for key in state_keys(omi, "groups/") if "/~published@" in key]


def test_manifest_inside_the_window_is_renewed(omi, samples):
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    before_url = omi.manifest_url("web")
    before_snapshot = omi.manifest("web")["Image"]["Snapshots"][0]["PreSignedUrl"]
    omi.now = NOW + timedelta(days=6)  # expires in 24 h, inside the 48 h window
    report = run_pass(omi)
    assert report.outcomes["renewed"] == 1
    url = omi.manifest_url("web")
    assert query(url)["X-Amz-Date"] == "20261206T184000Z" != query(before_url)["X-Amz-Date"]
    assert query(url)["X-Amz-Signature"] != query(before_url)["X-Amz-Signature"]
    assert omi.tags("manifests/web.json")["omi:expires"] == "2026-12-13T18:40:00Z"
    document = omi.manifest("web")
    assert manifest.validate(document) == []
    snapshot_url = document["Image"]["Snapshots"][0]["PreSignedUrl"]
    assert snapshot_url != before_snapshot
    for fresh in (url, snapshot_url):
        sigv4.verify(fresh, omi.keys.secret_key, NOW + timedelta(days=12))
    assert len(hints(omi)) == 1


def test_manifest_outside_the_window_is_not_touched(omi, samples):
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    omi.now = NOW + timedelta(days=4)  # 72 h left
    assert omi.writes_during(lambda: run_pass(omi)) == []


def test_replaced_snapshot_is_republished_with_its_new_size(omi, samples):
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    omi.put("web/sda1.qcow2", samples["qcow2-2g"])  # no event
    omi.now = NOW + timedelta(days=6)
    run_pass(omi)
    assert omi.manifest("web")["Image"]["Snapshots"][0]["Size"] == 2 << 30


def test_deleted_snapshot_withdraws_the_manifest(omi, samples):
    tags = {"omi:snapshots": "2"}
    omi.drop("db-1/sda.qcow2", samples["qcow2"], tags)
    omi.drop("db-1/sdb.qcow2", samples["qcow2"], tags)
    omi.delete("db-1/sdb.qcow2")  # no event
    omi.now = NOW + timedelta(days=6)
    run_pass(omi)
    assert not omi.exists("manifests/db-1.json")
    assert omi.status("db-1/sda.qcow2") == "waiting: 1 of 2 snapshots of db-1"
    assert hints(omi) == []


def test_snapshot_uploaded_while_events_were_off_is_published(omi, samples):
    omi.put("quiet/sda1.qcow2", samples["qcow2"])  # no event
    report = run_pass(omi)
    assert report.outcomes["reconciled"] == 1
    assert omi.status("quiet/sda1.qcow2") == "published: manifests/quiet.json"


def test_state_of_vanished_objects_is_removed(omi, samples):
    omi.drop("gone/sda1.qcow2", samples["qcow2"])
    omi.delete("gone/sda1.qcow2")  # no event, not due
    run_pass(omi)
    assert not omi.exists("manifests/gone.json")
    assert state_keys(omi, "groups/") == []
    # Announcements outlive the grace period in which an invocation may still write.
    assert state_keys(omi, "objects/") != []
    omi.now = datetime.now(UTC) + timedelta(hours=2)  # the store's clock dates them
    run_pass(omi)
    assert state_keys(omi, "") == []


def test_renewal_can_be_switched_off_per_manifest(omi, samples):
    omi.drop("keep/sda1.qcow2", samples["qcow2"])
    tags = omi.tags("manifests/keep.json") | {"omi:renew": "false"}
    omi.retag("manifests/keep.json", tags)
    omi.now = NOW + timedelta(days=6)
    assert omi.writes_during(lambda: run_pass(omi)) == []
    omi.retag("manifests/keep.json", tags | {"omi:renew": "true"})
    run_pass(omi)
    renewed = omi.tags("manifests/keep.json")
    assert renewed["omi:expires"] == "2026-12-13T18:40:00Z" and renewed["omi:renew"] == "true"


def final_state(omi):
    names = ["m-a", "m-b", "m-c", "m-d"]
    manifests = {n: omi.manifest(n)["Image"]["Snapshots"][0]["Size"] for n in names}
    members = [k for k in state_keys(omi, "groups/") if "/~published@" not in k]
    return manifests, sorted(hints(omi)), sorted(members)


def build_bucket(omi, samples):
    for name in ("m-a", "m-b", "m-c", "m-d"):
        omi.drop(f"{name}/sda1.qcow2", samples["qcow2"])
    omi.put("m-b/sda1.qcow2", samples["qcow2-2g"])  # changed without an event
    omi.now = NOW + timedelta(days=6)


def test_interrupted_pass_then_next_pass_ends_in_the_same_state(omi, samples):
    build_bucket(omi, samples)
    calls = iter(range(1000))
    report = run_pass(omi, workers=1, time_left=lambda: 1000.0 if next(calls) < 3 else 0.0)
    assert report.unfinished and report.outcomes["postponed"] >= 1
    assert not run_pass(omi).unfinished
    interrupted = final_state(omi)
    assert interrupted[0] == {"m-a": 1 << 30, "m-b": 2 << 30, "m-c": 1 << 30, "m-d": 1 << 30}
    assert len(interrupted[1]) == 4
    assert all(
        omi.tags(f"manifests/{n}.json")["omi:expires"] == "2026-12-13T18:40:00Z"
        for n in ("m-a", "m-b", "m-c", "m-d")
    )


def test_two_passes_at_once_leave_valid_manifests_and_no_duplicates(omi, samples):
    build_bucket(omi, samples)
    threads = [threading.Thread(target=run_pass, args=(omi,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    manifests, expiry, groups = final_state(omi)
    assert manifests == {"m-a": 1 << 30, "m-b": 2 << 30, "m-c": 1 << 30, "m-d": 1 << 30}
    assert len(expiry) == 4 and len(groups) == 4
    for name in manifests:
        assert manifest.validate(omi.manifest(name)) == []
        sigv4.verify(omi.manifest_url(name), omi.keys.secret_key, omi.now)


def test_pass_short_of_time_postpones_sizing_a_raw_gz_instead_of_failing_it(omi, samples):
    omi.put("late/sda1.raw.gz", samples["raw.gz"])  # no event: the pass finds it
    ceiling = omi.pipeline.settings.ceilings.max_seconds
    report = run_pass(omi, time_left=lambda: ceiling)  # less than sizing may take
    assert report.outcomes["postponed"] == 1 and report.unfinished
    assert "omi:status" not in omi.tags("late/sda1.raw.gz")
    report = run_pass(omi)
    assert omi.status("late/sda1.raw.gz") == "published: manifests/late.json"
