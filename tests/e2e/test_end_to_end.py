"""Snapshots dropped into a live S3-compatible server come out as a working manifest."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from chalicelib import manifest
from tests import images, sigv4
from tests.e2e.conftest import SECRET


def check_published(live, name: str, dropped: dict[str, object]) -> dict:
    """Download the manifest and every snapshot through their URLs, and check it all."""
    url = live.manifest_url(name)
    sigv4.verify(url, SECRET, datetime.now(UTC))
    document = live.fetch_manifest(name)
    assert manifest.validate(document) == []
    assert document["Image"]["Name"] == name
    for snap in document["Image"]["Snapshots"]:
        source = dropped[snap["Filename"]]
        sigv4.verify(snap["PreSignedUrl"], SECRET, datetime.now(UTC))
        assert live.fetch(snap["PreSignedUrl"]) == source.read_bytes()
        assert snap["CompressedSize"] == source.stat().st_size
        assert live.tags(snap["Filename"])["omi:status"] == f"published: manifests/{name}.json"
    return document


def test_single_disk_with_no_tags(live, samples):
    live.drop("web-server/sda1.qcow2", samples["qcow2"])
    document = check_published(live, "web-server", {"web-server/sda1.qcow2": samples["qcow2"]})
    (snap,) = document["Image"]["Snapshots"]
    assert snap["Size"] == images.info(samples["qcow2"])["virtual-size"]
    assert snap["Device"] == "/dev/sda1"


def test_two_disks_grouped_by_tags(live, samples, tmp_path):
    tags = {"omi:name": "database", "omi:snapshots": "2", "omi:architecture": "x86_64"}
    live.drop("uploads/root.raw.gz", samples["raw.gz"], {**tags, "omi:device": "/dev/sda1"})
    assert live.tags("uploads/root.raw.gz")["omi:status"] == "waiting: 1 of 2 snapshots of database"
    live.drop("uploads/data.qcow2.gz", samples["qcow2.gz"], {**tags, "omi:device": "/dev/sdb"})
    document = check_published(
        live,
        "database",
        {"uploads/root.raw.gz": samples["raw.gz"], "uploads/data.qcow2.gz": samples["qcow2.gz"]},
    )
    sizes = {s["Device"]: s["Size"] for s in document["Image"]["Snapshots"]}
    assert sizes == {
        "/dev/sda1": images.info(samples["raw"])["virtual-size"],
        "/dev/sdb": images.info(samples["raw"])["virtual-size"],
    }


def test_second_snapshot_arrives_last(live, samples):
    live.drop("app-server/sdb.qcow2", samples["qcow2-2g"], {"omi:snapshots": "2"})
    assert not live.s3.list_objects_v2(Bucket=live.bucket, Prefix="manifests/").get("Contents")
    live.drop("app-server/sda.qcow2", samples["qcow2"])
    document = check_published(
        live,
        "app-server",
        {"app-server/sda.qcow2": samples["qcow2"], "app-server/sdb.qcow2": samples["qcow2-2g"]},
    )
    assert [(s["Device"], s["Ordering"], s["Size"]) for s in document["Image"]["Snapshots"]] == [
        ("/dev/sda1", 1, 1 << 30),
        ("/dev/sdb", 2, 2 << 30),
    ]


def test_own_writes_cause_no_further_writes(live, samples):
    live.drop("quiet-omi/sda1.qcow2", samples["qcow2"])
    writes: list[str] = []
    live.s3.meta.events.register("before-call.s3.*", lambda model, **_: writes.append(model.name))
    # The pipeline's own status and manifest writes came back as events and were
    # delivered by settle(); nothing is left, and delivering again writes nothing.
    assert live.settle() == 0
    live.s3.put_object_tagging(
        Bucket=live.bucket,
        Key="quiet-omi/sda1.qcow2",
        Tagging={
            "TagSet": [{"Key": k, "Value": v} for k, v in live.tags("quiet-omi/sda1.qcow2").items()]
        },
    )
    assert live.settle() == 1
    assert live.settle() == 0


def test_logs_are_json_and_hold_no_secret(live, samples, captured_logs, capsys):
    live.drop("logged/sda1.qcow2", samples["qcow2"])
    url = live.manifest_url("logged")
    document = live.fetch_manifest("logged")
    signatures = [re.search(r"X-Amz-Signature=(\w+)", url).group(1)] + [
        re.search(r"X-Amz-Signature=(\w+)", s["PreSignedUrl"]).group(1)
        for s in document["Image"]["Snapshots"]
    ]
    logs = captured_logs.getvalue()
    emitted = logs + capsys.readouterr().out
    lines = [line for line in logs.splitlines() if line.strip()]
    assert any(json.loads(line)["message"] == "manifest published" for line in lines)
    assert all(json.loads(line)["service"] == "omi-manifest" for line in lines)
    assert "X-Amz-Signature" not in emitted
    for secret in [SECRET, *signatures]:
        assert secret not in emitted


def test_scheduled_handler_and_resign_command_renew(live, samples, capsys):
    from chalice.test import Client

    from app import app
    from chalicelib import cli

    live.drop("renewed/sda1.qcow2", samples["qcow2"])
    first = live.tags("manifests/renewed.json")
    with Client(app) as client:
        event = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
        client.lambda_.invoke("renew_and_reconcile", event)
    assert live.tags("manifests/renewed.json") == first  # not due within 48 h
    capsys.readouterr()
    code = cli.main(
        ["resign", "--endpoint-url", live.url, "--bucket", live.bucket, "--renew-before", "700000"]
    )
    assert code == 0
    assert "1 manifest URL re-signed" in capsys.readouterr().out.splitlines()
    check_published(live, "renewed", {"renewed/sda1.qcow2": samples["qcow2"]})
