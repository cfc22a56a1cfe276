"""What ``put`` sends, decided before anything is uploaded: keys, tags, devices, refusals."""

from __future__ import annotations

import pytest

from chalicelib.config import Settings
from chalicelib.local.put import PutError, Upload, plan_uploads, wait_for_manifest
from chalicelib.signing import PARAMS_BEFORE_TOKEN, SIGNATURE

SETTINGS = Settings(bucket="unused")
URL_TAGS = {tag: "x" for tag in (*PARAMS_BEFORE_TOKEN, SIGNATURE)}
NO_OPTIONS: dict[str, str | None] = {}


def test_devices_from_the_names_when_every_name_is_a_device():
    bucket, uploads = plan_uploads(
        ["/tmp/sdb.raw", "/tmp/sda1.qcow2"], "s3://b/web-server/", NO_OPTIONS, SETTINGS
    )
    assert bucket == "b"
    assert [(u.key, u.tags) for u in uploads] == [
        ("web-server/sdb.raw", {"omi:snapshots": "2"}),
        ("web-server/sda1.qcow2", {"omi:snapshots": "2"}),
    ]


def test_devices_in_the_order_given_otherwise_and_options_where_they_belong():
    options = {"omi": "db server", "volume-type": "io1", "iops": "500", "description": "db"}
    _, uploads = plan_uploads(["root.qcow2", "sdc.raw", "logs.raw"], "s3://b/", options, SETTINGS)
    assert [u.tags for u in uploads] == [
        {
            "omi:name": "db server",
            "omi:device": "/dev/sda1",
            "omi:snapshots": "3",
            "omi:volume-type": "io1",
            "omi:iops": "500",
            "omi:description": "db",
        },
        {
            "omi:name": "db server",
            "omi:device": "/dev/sdb",
            "omi:snapshots": "3",
            "omi:volume-type": "io1",
            "omi:iops": "500",
        },
        {
            "omi:name": "db server",
            "omi:device": "/dev/sdc",
            "omi:snapshots": "3",
            "omi:volume-type": "io1",
            "omi:iops": "500",
        },
    ]
    _, (single,) = plan_uploads(["disk.qcow2"], "s3://b/app/", NO_OPTIONS, SETTINGS)
    assert single == Upload("disk.qcow2", "app/disk.qcow2", {"omi:device": "/dev/sda1"})


ALL_OPTIONS = {
    "omi": "web",
    "volume-type": "io1",
    "iops": "100",
    "delete-on-termination": "true",
    "description": "d",
    "architecture": "i386",
    "product-type": "0001",
    "account": "123456789012",
}
TAG_CHARACTERS = "use at most 256 letters, digits, spaces and _ . : / = + - @"
NAME_RULE = "use 3 to 128 letters digits spaces and _ / . - or parentheses"


@pytest.mark.parametrize(
    ("files", "destination", "options", "message"),
    [
        (
            ["a.qcow2"],
            "b/web/",
            {},
            "b/web/ is not s3://BUCKET/PREFIX/ - the last argument says where",
        ),
        (["a.qcow2"], "s3:///web/", {}, "s3:///web/ names no bucket - use s3://BUCKET/PREFIX/"),
        (
            ["x/a.qcow2", "y/a.qcow2"],
            "s3://b/web/",
            {},
            "two files have the same name - each snapshot needs its own key",
        ),
        (
            ["a.qcow2"],
            "s3://b/web/",
            {"description": "a, b"},
            f"omi:description 'a, b' cannot be a tag value - {TAG_CHARACTERS}",
        ),
        (
            ["a.qcow2"],
            "s3://b/web/",
            {"iops": "100"},
            "web/a.qcow2: omi:iops is only for io1 volumes - this one is standard",
        ),
        (["a.qcow2"], "s3://b/ab/", {}, f"ab/a.qcow2: OMI name ab is invalid - {NAME_RULE}"),
        (
            ["a.qcow2", "b.qcow2"],
            "s3://b/web/",
            ALL_OPTIONS,
            "web/a.qcow2 would get 10 tags - at most 9 leave room for omi:status",
        ),
    ],
)
def test_refused_before_any_upload(files, destination, options, message):
    with pytest.raises(PutError) as refused:
        plan_uploads(files, destination, options, SETTINGS)
    assert str(refused.value) == message


def test_wait_ends_on_the_first_error_or_when_all_are_published():
    uploads = [Upload("a", "web/sda1.qcow2", {}), Upload("b", "web/sdb.qcow2", {})]
    answers = [
        {},
        {"omi:status": "waiting: 1 of 2 snapshots of web"},
        {"omi:status": "published: manifests/web.json"},
        {"omi:status": "published: manifests/web.json"},
        {"omi:url": "http://s/b/manifests/web.json"}
        | {tag: "x" for tag in (*PARAMS_BEFORE_TOKEN, SIGNATURE)},
    ]
    polls = iter(answers)
    url, statuses = wait_for_manifest(
        lambda key: next(polls), uploads, "manifests/web.json", 60, pause=lambda _: None
    )
    assert url.startswith("http://s/b/manifests/web.json?")
    assert set(statuses.values()) == {"published: manifests/web.json"}
    error = {"omi:status": "error: file named .raw is a qcow2 image - rename it to .qcow2"}
    url, statuses = wait_for_manifest(
        lambda key: error, uploads, "manifests/web.json", 60, pause=lambda _: None
    )
    assert url is None and statuses["web/sda1.qcow2"] == error["omi:status"]


def test_wait_gives_up_saying_where_each_file_is():
    uploads = [Upload("a", "web/sda1.qcow2", {})]
    now = iter(range(0, 1000, 30))
    with pytest.raises(PutError) as gave_up:
        wait_for_manifest(
            lambda key: {}, uploads, "m", 60, clock=lambda: next(now), pause=lambda _: None
        )
    assert str(gave_up.value) == "no manifest after 60 s - web/sda1.qcow2: no status yet"
