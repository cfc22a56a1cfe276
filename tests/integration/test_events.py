"""Events to EventBridge (moto: a rule with an SQS target) and to the log."""

import json

import boto3
import pytest
from moto import mock_aws

from chalicelib.events import Announcer, Event
from chalicelib.observability import ConsoleFormatter, logger

BUS = "omi-events"


@pytest.fixture
def bus_queue():
    """A bus whose rule for ``omi-manifest`` events sends them to an SQS queue."""
    with mock_aws():
        events = boto3.client("events", region_name="eu-west-2")
        sqs = boto3.client("sqs", region_name="eu-west-2")
        events.create_event_bus(Name=BUS)
        queue = sqs.create_queue(QueueName="omi")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
        events.put_rule(
            Name="all", EventBusName=BUS, EventPattern=json.dumps({"source": ["omi-manifest"]})
        )
        events.put_targets(
            Rule="all",
            EventBusName=BUS,
            Targets=[{"Id": "q", "Arn": arn["Attributes"]["QueueArn"]}],
        )

        def received():
            found = []
            while True:
                batch = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)
                if not batch.get("Messages"):
                    return found
                found += [json.loads(m["Body"]) for m in batch["Messages"]]

        yield events, received


def announcer(events):
    return Announcer(BUS, client=lambda: events)


def test_a_drop_then_a_failed_import_then_a_withdrawal_arrive_in_order(bus_queue):
    events, received = bus_queue
    key = "manifests/web-server.json"
    story = [
        Event("published", "web-server", "b", key, "d1", expires="2026-12-09T10:00:00Z"),
        Event("import-started", "web-server", "b", key, "d1", "ami-1", "pending"),
        Event("import-failed", "web-server", "b", key, "d1", "ami-1", "failed", "bad disk"),
        Event("withdrawn", "web-server", "b", key, "d1"),
    ]
    announcer(events).announce(story)
    arrived = received()
    assert [e["detail-type"] for e in arrived] == [
        "published",
        "import-started",
        "import-failed",
        "withdrawn",
    ]
    assert {e["source"] for e in arrived} == {"omi-manifest"}
    assert arrived[2]["detail"] == {
        "kind": "import-failed",
        "omi": "web-server",
        "bucket": "b",
        "manifest_key": key,
        "digest": "d1",
        "image_id": "ami-1",
        "state": "failed",
        "reason": "bad disk",
        "expires": None,
    }


def test_more_than_ten_events_are_sent_in_batches(bus_queue):
    events, received = bus_queue
    announcer(events).announce([Event("renewed", f"omi-{i}") for i in range(23)])
    assert sorted(e["detail"]["omi"] for e in received()) == sorted(f"omi-{i}" for i in range(23))


def test_no_bus_no_client(captured_logs):
    def no_client():
        raise AssertionError("no bus: no EventBridge client")

    Announcer(None, client=no_client).announce([Event("imported", "web", image_id="ami-1")])
    line = json.loads(captured_logs.getvalue().splitlines()[-1])
    assert (line["event"], line["omi"], line["image_id"]) == ("imported", "web", "ami-1")
    assert line["change"] == "web: imported ami-1"


def test_a_refused_send_is_logged_not_raised(captured_logs):
    class Refusing:
        def put_events(self, Entries):
            raise RuntimeError("AccessDeniedException")

    Announcer(BUS, client=Refusing).announce([Event("published", "web")])
    assert '"message":"events not sent"' in captured_logs.getvalue()


def test_console_line_is_the_change(captured_logs):
    handler = logger.registered_handler
    previous = handler.formatter
    handler.setFormatter(ConsoleFormatter())
    try:
        Announcer(None).announce(
            [
                Event(
                    "published",
                    "web",
                    manifest_key="manifests/web.json",
                    expires="2026-12-09T10:00:00Z",
                ),
                Event("import-failed", "web", image_id="ami-1", reason="bad disk"),
            ]
        )
    finally:
        handler.setFormatter(previous)
    lines = [line.split(" ", 1)[1] for line in captured_logs.getvalue().splitlines()]
    assert lines == [
        "web: published manifests/web.json (expires 2026-12-09T10:00:00Z)",
        "web: import-failed ami-1 - bad disk",
    ]


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown event kind done"):
        Event("done", "web")


def test_the_pipeline_announces_a_drop_a_rejection_and_a_withdrawal(bus_queue, samples):
    """The same bus, fed by the pipeline itself: what a rule on it sees of a user's day."""
    from chalicelib.config import Settings
    from tests.integration.test_interleavings import Scene

    _, received = bus_queue
    scene = Scene(boto3.client("s3", region_name="eu-west-2"))
    settings = Settings(
        bucket=scene.bucket,
        region="eu-west-2",
        public_endpoint_url="https://oos.eu-west-2.outscale.com",
        event_bus=BUS,
    )
    worker = scene.worker(settings)
    scene.put("web/sda1.qcow2", samples["qcow2"])
    worker.deliver("web/sda1.qcow2")
    scene.put("bad/sda1.raw", samples["vmdk"])
    worker.deliver("bad/sda1.raw")
    scene.delete("web/sda1.qcow2")
    worker.deliver("web/sda1.qcow2", "ObjectRemoved:Delete")
    arrived = received()
    assert [(e["detail-type"], e["detail"]["omi"]) for e in arrived] == [
        ("published", "web"),
        ("rejected", "bad"),
        ("withdrawn", "web"),
    ]
    published, rejected, withdrawn = (e["detail"] for e in arrived)
    assert published["manifest_key"] == withdrawn["manifest_key"] == "manifests/web.json"
    assert published["digest"] and published["expires"]
    assert "VMDK" in rejected["reason"] or "vmdk" in rejected["reason"]
    assert received() == []  # each event arrives once
