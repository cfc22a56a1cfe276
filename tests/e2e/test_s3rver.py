"""The pipeline polling s3rver, an S3 server independent of AWS and moto that sends no
notifications and ignores tags sent with PutObject: what a user of OUTSCALE OOS or of
another S3-compatible store sees.

Passes run in this process the way the scheduled function runs them, or as
``omi-manifest run --once`` / ``--poll`` in a process of their own; the user's side is
boto3, and results are read the way a user reads them (tags, the URL rebuilt from the
manifest's tags, a plain HTTP download, ``omi-manifest status``).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

import boto3
import pytest

from chalicelib import cli, manifest, runtime, scheduler, signing
from tests import sigv4
from tests.e2e.s3rver import ACCESS_KEY, S3rver

SECRET = "s3rver-e2e-secret-never-logged-0123456789"
OMI_CLI = str(Path(sys.executable).parent / "omi-manifest")
_buckets = itertools.count(1)


@pytest.fixture(scope="module")
def s3rver(tmp_path_factory):
    server = S3rver(tmp_path_factory.mktemp("s3rver"))
    yield server.start()
    server.stop()


def environment(url: str, bucket: str, config_file: Path) -> dict[str, str]:
    """The store's key, and no region anywhere: the region comes from the store."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_CONFIG_FILE": str(config_file),
        "AWS_SHARED_CREDENTIALS_FILE": str(config_file),
        "OMI_BUCKET": bucket,
        "OMI_ENDPOINT_URL": url,
        "OMI_PUBLIC_ENDPOINT_URL": url,
        "OMI_TAG_ROUNDS": "1",  # as the oos stage: a store without events, every tag every poll
        "OMI_SIGN_WITH_STORE_KEYS": "true",  # a throw-away store: its keys may sign
        "POWERTOOLS_METRICS_DISABLED": "true",
    }


UNSET = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "OMI_REGION")


class Polled:
    """A bucket on s3rver; ``settle`` runs one pass, as a scheduled function would."""

    def __init__(self, url: str, bucket: str, env: dict[str, str]) -> None:
        self.url = url
        self.bucket = bucket
        self.env = env
        self.s3 = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET,
        )
        self.s3.create_bucket(Bucket=bucket)

    def put(self, key: str, source: Path, tags: dict[str, str] | None = None) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=source.read_bytes())
        if tags:  # s3rver would ignore them in the PutObject: a user tags afterwards
            self.retag(key, tags)

    def retag(self, key: str, tags: dict[str, str]) -> None:
        self.s3.put_object_tagging(
            Bucket=self.bucket,
            Key=key,
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
        )

    def settle(self) -> scheduler.PassReport:
        runtime.pipeline.cache_clear()
        pipeline = runtime.pipeline()
        return scheduler.Pass(pipeline, pipeline.settings.renew_before).run()

    def run(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """``omi-manifest ARGUMENTS`` against this bucket, in a process of its own."""
        command = [OMI_CLI, *arguments, "--endpoint-url", self.url, "--bucket", self.bucket]
        environ = {k: v for k, v in os.environ.items() if k not in UNSET} | self.env
        return subprocess.run(
            command, env=environ, capture_output=True, text=True, timeout=300, check=False
        )

    def tags(self, key: str) -> dict[str, str]:
        found = self.s3.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in found}

    def all_keys(self) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def manifests(self) -> list[str]:
        return [key for key in self.all_keys() if key.startswith("manifests/")]

    def manifest_url(self, name: str) -> str:
        url = signing.url_from_tags(self.tags(f"manifests/{name}.json"))
        assert url is not None, f"manifests/{name}.json has no URL tags"
        return url

    @staticmethod
    def fetch(url: str) -> bytes:
        with urlopen(url, timeout=30) as response:
            return response.read()


@pytest.fixture
def store(s3rver, tmp_path, monkeypatch):
    bucket = f"polled-{next(_buckets)}"
    config_file = tmp_path / "no-aws-config"
    config_file.write_text("")
    env = environment(s3rver, bucket, config_file)
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # boto3's default session keeps the credentials it found first (another suite's).
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    runtime.pipeline.cache_clear()
    yield Polled(s3rver, bucket, env)
    runtime.pipeline.cache_clear()


def check_published(store: Polled, name: str, dropped: dict[str, Path]) -> dict:
    """Download the manifest and every snapshot through their URLs, and check it all."""
    url = store.manifest_url(name)
    now = datetime.now(UTC)
    urls = [url]
    document = json.loads(store.fetch(url))
    assert manifest.validate(document) == []
    assert document["Image"]["Name"] == name
    assert sorted(s["Filename"] for s in document["Image"]["Snapshots"]) == sorted(dropped)
    for snap in document["Image"]["Snapshots"]:
        source = dropped[snap["Filename"]]
        urls.append(snap["PreSignedUrl"])
        assert store.fetch(snap["PreSignedUrl"]) == source.read_bytes()
        assert snap["CompressedSize"] == source.stat().st_size
        assert store.tags(snap["Filename"])["omi:status"] == f"published: manifests/{name}.json"
    for signed in urls:
        # No region configured anywhere: the store said us-east-1 (GetBucketLocation).
        assert sigv4.verify(signed, SECRET, now)["region"] == "us-east-1"
    return document


def test_single_disk_published(store, samples):
    store.put("web-server/sda1.qcow2", samples["qcow2"])
    assert store.settle().outcomes["failed"] == 0
    check_published(store, "web-server", {"web-server/sda1.qcow2": samples["qcow2"]})
    outcomes = store.settle().outcomes  # nothing changed: a pass only reads the tags
    assert {outcome for outcome in outcomes if outcome != "checked"} == set()


def test_two_disks_published_when_both_are_there(store, samples):
    tags = {"omi:name": "database", "omi:snapshots": "2"}
    store.put("uploads/root.raw.gz", samples["raw.gz"], {**tags, "omi:device": "/dev/sda1"})
    store.settle()
    assert store.tags("uploads/root.raw.gz")["omi:status"] == (
        "waiting: 1 of 2 snapshots of database"
    )
    assert store.manifests() == []
    store.put("uploads/data.qcow2.gz", samples["qcow2.gz"], {**tags, "omi:device": "/dev/sdb"})
    store.settle()
    document = check_published(
        store,
        "database",
        {"uploads/root.raw.gz": samples["raw.gz"], "uploads/data.qcow2.gz": samples["qcow2.gz"]},
    )
    assert [s["Device"] for s in document["Image"]["Snapshots"]] == ["/dev/sda1", "/dev/sdb"]


def test_expired_url_is_refused_by_the_store(store, samples):
    """s3rver checks expiry (not signatures): the URLs it serves are live ones."""
    store.put("short/sda1.qcow2", samples["qcow2"])
    store.settle()
    url = store.manifest_url("short")
    stamp = store.tags("manifests/short.json")["X-Amz-Date"]
    expired = url.replace(f"X-Amz-Date={stamp}", "X-Amz-Date=20200101T000000Z")
    with pytest.raises(HTTPError) as refused:
        store.fetch(expired)
    assert refused.value.code == 403
    assert b"Request has expired" in refused.value.read()


def test_retag_fixes_an_error(store, samples):
    store.put("web/sda1.qcow2", samples["qcow2"], {"omi:architecture": "sparc"})
    store.settle()
    assert store.tags("web/sda1.qcow2")["omi:status"].startswith(
        "error: omi:architecture sparc is not one of"
    )
    store.retag("web/sda1.qcow2", {"omi:architecture": "x86_64"})
    store.settle()  # a tag change alone, found by polling
    check_published(store, "web", {"web/sda1.qcow2": samples["qcow2"]})


def test_retag_regroups(store, samples):
    store.put("alpha/sda1.qcow2", samples["qcow2"])
    store.settle()
    assert store.manifests() == ["manifests/alpha.json"]
    store.retag("alpha/sda1.qcow2", {"omi:name": "beta"})
    store.settle()
    assert store.manifests() == ["manifests/beta.json"]
    check_published(store, "beta", {"alpha/sda1.qcow2": samples["qcow2"]})


def test_deletion_withdraws(store, samples):
    store.put("pair/sda.qcow2", samples["qcow2"], {"omi:snapshots": "2"})
    store.put("pair/sdb.qcow2", samples["qcow2-2g"], {"omi:snapshots": "2"})
    store.settle()
    assert store.manifests() == ["manifests/pair.json"]
    store.s3.delete_object(Bucket=store.bucket, Key="pair/sdb.qcow2")
    store.settle()
    assert store.manifests() == []
    assert store.tags("pair/sda.qcow2")["omi:status"] == "waiting: 1 of 2 snapshots of pair"


def test_root_file_without_a_name_gets_its_error(store, samples):
    store.put("sda1.qcow2", samples["qcow2"])
    report = store.settle()
    assert store.tags("sda1.qcow2")["omi:status"].startswith(
        "error: sda1.qcow2 is at the bucket root - put it in a folder named after its OMI"
    )
    assert report.outcomes["failed"] == 0
    assert not [key for key in store.all_keys() if "//" in key]


def test_every_status_readable(store, samples, capsys):
    store.put("good/sda1.qcow2", samples["qcow2"])
    store.put("half/sda.qcow2", samples["qcow2"], {"omi:snapshots": "2"})
    store.put("bad/sda1.qcow2", samples["qcow2"], {"omi:architecture": "sparc"})
    store.settle()
    assert cli.main(["status", "--endpoint-url", store.url, "--bucket", store.bucket]) == 1
    table = capsys.readouterr().out
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
    assert set(rows) == {"good", "half", "bad"}
    assert "published" in rows["good"]
    assert "waiting" in rows["half"] and "1/2" in rows["half"]
    assert "error" in rows["bad"] and "sparc" in rows["bad"]
    assert cli.main(["url", "good", "--endpoint-url", store.url, "--bucket", store.bucket]) == 0
    assert capsys.readouterr().out.strip() == store.manifest_url("good")


def test_run_once_succeeds_when_nothing_failed(store, samples):
    store.put("fine/sda1.qcow2", samples["qcow2"])
    done = store.run("run", "--once")
    assert done.returncode == 0, done.stdout + done.stderr
    check_published(store, "fine", {"fine/sda1.qcow2": samples["qcow2"]})


def test_run_once_fails_when_an_omi_is_in_error(store, samples):
    store.put("fine/sda1.qcow2", samples["qcow2"])
    store.put("wrong/sda1.qcow2", samples["qcow2"], {"omi:architecture": "sparc"})
    done = store.run("run", "--once")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sparc" in done.stdout


def test_run_once_fails_for_a_root_file_without_a_name(store, samples):
    store.put("fine/sda1.qcow2", samples["qcow2"])
    store.put("lost.qcow2", samples["qcow2"])
    done = store.run("run", "--once")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "lost.qcow2" in done.stdout + done.stderr


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    """Poll until ``condition()`` holds; the generous limit only stops a hung test."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {timeout:.0f} s"
        time.sleep(0.5)


def test_run_poll_finds_uploads_and_tag_changes(store, samples):
    environ = {k: v for k, v in os.environ.items() if k not in UNSET} | store.env
    command = [OMI_CLI, "run", "--endpoint-url", store.url, "--bucket", store.bucket]
    process = subprocess.Popen(
        [*command, "--poll", "1"],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        store.put("polled/sda1.qcow2", samples["qcow2"], {"omi:architecture": "sparc"})
        wait_for(
            lambda: "error" in store.tags("polled/sda1.qcow2").get("omi:status", ""),
            "marked in error",
        )
        store.retag("polled/sda1.qcow2", {"omi:architecture": "x86_64"})
        wait_for(lambda: store.manifests() == ["manifests/polled.json"], "published")
    finally:
        process.terminate()
        process.wait(timeout=30)
    check_published(store, "polled", {"polled/sda1.qcow2": samples["qcow2"]})
