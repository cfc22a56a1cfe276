"""S3 failing at every step: after the faults stop, one pass restores the fault-free state."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from unittest import mock

import boto3
import pytest
from moto import mock_aws

from chalicelib import runtime
from chalicelib.config import Settings
from chalicelib.inspection import S3Reader, inspect_snapshot
from chalicelib.observability import logger
from chalicelib.scheduler import Pass
from tests import images
from tests.faults import Faults
from tests.harness import BUCKET, NOW, REGION, Harness, create_bucket

WINDOW = 48 * 3600
SETTINGS = Settings(bucket=BUCKET, region=REGION, public_endpoint_url="https://oos")


@pytest.fixture(autouse=True)
def no_backoff():
    """Retries without their waits: the tests count attempts, not seconds."""
    target = "botocore.retries.standard.ExponentialBackoff.delay_amount"
    level = logger.log_level
    logger.setLevel("CRITICAL")  # hundreds of expected failures would flood the output
    with mock.patch(target, return_value=0):
        yield
    logger.setLevel(level)


def harness(faults: Faults) -> Harness:
    """The user's client is sound; the pipeline's has the functions' retry configuration
    and the faults."""
    user = boto3.client("s3", region_name=REGION)
    create_bucket(user)
    pipeline = runtime.s3_client(SETTINGS)
    faults.attach(pipeline)
    return Harness(user, SETTINGS, pipeline_client=pipeline)


def drops(omi: Harness, samples) -> None:
    """Events for: one single-disk OMI, one two-disk OMI, one OMI dropped then deleted."""
    two = {"omi:name": "beta-omi", "omi:snapshots": "2"}
    steps = [
        ("put", "alpha/sda1.qcow2", samples["qcow2"], {}),
        ("put", "uploads/root.raw.gz", samples["raw.gz"], {**two, "omi:device": "/dev/sda1"}),
        ("put", "uploads/data.qcow2.gz", samples["qcow2.gz"], {**two, "omi:device": "/dev/sdb"}),
        ("put", "gamma/sda1.qcow2", samples["qcow2"], {}),
        ("delete", "gamma/sda1.qcow2", None, None),
    ]
    for action, key, source, tags in steps:
        if action == "put":
            omi.put(key, source, tags)
        else:
            omi.delete(key)
        # A failed event's processing raises: as if the platform gave up on it.
        with contextlib.suppress(RuntimeError):
            omi.deliver(key)


ANNOUNCEMENTS = ".omi-state/objects/"


def end_state(omi: Harness) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Every object of the bucket: its bytes and its tags. Announcements are left out: they
    say where a record may be, and one that points at nothing stays until it is old enough
    for the pass to prune it (``announced_records`` checks what they must do)."""
    found = {}
    for item in omi.s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        if item["Key"].startswith(ANNOUNCEMENTS):
            continue
        body = omi.s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        found[item["Key"]] = (body, omi.tags(item["Key"]))
    return found


@pytest.fixture(scope="module")
def reference(samples):
    """The fault-free run: its end state, and how many S3 calls each phase makes."""
    with mock_aws():
        faults = Faults()
        omi = harness(faults)
        drops(omi, samples)
        events_calls = faults.calls
        events_state = end_state(omi)
        omi.now = NOW + timedelta(days=6)
        before = faults.calls
        Pass(omi.pipeline, WINDOW, workers=1).run()
        pass_calls = faults.calls - before
        return events_calls, events_state, pass_calls, end_state(omi)


def announced_records(omi: Harness) -> None:
    """Every member record is announced where the snapshot's processing looks for it."""
    keys = [i["Key"] for i in omi.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    announced = {k[len(ANNOUNCEMENTS) :] for k in keys if k.startswith(ANNOUNCEMENTS)}
    for key in keys:
        if key.startswith(".omi-state/groups/") and "/~published@" not in key:
            group, leaf = key[len(".omi-state/groups/") :].split("/")
            hashed, etag = leaf.split("@")[:2]
            assert f"{hashed}/group={group}@{etag}" in announced, key


def assert_consistent(state):
    """No manifest names a missing object; every snapshot has a status."""
    snapshots = {k for k in state if not k.startswith((".omi-state/", "manifests/"))}
    for key in snapshots:
        assert "omi:status" in state[key][1], key
    for key, (body, _) in state.items():
        if key.startswith("manifests/"):
            for name in snapshots:
                body = body.replace(name.encode(), b"")
            assert b'"Filename": ""' in body


@pytest.mark.parametrize("kind", ["throttle", "server", "timeout"])
def test_transient_faults_are_absorbed_by_retries(samples, reference, kind):
    events_calls, events_state, _, _ = reference
    for index in range(0, events_calls, 7):
        with mock_aws():
            faults = Faults(kind)
            faults.fail_at(index, persistent=False)
            omi = harness(faults)
            drops(omi, samples)
            assert faults.injected == 1
            assert end_state(omi) == events_state, f"fault at request {index}"


def test_a_failure_at_any_step_of_processing_is_repaired_by_one_pass(samples, reference):
    events_calls, events_state, _, _ = reference
    for index in range(events_calls):
        with mock_aws():
            faults = Faults("server")
            faults.fail_at(index, persistent=True)
            omi = harness(faults)
            drops(omi, samples)
            faults.stop()
            Pass(omi.pipeline, WINDOW).run()
            state = end_state(omi)
            assert state == events_state, f"persistent fault at request {index}"
            assert_consistent(state)
            announced_records(omi)


def test_a_failure_at_any_step_of_re_signing_is_repaired_by_the_next_pass(samples, reference):
    _, _, pass_calls, renewed_state = reference
    for index in range(pass_calls):
        with mock_aws():
            faults = Faults("throttle")
            omi = harness(faults)
            drops(omi, samples)
            omi.now = NOW + timedelta(days=6)
            faults.fail_at(faults.calls + index, persistent=True)
            Pass(omi.pipeline, WINDOW, workers=1).run()
            faults.stop()
            Pass(omi.pipeline, WINDOW, workers=1).run()
            assert end_state(omi) == renewed_state, f"persistent fault at pass request {index}"


class DroppingBody:
    """A response body whose connection drops after its first chunk."""

    def __init__(self, body):
        self.body = body

    def iter_chunks(self, chunk_size):
        from urllib3.exceptions import ProtocolError

        chunks = self.body.iter_chunks(chunk_size)
        yield next(chunks)
        raise ProtocolError("Connection broken: IncompleteRead")


def test_connection_dropped_mid_read_of_a_large_raw_gz(tmp_path):
    path = images.gzip_file(images.raw_with_data(tmp_path / "sda1.raw", 64 << 20))
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        create_bucket(s3)
        s3.upload_file(str(path), BUCKET, "w/sda1.raw.gz")
        drops = []

        def drop_first_stream(http_response, parsed, model, **_):
            span, _, size = parsed.get("ContentRange", "").partition("/")
            first, _, last = span.removeprefix("bytes ").partition("-")
            # not a trailer read: more than its few bytes
            whole_rest = last == f"{int(size or 0) - 1}" and int(last) - int(first or 0) > 1024
            if whole_rest and not drops:  # the stream through the rest of the object
                drops.append(1)
                parsed["Body"] = DroppingBody(parsed["Body"])

        s3.meta.events.register("after-call.s3.GetObject", drop_first_stream)
        found = inspect_snapshot(S3Reader(s3, BUCKET, "w/sda1.raw.gz"), "w/sda1.raw.gz")
    assert drops and found.importable, found.problems
    assert found.virtual_size == 64 << 20
