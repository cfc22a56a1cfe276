"""Secrets and scope: only an OMI's own snapshots, in this bucket, are ever signed."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from chalicelib.notifications import ObjectChange
from tests.harness import BUCKET, create_bucket
from tests.integration.conftest import PUBLIC


def all_objects(omi, bucket=BUCKET):
    return [i["Key"] for i in omi.s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_events_for_another_bucket_are_ignored(omi, samples):
    create_bucket(omi.s3, "someone-elses-bucket")
    omi.s3.put_object(Bucket="someone-elses-bucket", Key="web/sda1.qcow2", Body=b"\0" * 512)
    change = ObjectChange("someone-elses-bucket", "web/sda1.qcow2", "ObjectCreated:Put")
    assert omi.writes_during(lambda: omi.pipeline.handle([change])) == []
    assert all_objects(omi) == []


@pytest.mark.parametrize("key", ["manifests/evil.qcow2", ".omi-state/objects/x.raw"])
def test_files_under_reserved_prefixes_are_never_snapshots(omi, samples, key):
    omi.drop(key, samples["qcow2"])
    assert all_objects(omi) == [key]
    assert "omi:status" not in omi.tags(key)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../someone-elses-bucket", "no leading or trailing / and no . or .. parts"),
        ("/etc/passwd", "no leading or trailing / and no . or .. parts"),
        ("manifests/other", "it starts with a prefix the pipeline reserves"),
        (".omi-state/groups/x", "it starts with a prefix the pipeline reserves"),
        ("a/./b", "no leading or trailing / and no . or .. parts"),
    ],
)
def test_names_with_path_tricks_are_refused(omi, samples, name, message):
    omi.drop("upload/sda1.qcow2", samples["qcow2"], {"omi:name": name})
    assert omi.status("upload/sda1.qcow2").endswith(message)
    assert [k for k in all_objects(omi) if k.startswith("manifests/")] == []


def test_only_the_omis_own_snapshots_are_signed(omi, samples):
    create_bucket(omi.s3, "someone-elses-bucket")
    omi.drop("web/sda1.qcow2", samples["qcow2"], {"omi:name": "someone-elses-bucket/web"})
    two = {"omi:name": "db-server", "omi:snapshots": "2"}
    omi.drop("up/a.raw.gz", samples["raw.gz"], {**two, "omi:device": "/dev/sda1"})
    omi.drop("up/b.qcow2.gz", samples["qcow2.gz"], {**two, "omi:device": "/dev/sdb"})
    manifests = [k for k in all_objects(omi) if k.startswith("manifests/")]
    assert manifests == ["manifests/db-server.json", "manifests/someone-elses-bucket/web.json"]
    expected = {
        "manifests/db-server.json": {"up/a.raw.gz", "up/b.qcow2.gz"},
        "manifests/someone-elses-bucket/web.json": {"web/sda1.qcow2"},
    }
    for key in manifests:
        document = json.loads(omi.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        signed = set()
        for snap in document["Image"]["Snapshots"]:
            url = urlsplit(snap["PreSignedUrl"])
            assert f"{url.scheme}://{url.netloc}" == PUBLIC
            assert url.path == f"/{BUCKET}/{snap['Filename']}"
            signed.add(snap["Filename"])
        assert signed == expected[key]
    assert all_objects(omi, "someone-elses-bucket") == []


def test_signatures_appear_only_in_the_manifest_url_tags(omi, samples):
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    omi.drop("bad/sda1.raw", samples["vmdk"])
    for key in all_objects(omi):
        tags = omi.tags(key)
        text = json.dumps(tags)
        if key.startswith("manifests/"):
            assert set(tags) >= {"X-Amz-Signature", "omi:url", "omi:expires"}
        else:
            assert "X-Amz" not in text and "Signature" not in text, key
    state = [k for k in all_objects(omi) if k.startswith(".omi-state/")]
    for key in state:
        body = omi.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert b"X-Amz-Signature" not in body and omi.keys.secret_key.encode() not in body
