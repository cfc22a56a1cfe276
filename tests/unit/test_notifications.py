"""Sample events in events/ parse to the right keys, decoded exactly once."""

import json
from pathlib import Path

import pytest

from chalicelib.notifications import object_changes

EVENTS = Path(__file__).parents[2] / "events"


def load(name):
    return json.loads((EVENTS / name).read_text())


@pytest.mark.parametrize(
    ("name", "keys", "event"),
    [
        ("object-created.json", ["web-server/sda1.qcow2"], "ObjectCreated:Put"),
        ("object-removed.json", ["web-server/sda1.qcow2"], "ObjectRemoved:Delete"),
        ("object-tagging.json", ["web-server/sda1.qcow2"], "ObjectTagging:Put"),
        (
            "multipart-completed.json",
            ["database/sda1.raw.gz"],
            "ObjectCreated:CompleteMultipartUpload",
        ),
        (
            "key-with-special-characters.json",
            ["my disks/a+b (1)/caf\u00e9 sda1.qcow2"],
            "ObjectCreated:Put",
        ),
        ("two-records.json", ["database/sda.qcow2", "database/sdb.qcow2"], "ObjectCreated:Put"),
    ],
)
def test_sample_events(name, keys, event):
    changes = object_changes(load(name))
    assert [c.key for c in changes] == keys
    assert {c.event_name for c in changes} == {event}
    assert {c.bucket for c in changes} == {"omi-snapshots"}


def test_percent_sequences_in_keys_are_decoded_once():
    event = load("object-created.json")
    event["Records"][0]["s3"]["object"]["key"] = "a/100%25+sure%2B.raw"
    assert object_changes(event)[0].key == "a/100% sure+.raw"


def test_records_without_an_object_are_skipped():
    assert object_changes({"Records": [{"eventName": "s3:TestEvent"}]}) == []
    assert object_changes({"Event": "s3:TestEvent"}) == []
