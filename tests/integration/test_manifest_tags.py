"""The manifest's URL tags end up on the manifest whether or not the store keeps tags
sent with PutObject, at one request per manifest where it does."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
import pytest
from moto import mock_aws

from chalicelib.config import Settings
from chalicelib.store import Store
from tests.harness import BUCKET, REGION, create_bucket

TAGS = {"omi:url": "https://oos.eu-west-2.outscale.com/snapshots/manifests/a.json", "k": "v"}


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        create_bucket(client)
        yield client


def requests_of(s3, action) -> list[str]:
    made: list[str] = []

    def record(model, **_):
        made.append(model.name)

    s3.meta.events.register("before-call.s3.*", record)
    action()
    s3.meta.events.unregister("before-call.s3.*", record)
    return made


def tags_of(s3, key: str) -> dict[str, str]:
    found = s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]
    return {tag["Key"]: tag["Value"] for tag in found}


def publish(store: Store, key: str) -> bool:
    """A first publication (no manifest to replace) of an empty document."""
    return store.put_manifest(key, b"{}", TAGS, "digest", datetime(2026, 12, 9, tzinfo=UTC), None)


def ignore_put_object_tags(s3) -> None:
    """Make moto behave like s3rver: tags sent with PutObject are dropped."""

    def drop(params, **_):
        params.pop("Tagging", None)

    s3.meta.events.register("before-parameter-build.s3.PutObject", drop)


def test_one_request_per_manifest_where_put_object_keeps_tags(s3):
    store = Store(s3, Settings(bucket=BUCKET, region=REGION))
    first = requests_of(s3, lambda: publish(store, "manifests/a.json"))
    assert first == ["PutObject", "GetObjectTagging"]  # learning what the store does
    then = requests_of(s3, lambda: publish(store, "manifests/b.json"))
    assert then == ["PutObject"]
    assert tags_of(s3, "manifests/a.json") == tags_of(s3, "manifests/b.json") == TAGS


def test_tags_put_separately_where_put_object_drops_them(s3):
    ignore_put_object_tags(s3)
    store = Store(s3, Settings(bucket=BUCKET, region=REGION))
    first = requests_of(s3, lambda: publish(store, "manifests/a.json"))
    assert first == ["PutObject", "GetObjectTagging", "PutObjectTagging", "GetObjectTagging"]
    then = requests_of(s3, lambda: publish(store, "manifests/b.json"))
    assert then == ["PutObject", "PutObjectTagging"]
    assert tags_of(s3, "manifests/a.json") == tags_of(s3, "manifests/b.json") == TAGS


def test_a_store_that_keeps_no_tags_is_named(s3):
    ignore_put_object_tags(s3)
    store = Store(s3, Settings(bucket=BUCKET, region=REGION))

    def drop_tagging(params, **_):  # a store that keeps only tags of its own
        params["Tagging"]["TagSet"] = [{"Key": "kept-by-the-store", "Value": "x"}]

    s3.meta.events.register("before-parameter-build.s3.PutObjectTagging", drop_tagging)
    with pytest.raises(RuntimeError) as refused:
        publish(store, "manifests/a.json")
    assert str(refused.value) == (
        "the store did not keep the URL tags of manifests/a.json (read back: "
        "['kept-by-the-store']) - the manifest's URL cannot be stored; use a store that "
        "supports tagging"
    )
