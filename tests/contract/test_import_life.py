"""The life of an import against the stateful fake, behind ``prism proxy`` (which checks
every request against the OUTSCALE API description): started once per content whatever
happens, followed to available or failed, throttling waited out."""

import threading
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib import importing
from chalicelib.importing import Importer, snapshot_status
from chalicelib.outscale import OutcomeUnknown

KEY = "manifests/web-server.json"
URL = f"https://oos.eu-west-2.outscale.com/omi-snapshots/{KEY}?X-Amz-Signature=0123abcd"
D1, D2 = "1111111111111111", "2222222222222222"


def start(api, digest=D1, name="web-server", written_at=None, omi="web-server"):
    written_at = written_at or datetime.now(UTC) - timedelta(seconds=5)
    return Importer(api.client).start(omi, name, digest, KEY, URL, written_at)


def images_of(fake, digest):
    return [
        image
        for image in fake.images.values()
        if {"Key": "omi:digest", "Value": digest} in image["Tags"]
    ]


def test_pending_then_available(fake_api, fake_outscale):
    state = start(fake_api)
    assert (state.state, state.started, state.image_name) == ("pending", True, "web-server")
    assert snapshot_status(state) == f"importing: {state.image_id}"
    assert importing.manifest_tags(state) == {
        "omi:image-id": state.image_id,
        "omi:image-state": "pending",
    }
    (image,) = images_of(fake_outscale, D1)
    assert {t["Key"]: t["Value"] for t in image["Tags"]} == {
        "omi:name": "web-server",
        "omi:digest": D1,
        "omi:manifest": KEY,
    }
    assert [action for action, _ in fake_outscale.calls] == [
        "ReadImages",  # by the digest's tag
        "ReadImages",  # by name
        "CreateImage",
        "CreateTags",
    ]
    assert fake_outscale.calls[2][1] == {"ImageName": "web-server", "FileLocation": URL}
    fake_outscale.settle(state.image_id, "available")
    followed = Importer(fake_api.client).follow([state.image_id])[state.image_id]
    assert (followed.state, followed.omi, followed.digest) == ("available", "web-server", D1)
    assert snapshot_status(followed) == f"imported: {state.image_id} - available"
    assert fake_api.last_response_violations == []


def test_pending_then_failed_with_its_comment(fake_api, fake_outscale):
    state = start(fake_api)
    fake_outscale.settle(state.image_id, "failed", "Snapshot sda1: bad qcow2 (header), 50%")
    followed = Importer(fake_api.client).follow([state.image_id])[state.image_id]
    assert followed.state == "failed"
    assert snapshot_status(followed) == (
        "error: import failed: Snapshot sda1: bad qcow2 _header__ 50_"
    )
    assert importing.event_kind(followed) == "import-failed"


def test_a_deleted_image_is_failed(fake_api):
    followed = Importer(fake_api.client).follow(["ami-0badc0de"])
    assert followed["ami-0badc0de"].state == "failed"
    assert snapshot_status(followed["ami-0badc0de"]) == (
        "error: import failed: image ami-0badc0de no longer exists"
    )


def test_throttling_is_waited_out(prism_servers, fake_outscale, monkeypatch):
    from tests.contract.conftest import Checked

    fake_outscale.reset()
    waits = []
    api = Checked(prism_servers["proxy"], monkeypatch, sleep=waits.append)
    fake_outscale.fail_next("ReadImages", (429, "24"), (503, "6"))
    fake_outscale.fail_next("CreateImage", (429, "25"))
    state = start(api)
    assert state.state == "pending" and len(images_of(fake_outscale, D1)) == 1
    assert fake_outscale.count("CreateImage") == 2  # one refused by the throttle, one run
    assert len(waits) == 3 and waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0
    assert api.request_violations() == []


def test_a_name_used_by_another_image_is_an_error(fake_api, fake_outscale, captured_logs):
    other = fake_outscale.add_image("web-server", "https://elsewhere/b/k.json")
    state = start(fake_api)
    assert (state.state, state.image_id) == ("error", None)
    assert snapshot_status(state) == (
        "error: image name web-server is already used in the account "
        "- set omi:image-name to another name"
    )
    assert f"image name web-server is already used by {other}" in captured_logs.getvalue()
    assert fake_outscale.count("CreateImage") == 0
    assert importing.event_kind(state) == "rejected"


def test_republication_gets_a_name_of_its_own(fake_api, fake_outscale, captured_logs):
    first = start(fake_api, D1)
    fake_outscale.settle(first.image_id, "available")
    second = start(fake_api, D2, written_at=datetime.now(UTC) + timedelta(seconds=2))
    assert second.started and second.image_name == f"web-server-{D2}"
    assert second.earlier_image == first.image_id
    assert fake_outscale.images[first.image_id]["State"] == "available"
    assert fake_outscale.images[first.image_id]["ImageName"] == "web-server"
    assert f"earlier image {first.image_id} left alone" in captured_logs.getvalue()
    assert start(fake_api, D2).image_id == second.image_id  # and only once
    assert fake_outscale.count("CreateImage") == 2


def test_a_crash_before_the_tags_is_found_by_name(fake_api, fake_outscale):
    written_at = datetime.now(UTC) - timedelta(seconds=5)
    untagged = fake_outscale.add_image("web-server", URL)
    state = start(fake_api, written_at=written_at)
    assert (state.image_id, state.started) == (untagged, False)
    assert fake_outscale.count("CreateImage") == 0
    assert images_of(fake_outscale, D1)[0]["ImageId"] == untagged


def test_an_earlier_untagged_import_is_not_taken_for_this_one(fake_api, fake_outscale):
    earlier = fake_outscale.add_image("web-server", URL)
    state = start(fake_api, D2, written_at=datetime.now(UTC) + timedelta(seconds=2))
    assert state.started and state.earlier_image == earlier
    assert state.image_name == f"web-server-{D2}"


def test_a_lost_answer_is_not_sent_again(fake_api, fake_outscale):
    fake_outscale.fail_next("CreateImage", "lose answer")
    state = start(fake_api)
    assert state.state == "pending" and not state.started
    assert fake_outscale.count("CreateImage") == 1
    assert len(images_of(fake_outscale, D1)) == 1


def test_a_lost_answer_with_no_image_raises(fake_api, fake_outscale, monkeypatch):
    fake_outscale.fail_next("CreateImage", "lose answer")
    monkeypatch.setattr(fake_outscale, "_create", _forgetful(fake_outscale._create))
    with pytest.raises(OutcomeUnknown):
        start(fake_api)
    assert fake_outscale.count("CreateImage") == 1


def _forgetful(create):
    def forget(name, file_location, tags):
        return create(name + " (lost)", file_location, tags)

    return forget


def test_one_image_per_content_with_four_workers(prism_servers, fake_outscale, monkeypatch):
    """4 workers, each content started 3 times (duplicated events), in mixed order, with a
    lost answer: one image per content, counted at the fake."""
    from tests.contract.conftest import Checked

    fake_outscale.reset()
    written_at = datetime.now(UTC) - timedelta(seconds=5)
    contents = [("web-server", D1), ("db server", D2), ("cache", "3333333333333333")]
    work = [item for item in contents for _ in range(3)]
    work = work[::2] + work[1::2]
    fake_outscale.fail_next("CreateImage", "lose answer")
    clients = [Checked(prism_servers["proxy"], monkeypatch).client for _ in range(4)]
    failures = []

    def worker(index):
        for omi, digest in work[index::4]:
            try:
                Importer(clients[index]).start(omi, omi, digest, KEY, URL, written_at)
            except Exception as error:  # a worker's failure: its event is retried
                failures.append(error)
                Importer(clients[index]).start(omi, omi, digest, KEY, URL, written_at)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for omi, digest in contents:
        made = [i for i in fake_outscale.images.values() if i["ImageName"] == omi]
        assert len(made) == 1, omi
        assert {"Key": "omi:digest", "Value": digest} in made[0]["Tags"]
