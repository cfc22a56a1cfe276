"""The embedded server behaves as S3 where a pipeline can see it: its events, their
order against the write, who wrote, conditional writes, and listings; over HTTP with
boto3, as ``omi-manifest run`` uses it."""

from __future__ import annotations

import itertools
import json
import threading
import time
from urllib.parse import urlencode

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from chalicelib.local import delivery
from chalicelib.local.delivery import EmbeddedPump, NotificationPump
from chalicelib.local.events import EventQueue, own_principal
from chalicelib.local.server import EmbeddedServer

REGION = "eu-west-2"
USER_KEY = "AKIAEMBEDDEDUSER"
OTHER_KEY = "AKIAEMBEDDEDOTHER"
RESERVED = ("manifests/", ".omi-state/")
_buckets = itertools.count(1)


@pytest.fixture(scope="module")
def server(embedded_server):
    return embedded_server


def client(server: EmbeddedServer, key: str, service: str = "s3"):
    session = boto3.Session(
        aws_access_key_id=key, aws_secret_access_key="secret", region_name=REGION
    )
    config = Config(max_pool_connections=32, retries={"mode": "standard", "max_attempts": 1})
    return session.client(service, endpoint_url=server.url, config=config)


@pytest.fixture
def s3(server):
    return client(server, USER_KEY)


@pytest.fixture
def bucket(s3):
    name = f"embedded-{next(_buckets)}"
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


def records(queue: EventQueue) -> list[dict]:
    return [event["Records"][0] for event, _ in queue.receive(1000)]


def names_and_keys(queue: EventQueue) -> list[tuple[str, str]]:
    return [(r["eventName"], r["s3"]["object"]["key"]) for r in records(queue)]


# --- which events ----------------------------------------------------------------------------


def test_put_object_with_tags_sends_only_object_created(server, s3, bucket):
    queue = server.deliver_in_process(bucket)
    s3.put_object(Bucket=bucket, Key="web/sda1.qcow2", Body=b"x", Tagging="omi:snapshots=1")
    assert names_and_keys(queue) == [("ObjectCreated:Put", "web/sda1.qcow2")]


def test_event_keys_are_url_encoded_as_s3_does(server, s3, bucket):
    queue = server.deliver_in_process(bucket)
    s3.put_object(Bucket=bucket, Key="web/my disk+1.qcow2", Body=b"x")
    assert names_and_keys(queue) == [("ObjectCreated:Put", "web/my+disk%2B1.qcow2")]


def test_tag_writes_still_send_tagging_events(server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="web/sda1.qcow2", Body=b"x")
    queue = server.deliver_in_process(bucket)
    tags = {"TagSet": [{"Key": "owner", "Value": "team-blue"}]}
    s3.put_object_tagging(Bucket=bucket, Key="web/sda1.qcow2", Tagging=tags)
    s3.delete_object_tagging(Bucket=bucket, Key="web/sda1.qcow2")
    s3.delete_object(Bucket=bucket, Key="web/sda1.qcow2")
    assert names_and_keys(queue) == [
        ("ObjectTagging:Put", "web/sda1.qcow2"),
        ("ObjectTagging:Delete", "web/sda1.qcow2"),
        ("ObjectRemoved:Delete", "web/sda1.qcow2"),
    ]


def test_events_under_reserved_prefixes_are_dropped(server, s3, bucket):
    server.skip_events_under(bucket, RESERVED)
    queue = server.deliver_in_process(bucket)
    for key in ("manifests/web.json", ".omi-state/objects/ab/record", "web/manifests/sda1.raw"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"{}")
    s3.delete_object(Bucket=bucket, Key="manifests/web.json")
    tags = {"TagSet": [{"Key": "omi:url", "Value": "x"}]}
    s3.put_object_tagging(Bucket=bucket, Key=".omi-state/objects/ab/record", Tagging=tags)
    assert names_and_keys(queue) == [("ObjectCreated:Put", "web/manifests/sda1.raw")]
    assert len(queue) == 0


def test_sqs_notifications_get_the_same_events(server, s3, bucket):
    """The queue path the tests and ``--endpoint-url`` use: same rules, principal included."""
    server.skip_events_under(bucket, RESERVED)
    pump = NotificationPump(s3, client(server, USER_KEY, "sqs"), bucket, f"{bucket}-q")
    pump.connect()
    s3.put_object(Bucket=bucket, Key="web/sda1.qcow2", Body=b"x", Tagging="omi:snapshots=1")
    s3.put_object(Bucket=bucket, Key="manifests/web.json", Body=b"{}")
    seen = []
    pump.pump(lambda event: seen.extend(event["Records"]))
    assert [(r["eventName"], r["s3"]["object"]["key"]) for r in seen] == [
        ("ObjectCreated:Put", "web/sda1.qcow2")
    ]
    assert seen[0]["userIdentity"] == {"principalId": f"AWS:{USER_KEY}"}


# --- who wrote, and when the event may be read -----------------------------------------------


def test_records_carry_the_principal_of_the_writer(server, s3, bucket):
    queue = server.deliver_in_process(bucket)
    other = client(server, OTHER_KEY)
    s3.put_object(Bucket=bucket, Key="web/sda1.qcow2", Body=b"x")
    tags = {"TagSet": [{"Key": "omi:status", "Value": "waiting"}]}
    other.put_object_tagging(Bucket=bucket, Key="web/sda1.qcow2", Tagging=tags)
    other.delete_object(Bucket=bucket, Key="web/sda1.qcow2")
    assert [r["userIdentity"]["principalId"] for r in records(queue)] == [
        "AWS:AKIAEMBEDDEDUSER",
        "AWS:AKIAEMBEDDEDOTHER",
        "AWS:AKIAEMBEDDEDOTHER",
    ]
    assert own_principal(OTHER_KEY) == "AWS:AKIAEMBEDDEDOTHER"


def test_object_created_is_queued_only_once_its_tags_are_stored(server, s3, bucket, monkeypatch):
    """What the object's tags were at the very moment its event entered the queue."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    queue = server.deliver_in_process(bucket)
    tags_when_queued = []
    put = queue.put

    def put_and_look(event: dict) -> None:
        key = event["Records"][0]["s3"]["object"]["key"]
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        stored = backend.buckets[bucket].keys[key]
        tags_when_queued.append(backend.tagger.get_tag_dict_for_resource(stored.arn))
        put(event)

    monkeypatch.setattr(queue, "put", put_and_look)
    tags = {"omi:name": "web", "omi:snapshots": "2"}
    s3.put_object(Bucket=bucket, Key="web/sda1.qcow2", Body=b"x", Tagging=urlencode(tags))
    assert tags_when_queued == [tags]


# --- writes -----------------------------------------------------------------------------------


def race(writers: int, write) -> list[int]:
    """Each writer's HTTP status, all released at once."""
    start = threading.Barrier(writers)
    statuses: list[int] = []

    def one(number: int) -> None:
        start.wait()
        try:
            write(number)
            statuses.append(200)
        except ClientError as error:
            statuses.append(error.response["ResponseMetadata"]["HTTPStatusCode"])

    threads = [threading.Thread(target=one, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(statuses)


@pytest.fixture
def slow_writes(monkeypatch):
    """moto checks a PUT's condition, then writes: a pause between the two makes every
    racing writer pass the check unless the server lets one writer at a time in."""
    from moto.s3.models import S3Backend

    write = S3Backend.put_object

    def after_a_pause(*args, **kwargs):
        time.sleep(0.05)
        return write(*args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", after_a_pause)


def test_concurrent_if_none_match_puts_create_the_object_once(server, s3, bucket, slow_writes):
    server.requests.reset()
    key = "manifests/web.json"
    statuses = race(
        8, lambda n: s3.put_object(Bucket=bucket, Key=key, Body=f"{n}".encode(), IfNoneMatch="*")
    )
    assert statuses == [200] + [412] * 7
    assert server.requests.written("PutObject", f"/{bucket}/{key}") == 1
    assert server.requests.written("PutObject", f"/{bucket}/{key}", succeeded=False) == 7


def test_concurrent_if_match_puts_replace_the_version_once(server, s3, bucket, slow_writes):
    key = ".omi-state/objects/ab/record"
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"first")["ETag"]
    statuses = race(
        8, lambda n: s3.put_object(Bucket=bucket, Key=key, Body=f"{n}".encode(), IfMatch=etag)
    )
    assert statuses == [200] + [412] * 7
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body.decode() in {str(n) for n in range(8)}


def test_written_counts_successes_and_failures_apart(server, s3, bucket):
    server.requests.reset()
    s3.put_object(Bucket=bucket, Key="web/sda1.qcow2", Body=b"x")
    with pytest.raises(ClientError):
        s3.put_object(Bucket=bucket, Key="web/sda1.qcow2", Body=b"y", IfNoneMatch="*")
    with pytest.raises(ClientError):
        s3.put_object(Bucket="no-such-bucket-here", Key="web/sda1.qcow2", Body=b"y")
    assert server.requests.written("PutObject", f"/{bucket}/web/") == 1
    assert server.requests.written("PutObject", f"/{bucket}/web/", succeeded=False) == 1
    assert server.requests.written("PutObject", "/no-such-bucket-here/", succeeded=False) == 1


# --- listings ---------------------------------------------------------------------------------


def listed(s3, bucket: str, **query) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, **query)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_listings_page_through_a_prefix_in_order(s3, bucket):
    keys = [f"{folder}/{n}" for folder in ("a", "ab", "b") for n in (3, 1, 2)] + ["a"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    s3.delete_object(Bucket=bucket, Key="a/2")
    small_pages = {"PaginationConfig": {"PageSize": 2}}
    assert listed(s3, bucket, Prefix="a/", **small_pages) == ["a/1", "a/3"]
    assert listed(s3, bucket, Prefix="a", **small_pages) == [
        "a",
        "a/1",
        "a/3",
        "ab/1",
        "ab/2",
        "ab/3",
    ]
    assert listed(s3, bucket, Prefix="a", StartAfter="a/1") == ["a/3", "ab/1", "ab/2", "ab/3"]
    assert listed(s3, bucket, StartAfter="ab/3") == ["b/1", "b/2", "b/3"]
    assert listed(s3, bucket, Prefix="c") == []
    folders = s3.list_objects_v2(Bucket=bucket, Delimiter="/")["CommonPrefixes"]
    assert [f["Prefix"] for f in folders] == ["a/", "ab/", "b/"]


# --- delivery in process ----------------------------------------------------------------------


def test_a_failed_invocation_is_delivered_again(server, s3, bucket, monkeypatch):
    monkeypatch.setattr(delivery, "RETRY_AFTER", 0)
    pump = EmbeddedPump(server.deliver_in_process(bucket))
    s3.put_object(Bucket=bucket, Key="web/sda1.qcow2", Body=b"x")
    calls = []

    def fails_once(event: dict) -> None:
        calls.append(json.dumps(event))
        if len(calls) == 1:
            raise RuntimeError("the platform killed it")

    assert pump.pump(fails_once) == 1
    assert len(calls) == 2 and calls[0] == calls[1]
