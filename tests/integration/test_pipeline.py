"""Spec section 5 behaviours of the event pipeline, against moto."""

from __future__ import annotations

import threading

import pytest

from chalicelib import manifest, signing
from tests import images, sigv4
from tests.harness import BUCKET, NOW
from tests.integration.conftest import PUBLIC


def test_single_disk_without_tags_is_published(omi, samples):
    omi.drop("web-server/sda1.qcow2", samples["qcow2"])
    assert omi.status("web-server/sda1.qcow2") == "published: manifests/web-server.json"
    document = omi.manifest("web-server")
    assert manifest.validate(document) == []
    image = document["Image"]
    assert image["Name"] == "web-server"
    assert image["ProductTypes"] == ["0001"] and image["Architecture"] == "x86_64"
    assert "User" not in image and image["Description"] == ""
    (snap,) = image["Snapshots"]
    assert snap["Filename"] == "web-server/sda1.qcow2"
    assert snap["Device"] == "/dev/sda1" and snap["Ordering"] == 1
    assert snap["Size"] == images.info(samples["qcow2"])["virtual-size"]
    assert snap["CompressedSize"] == samples["qcow2"].stat().st_size
    assert snap["VolumeType"] == "standard" and snap["Iops"] is None
    assert snap["DeleteOnTermination"] is True
    checked = sigv4.verify(snap["PreSignedUrl"], omi.keys.secret_key, NOW)
    assert checked["path"] == f"/{BUCKET}/web-server/sda1.qcow2"
    url = omi.manifest_url("web-server")
    assert url.startswith(f"{PUBLIC}/{BUCKET}/manifests/web-server.json?X-Amz-Algorithm=")
    sigv4.verify(url, omi.keys.secret_key, NOW)
    tags = omi.tags("manifests/web-server.json")
    assert tags["omi:expires"] == "2026-12-07T18:40:00Z"


def test_two_disks_grouped_by_tags(omi, samples):
    tags = {"omi:name": "db-1", "omi:snapshots": "2"}
    omi.drop("uploads/root.raw.gz", samples["raw.gz"], {**tags, "omi:device": "/dev/sda1"})
    assert omi.status("uploads/root.raw.gz") == "waiting: 1 of 2 snapshots of db-1"
    assert not omi.exists("manifests/db-1.json")
    omi.drop("uploads/data.qcow2.gz", samples["qcow2.gz"], {**tags, "omi:device": "/dev/sdb"})
    snaps = omi.manifest("db-1")["Image"]["Snapshots"]
    assert [s["Device"] for s in snaps] == ["/dev/sda1", "/dev/sdb"]
    assert [s["Ordering"] for s in snaps] == [1, 2]
    assert all(s["Size"] == 4 << 20 for s in snaps)
    assert omi.status("uploads/root.raw.gz") == "published: manifests/db-1.json"


def test_duplicate_events_change_nothing(omi, samples):
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    first = omi.manifest("web")
    assert omi.writes_during(lambda: omi.deliver("web/sda1.qcow2", "web/sda1.qcow2")) == []
    assert omi.manifest("web") == first


def test_reordered_events_same_end_state(omi, samples):
    tags = {"omi:snapshots": "2"}
    omi.put("app/sdb.qcow2", samples["qcow2"], tags)
    omi.put("app/sda.qcow2", samples["qcow2"], tags)
    omi.deliver("app/sdb.qcow2")
    omi.deliver("app/sdb.qcow2", event="ObjectRemoved:Delete")  # a stale removal
    omi.deliver("app/sda.qcow2")
    assert [s["Device"] for s in omi.manifest("app")["Image"]["Snapshots"]] == [
        "/dev/sda1",
        "/dev/sdb",
    ]


def test_replaced_object_is_republished(omi, samples):
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    omi.drop("web/sda1.qcow2", samples["qcow2-2g"])
    (snap,) = omi.manifest("web")["Image"]["Snapshots"]
    assert snap["Size"] == 2 << 30
    assert snap["CompressedSize"] == samples["qcow2-2g"].stat().st_size


def test_deleted_snapshot_withdraws_manifest(omi, samples):
    tags = {"omi:snapshots": "2"}
    omi.drop("db-1/sda.qcow2", samples["qcow2"], tags)
    omi.drop("db-1/sdb.qcow2", samples["qcow2"], tags)
    assert omi.exists("manifests/db-1.json")
    omi.delete("db-1/sdb.qcow2")
    omi.deliver("db-1/sdb.qcow2", event="ObjectRemoved:Delete")
    assert not omi.exists("manifests/db-1.json")
    assert omi.status("db-1/sda.qcow2") == "waiting: 1 of 2 snapshots of db-1"


def test_retagging_moves_a_snapshot_to_its_new_omi(omi, samples):
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    assert omi.exists("manifests/web.json")
    omi.retag("web/sda1.qcow2", {"omi:name": "api"})
    omi.deliver("web/sda1.qcow2", event="ObjectTagging:Put")
    assert not omi.exists("manifests/web.json")
    assert omi.manifest("api")["Image"]["Snapshots"][0]["Filename"] == "web/sda1.qcow2"
    assert omi.status("web/sda1.qcow2") == "published: manifests/api.json"


def test_bad_file_blocks_only_its_omi(omi, samples):
    tags = {"omi:snapshots": "2"}
    omi.drop("bad/sda.qcow2", samples["qcow2"], tags)
    omi.drop("bad/sdb.raw", samples["vmdk"], tags)
    omi.drop("good/sda1.qcow2", samples["qcow2"])
    assert omi.status("bad/sdb.raw") == (
        "error: file named .raw is a VMDK image - OUTSCALE imports qcow2 and raw only - "
        "convert it with qemu-img convert -O qcow2"
    )
    assert omi.status("bad/sda.qcow2").startswith("error: OMI bad is blocked by bad/sdb.raw: ")
    assert not omi.exists("manifests/bad.json")
    assert omi.exists("manifests/good.json")


@pytest.mark.parametrize(
    ("drops", "key", "message"),
    [
        (
            [("xyz/sda1.qcow2", {"omi:volume-type": "fast"})],
            "xyz/sda1.qcow2",
            "error: omi:volume-type fast is not one of standard gp2 io1",
        ),
        (
            [("xyz/sda1.qcow2", {"omi:volume-type": "io1"})],
            "xyz/sda1.qcow2",
            "error: omi:volume-type io1 needs omi:iops - set omi:iops to a whole number",
        ),
        (
            [
                ("xyz/sda.qcow2", {"omi:snapshots": "2", "omi:architecture": "x86_64"}),
                ("xyz/sdb.qcow2", {"omi:snapshots": "2", "omi:architecture": "i386"}),
            ],
            "xyz/sdb.qcow2",
            "error: snapshots disagree on omi:architecture: x86_64 on xyz/sda.qcow2 and i386 on "
            "xyz/sdb.qcow2 - set it on one snapshot only",
        ),
        (
            [
                ("xyz/a.qcow2", {"omi:snapshots": "2", "omi:device": "/dev/sdb"}),
                ("xyz/b.qcow2", {"omi:snapshots": "2", "omi:device": "/dev/sdb"}),
            ],
            "xyz/a.qcow2",
            "error: two snapshots of xyz use /dev/sdb: xyz/a.qcow2 and xyz/b.qcow2 - "
            "set omi:device on one of them",
        ),
        (
            [("xyz/sda.qcow2", {}), ("xyz/sdb.qcow2", {})],
            "xyz/sdb.qcow2",
            "error: xyz has 2 snapshots but none has omi:snapshots - tag each "
            "omi:snapshots=2 and its omi:device - /dev/sda1 for the boot disk - or upload them "
            "with omi-manifest put",
        ),
        (
            [("xyz/disk.qcow2", {"omi:snapshots": "2"})],
            "xyz/disk.qcow2",
            "error: cannot tell the device of xyz/disk.qcow2 - name the file after its device "
            "such as sdb.qcow2 or set the omi:device tag",
        ),
        (
            [("xyz/sda1.qcow2", {"omi:name": "ab"})],
            "xyz/sda1.qcow2",
            "error: OMI name ab is invalid - use 3 to 128 letters digits spaces and _ / . - "
            "or parentheses",
        ),
        (
            [("xyz/sda1.qcow2", {"omi:name": "web/../manifests"})],
            "xyz/sda1.qcow2",
            "error: OMI name web/../manifests is invalid - no leading or trailing / and no . or "
            ".. parts",
        ),
        (
            [("sda1.qcow2", {})],
            "sda1.qcow2",
            "error: sda1.qcow2 is at the bucket root - put it in a folder named after its OMI "
            "or set the omi:name tag",
        ),
    ],
    ids=[
        "volume-type",
        "io1-without-iops",
        "image-tags-conflict",
        "same-device",
        "too-many",
        "no-device",
        "short-name",
        "path-trick",
        "bucket-root",
    ],
)
def test_invalid_tags_give_precise_messages(omi, samples, drops, key, message):
    for dropped, tags in drops:
        omi.drop(dropped, samples["qcow2"], tags)
    assert omi.status(key) == message
    listed = omi.s3.list_objects_v2(Bucket=BUCKET, Prefix="manifests/")
    assert listed.get("KeyCount", 0) == 0


def test_status_skipped_when_object_has_ten_tags(omi, samples):
    tags = {f"team{i}": "x" for i in range(10)}
    omi.drop("web/sda1.qcow2", samples["qcow2"], tags)
    assert "omi:status" not in omi.tags("web/sda1.qcow2")
    assert omi.exists("manifests/web.json")


def test_temporary_credentials_too_long_for_tags(omi, samples):
    omi.keys = signing.SigningKeys("ASIATEMP", "s", session_token="T" * 900)
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    assert omi.status("web/sda1.qcow2") == (
        "error: signing needs long-term keys - configure the signing secret"
    )
    assert not omi.exists("manifests/web.json")


def test_names_that_url_encode_get_a_tag_safe_manifest_key(omi, samples):
    omi.drop("Web Server (prod)/sda1.qcow2", samples["qcow2"])
    status = omi.status("Web Server (prod)/sda1.qcow2")
    assert status.startswith("published: manifests/Web_Server__prod_-")
    key = status.removeprefix("published: ")
    body = omi.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert b'"Name": "Web Server (prod)"' in body
    sigv4.verify(signing.url_from_tags(omi.tags(key)), omi.keys.secret_key, NOW)


def test_two_snapshots_completing_at_once_publish_one_manifest(omi, samples):
    tags = {"omi:snapshots": "2"}
    omi.put("race/sda.qcow2", samples["qcow2"], tags)
    omi.put("race/sdb.qcow2", samples["qcow2-2g"], tags)
    start = threading.Barrier(2)

    def deliver(key):
        start.wait()
        omi.deliver(key)

    threads = [
        threading.Thread(target=deliver, args=(k,)) for k in ("race/sda.qcow2", "race/sdb.qcow2")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = omi.s3.list_objects_v2(Bucket=BUCKET, Prefix="manifests/")
    assert [item["Key"] for item in listed["Contents"]] == ["manifests/race.json"]
    snaps = omi.manifest("race")["Image"]["Snapshots"]
    assert [(s["Device"], s["Size"]) for s in snaps] == [
        ("/dev/sda1", 1 << 30),
        ("/dev/sdb", 2 << 30),
    ]
    assert (
        omi.status("race/sda.qcow2")
        == omi.status("race/sdb.qcow2")
        == ("published: manifests/race.json")
    )
