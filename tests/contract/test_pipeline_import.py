"""The pipeline imports what it publishes (spec section 9): moto's S3, and the stateful
OUTSCALE fake behind ``prism proxy`` (every request checked against the API description).
Imports are counted at the fake."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from chalicelib import importing
from chalicelib.config import Settings
from chalicelib.notifications import ObjectChange
from chalicelib.pipeline import IMPORT_LEASE
from chalicelib.scheduler import Pass
from tests.harness import BUCKET, REGION, Harness, create_bucket

PUBLIC = "https://oos.eu-west-2.outscale.com"
MANIFEST = "manifests/web.json"
OUTSCALE_CALLS = ("CreateImage", "ReadImages", "CreateTags")


@pytest.fixture
def omi(fake_api):
    """A bucket on moto whose pipeline imports every OMI through the checked client. The
    clock is the real one: the fake dates its images with it."""
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        create_bucket(s3)
        settings = Settings(
            bucket=BUCKET, region=REGION, public_endpoint_url=PUBLIC, import_images=True
        )
        harness = Harness(s3, settings, now=datetime.now(UTC).replace(microsecond=0))
        harness.pipeline.outscale = fake_api.client
        yield harness


def made(fake, name=None):
    """The images the fake holds (of one name)."""
    return [i for i in fake.images.values() if name is None or i["ImageName"] == name]


def calls(fake) -> int:
    return sum(fake.count(action) for action in OUTSCALE_CALLS)


def events(logs) -> list[tuple[str, str]]:
    records = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    return [(r["event"], r["omi"]) for r in records if "event" in r and "omi" in r]


def test_published_imported_followed_to_available(omi, samples, fake_outscale, captured_logs):
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    (image,) = made(fake_outscale)
    image_id = image["ImageId"]
    assert image["ImageName"] == "web"
    assert image["FileLocation"] == omi.manifest_url("web").split("?")[0]
    manifest_tags = omi.tags(MANIFEST)
    assert manifest_tags["omi:image-id"] == image_id
    assert manifest_tags["omi:image-state"] == "pending"
    assert omi.status("web/sda1.qcow2") == f"importing: {image_id}"

    fake_outscale.settle(image_id, "available")
    assert omi.pipeline.follow_imports() == 0
    assert omi.tags(MANIFEST)["omi:image-state"] == "available"
    assert omi.status("web/sda1.qcow2") == f"imported: {image_id} - available"
    assert events(captured_logs) == [
        ("published", "web"),
        ("import-started", "web"),
        ("imported", "web"),
    ]
    # Nothing pending: the check is one listing and no call to OUTSCALE.
    before = calls(fake_outscale)
    assert omi.writes_during(omi.pipeline.follow_imports) == []
    assert calls(fake_outscale) == before
    # A pass reading every tag takes the import's status as current: it evaluates nothing.
    report = Pass(omi.pipeline, 48 * 3600, check_tags=True).run()
    assert report.outcomes["checked"] == 1 and report.outcomes["reconciled"] == 0, report


def test_the_fast_path_after_an_import_stays_cheap(omi, samples, fake_outscale):
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    (image,) = made(fake_outscale)
    fake_outscale.settle(image["ImageId"], "available")
    omi.pipeline.follow_imports()
    before, reads = calls(fake_outscale), len(omi.calls)
    assert omi.writes_during(lambda: omi.deliver("web/sda1.qcow2")) == []
    assert calls(fake_outscale) == before
    # The same requests as a published OMI without import, and the manifest's tags.
    assert omi.calls[reads:].count("GetObjectTagging") == 2


def test_a_failed_import_says_why_on_every_snapshot(omi, samples, fake_outscale, captured_logs):
    tags = {"omi:name": "web", "omi:snapshots": "2"}
    omi.drop("web/sda1.qcow2", samples["qcow2"], {**tags, "omi:device": "/dev/sda1"})
    omi.drop("web/sdb.qcow2", samples["qcow2"], {**tags, "omi:device": "/dev/sdb"})
    (image,) = made(fake_outscale)
    fake_outscale.settle(image["ImageId"], "failed", "sdb: unreadable qcow2, 40%")
    omi.pipeline.follow_imports()
    expected = "error: import failed: sdb: unreadable qcow2_ 40_"
    assert omi.status("web/sda1.qcow2") == expected
    assert omi.status("web/sdb.qcow2") == expected
    assert omi.tags(MANIFEST)["omi:image-state"] == "failed"
    assert ("import-failed", "web") in events(captured_logs)
    # Another process (its cache empty) agrees: one ReadImages for the comment, no write.
    omi.pipeline.import_reasons.clear()
    assert omi.writes_during(lambda: omi.deliver("web/sdb.qcow2")) == []


def test_a_republished_omi_is_a_new_import(omi, samples, fake_outscale, captured_logs):
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    (first,) = made(fake_outscale)
    fake_outscale.settle(first["ImageId"], "available")
    omi.pipeline.follow_imports()
    omi.drop("web/sda1.qcow2", samples["qcow2-2g"])  # new content
    second = [i for i in made(fake_outscale) if i["ImageId"] != first["ImageId"]]
    assert len(second) == 1 and second[0]["ImageName"].startswith("web-")
    assert fake_outscale.images[first["ImageId"]]["State"] == "available"
    tags = omi.tags(MANIFEST)
    assert (tags["omi:image-id"], tags["omi:image-state"]) == (second[0]["ImageId"], "pending")
    assert omi.status("web/sda1.qcow2") == f"importing: {second[0]['ImageId']}"
    assert f"earlier image {first['ImageId']} left alone" in captured_logs.getvalue()


def test_a_taken_name_is_an_error_naming_it(omi, samples, fake_outscale, captured_logs):
    other = fake_outscale.add_image("web", "https://elsewhere/b/k.json")
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    assert omi.status("web/sda1.qcow2") == (
        "error: image name web is already used in the account - set omi:image-name to another name"
    )
    assert omi.tags(MANIFEST)["omi:image-state"] == "error"
    assert "omi:image-id" not in omi.tags(MANIFEST)
    assert f"already used by {other}" in captured_logs.getvalue()
    assert fake_outscale.count("CreateImage") == 0
    assert ("rejected", "web") in events(captured_logs)
    assert omi.writes_during(lambda: omi.deliver("web/sda1.qcow2")) == []


def test_the_tag_turns_import_off_for_one_omi(omi, samples, fake_outscale):
    omi.drop("web/sda1.qcow2", samples["qcow2"], {"omi:import": "false"})
    assert omi.status("web/sda1.qcow2") == f"published: {MANIFEST}"
    assert calls(fake_outscale) == 0


def test_a_withdrawal_under_a_pending_import_is_logged(omi, samples, captured_logs):
    omi.drop("web/sda1.qcow2", samples["qcow2"])
    image_id = omi.tags(MANIFEST)["omi:image-id"]
    omi.delete("web/sda1.qcow2")
    omi.deliver("web/sda1.qcow2", event="ObjectRemoved:Delete")
    assert not omi.exists(MANIFEST)
    assert f"manifest withdrawn while image {image_id} is still importing" in (
        captured_logs.getvalue()
    )
    assert ("withdrawn", "web") in events(captured_logs)


class Crash(Exception):
    """An invocation dying at a chosen write."""


def crash_at_tag(omi, name: str, times: int = 1):
    """Make the next ``times`` writes of tag ``name`` on the manifest die before they land."""
    store = omi.pipeline.store
    real = store.set_tag
    left = [times]

    def dying(key, tag, value, still=lambda _: True):
        if key == MANIFEST and tag == name and left[0]:
            left[0] -= 1
            raise Crash(f"died before writing {tag}")
        return real(key, tag, value, still)

    store.set_tag = dying


@pytest.mark.parametrize("tag", ["omi:image-id", "omi:image-state"])
def test_a_crash_after_create_image_is_completed_by_the_retry(omi, samples, fake_outscale, tag):
    crash_at_tag(omi, tag)
    omi.put("web/sda1.qcow2", samples["qcow2"])
    with pytest.raises(RuntimeError, match="1 object changes failed"):
        omi.deliver("web/sda1.qcow2")
    assert omi.exists(MANIFEST) and len(made(fake_outscale)) == 1
    omi.deliver("web/sda1.qcow2")  # a duplicate, at once: left to the publisher
    assert "omi:image-id" not in omi.tags(MANIFEST) or tag == "omi:image-state"
    omi.now += IMPORT_LEASE + timedelta(seconds=1)
    omi.deliver("web/sda1.qcow2")  # the platform's retry, after its delay
    (image,) = made(fake_outscale)
    assert fake_outscale.count("CreateImage") == 1
    assert omi.tags(MANIFEST)["omi:image-id"] == image["ImageId"]
    assert omi.status("web/sda1.qcow2") == f"importing: {image['ImageId']}"


def test_four_workers_duplicated_reordered_events_and_crashes(omi, samples, fake_outscale):
    """Three OMIs of two snapshots each; every event delivered three times, in mixed order,
    by four workers, with crashes injected at the manifest's tag writes: one CreateImage
    per OMI, counted at the fake, and every status says the import."""
    keys = []
    for name in ("web", "database", "cache"):
        tags = {"omi:name": name, "omi:snapshots": "2"}
        for device in ("sda1", "sdb"):
            key = f"{name}/{device}.qcow2"
            omi.put(key, samples["qcow2"], {**tags, "omi:device": f"/dev/{device}"})
            keys.append(key)
    deliveries = [key for key in keys for _ in range(3)]
    deliveries = deliveries[1::2] + deliveries[::-2]
    crash_at_tag(omi, "omi:image-id", times=2)
    failed: list[str] = []

    def worker(index: int) -> None:
        for key in deliveries[index::4]:
            try:
                omi.pipeline.handle([ObjectChange(BUCKET, key, "ObjectCreated:Put")])
            except RuntimeError:
                failed.append(key)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed
    omi.now += IMPORT_LEASE + timedelta(seconds=1)
    for _ in range(3):  # the platform's retries of the failed invocations, after their delay
        retried, failed[:] = list(failed), []
        for key in retried:
            try:
                omi.deliver(key)
            except RuntimeError:
                failed.append(key)
    assert failed == []
    assert fake_outscale.count("CreateImage") == 3
    for name in ("web", "database", "cache"):
        (image,) = made(fake_outscale, name)
        manifest = omi.tags(f"manifests/{name}.json")
        assert manifest[importing.IMAGE_ID_TAG] == image["ImageId"]
        for device in ("sda1", "sdb"):
            assert omi.status(f"{name}/{device}.qcow2") == f"importing: {image['ImageId']}"


def test_the_check_finishes_an_import_whose_publisher_died(omi, samples, fake_outscale):
    """No retry comes (it was lost too): the 5-minute check finds the claim left before
    CreateImage and, once the lease is over, records the import."""
    crash_at_tag(omi, "omi:image-id")
    omi.put("web/sda1.qcow2", samples["qcow2"])
    with pytest.raises(RuntimeError):
        omi.deliver("web/sda1.qcow2")
    omi.pipeline.follow_imports()  # within the lease: left alone
    assert "omi:image-id" not in omi.tags(MANIFEST)
    omi.now += IMPORT_LEASE + timedelta(seconds=1)
    assert omi.pipeline.follow_imports() == 0
    (image,) = made(fake_outscale)
    assert omi.tags(MANIFEST)["omi:image-id"] == image["ImageId"]
    assert omi.status("web/sda1.qcow2") == f"importing: {image['ImageId']}"
    fake_outscale.settle(image["ImageId"], "available")
    assert omi.pipeline.follow_imports() == 0
    assert omi.status("web/sda1.qcow2") == f"imported: {image['ImageId']} - available"
    assert fake_outscale.count("CreateImage") == 1
