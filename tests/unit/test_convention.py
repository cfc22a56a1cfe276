"""Keys and tags to snapshot settings: defaults, validation, status text. No S3."""

import pytest

from chalicelib import convention
from chalicelib.convention import Defaults, read_settings

RESERVED = ("manifests/", ".omi-state/")


def settings(key, tags=None, defaults=None):
    return read_settings(key, tags or {}, defaults or Defaults(), RESERVED)


def test_defaults_from_key_alone():
    found = settings("web-server/sda1.qcow2")
    assert found.name == "web-server" and found.device == "/dev/sda1"
    assert found.volume_type == "standard" and found.delete_on_termination is True
    assert found.iops is None and found.image == {} and found.problems == ()


def test_configured_defaults_apply():
    found = settings(
        "a/b/web/xvdb.raw", defaults=Defaults(volume_type="gp2", delete_on_termination=False)
    )
    assert found.name == "web" and found.device == "/dev/xvdb"
    assert found.volume_type == "gp2" and found.delete_on_termination is False


def test_every_tag_read():
    found = settings(
        "up/disk.raw.gz",
        {
            "omi:name": "db server",
            "omi:device": "/dev/sdc",
            "omi:snapshots": "3",
            "omi:ordering": "2",
            "omi:volume-type": "io1",
            "omi:iops": "3000",
            "omi:delete-on-termination": "false",
            "omi:size": "10737418240",
            "omi:architecture": "i386",
            "omi:product-type": "0002 0005",
            "omi:description": "A database",
            "omi:account": "699659413885",
        },
    )
    assert found.problems == ()
    assert (found.name, found.device, found.ordering, found.iops) == (
        "db server",
        "/dev/sdc",
        2,
        3000,
    )
    assert found.size_hint == 10737418240 and found.delete_on_termination is False
    assert found.image == {
        "snapshots": "3",
        "architecture": "i386",
        "product-type": "0002 0005",
        "description": "A database",
        "account": "699659413885",
    }


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        (
            {"omi:device": "sda1"},
            "omi:device sda1 is not an OUTSCALE device - use /dev/sda1 for the first disk and "
            "/dev/sdb to /dev/sdz or /dev/xvdb to /dev/xvdz for the others - a second letter "
            "a to z is allowed",
        ),
        ({"omi:iops": "\u00b2"}, "omi:iops _ is not a whole number of at least 1"),
        ({"omi:ordering": "0"}, "omi:ordering 0 is not a whole number of at least 1"),
        ({"omi:ordering": "\u0663"}, "omi:ordering _ is not a whole number of at least 1"),
        ({"omi:size": "1e9"}, "omi:size 1e9 is not a whole number of at least 1"),
        ({"omi:snapshots": "two"}, "omi:snapshots two is not a whole number of at least 1"),
        ({"omi:snapshots": "0"}, "omi:snapshots 0 is not a whole number of at least 1"),
        ({"omi:iops": "100"}, "omi:iops is only for io1 volumes - this one is standard"),
        (
            {"omi:delete-on-termination": "yes"},
            "omi:delete-on-termination yes is not one of true false",
        ),
        ({"omi:architecture": "arm64"}, "omi:architecture arm64 is not one of x86_64 i386"),
        (
            {"omi:product-type": "0003"},
            "omi:product-type 0003 must be codes among 0001 0002 0004 0005",
        ),
        ({"omi:account": "me"}, "omi:account me is not a 12-digit account id"),
        ({"omi:import": "yes"}, "omi:import yes is not one of true false"),
        (
            {"omi:image-name": "ab"},
            "omi:image-name ab is invalid - use 3 to 128 letters digits spaces and _ / . - "
            "or parentheses",
        ),
        ({"omi:image-name": "web:v2"}, "omi:image-name web:v2 is invalid - use 3 to 128"),
        ({"omi:image-name": "x" * 129}, "omi:image-name ..." + "x" * 57 + " is invalid"),
        (
            {"omi:devcie": "/dev/sdb"},
            "unknown tag omi:devcie - known tags are omi: followed by name",
        ),
        ({"omi:name": "manifests/x"}, "OMI name manifests/x is invalid - it starts with a prefix"),
        ({"omi:name": "/abs"}, "OMI name /abs is invalid - no leading or trailing /"),
    ],
)
def test_bad_tags(tags, message):
    assert settings("web/sda1.qcow2", tags).problems[0].startswith(message)


def test_import_tags_are_image_level():
    found = settings(
        "web/sda1.qcow2", {"omi:import": "false", "omi:image-name": "Web server (v2) 2026/1.0"}
    )
    assert found.problems == ()
    assert found.image == {"import": "false", "image-name": "Web server (v2) 2026/1.0"}


@pytest.mark.parametrize(
    ("key", "tags", "candidate"),
    [
        ("web/sda1.QCOW2", {}, True),
        ("web/sda1.raw.gz", {}, True),
        ("web/disk.img", {}, True),
        ("web/disk.vmdk", {}, True),
        ("web/install.ISO", {}, True),
        ("web/notes.txt", {}, False),
        ("web/disk.img", {"omi:name": "web"}, True),
        ("web/disk.txt", {"omi:status": "x", "team": "a"}, False),
        ("manifests/web.json", {"omi:url": "x"}, False),
        (".omi-state/objects/a.json", {}, False),
        ("manifests/sda1.qcow2", {}, False),
    ],
)
def test_candidates(key, tags, candidate):
    assert convention.is_candidate(key, tags, RESERVED) is candidate


def test_status_text_is_tag_safe_and_bounded():
    status = convention.status_error("bad, (very) bad & worse?" + "x" * 400)
    assert status.startswith("error: bad_ _very_ bad _ worse_")
    assert len(status) == 256
    assert (
        convention.status_waiting(1, 2, "web-server") == "waiting: 1 of 2 snapshots of web-server"
    )
    assert convention.status_published("manifests/w.json") == "published: manifests/w.json"


@pytest.mark.parametrize(
    "device",
    ["/dev/sda1", "/dev/sdb", "/dev/sdz", "/dev/sdba", "/dev/xvdb", "/dev/xvdzz"],
)
def test_outscale_device_names(device):
    assert settings("web/disk.raw", {"omi:device": device}).problems == ()


@pytest.mark.parametrize(
    "device",
    ["/dev/sda", "/dev/sda2", "/dev/sdb1", "/dev/vdb", "/dev/hdb", "/dev/xvda", "/dev/sdbbb"],
)
def test_device_names_outscale_refuses(device):
    problems = settings("web/disk.raw", {"omi:device": device}).problems
    assert problems[0].startswith(f"omi:device {device} is not an OUTSCALE device - use /dev/sda1")


@pytest.mark.parametrize(
    ("key", "device"),
    [
        ("web/sda1.qcow2", "/dev/sda1"),
        ("web/xvdc.raw.gz", "/dev/xvdc"),
        ("web/sdba.qcow2", "/dev/sdba"),
        ("web/sdab.qcow2", None),
        ("web/sda.qcow2", "/dev/sda1"),
        ("web/vdb.qcow2", None),
        ("web/sdb1.raw", None),
    ],
)
def test_device_from_file_name(key, device):
    assert convention.device_from_key(key) == device


GIB = 1 << 30


@pytest.mark.parametrize(
    ("volume_type", "iops", "size", "problems"),
    [
        ("io1", 3000, 10 * GIB, []),
        ("io1", 100, GIB, []),
        ("io1", 13000, 100 * GIB, []),
        ("gp2", None, 14901 * GIB, []),
        ("io1", 3000, None, []),
        (
            "io1",
            99,
            10 * GIB,
            ["omi:iops 99 is outside the 100 to 13000 OUTSCALE allows for io1 - set omi:iops "
             "between 100 and 13000"],
        ),
        (
            "io1",
            13001,
            None,
            ["omi:iops 13001 is outside the 100 to 13000 OUTSCALE allows for io1 - set "
             "omi:iops between 100 and 13000"],
        ),
        (
            "io1",
            3001,
            10 * GIB,
            ["omi:iops 3001 is more than the 300 per GiB OUTSCALE allows: this 10 GiB volume "
             "takes at most 3000 - lower omi:iops or use a larger disk"],
        ),
        (
            "io1",
            600,
            GIB + 512,
            [],
        ),
        (
            "standard",
            None,
            14901 * GIB + 512,
            ["disk of 14902 GiB is larger than the 14901 GiB OUTSCALE allows for a volume - "
             "shrink it or spread the data over several disks"],
        ),
    ],
)  # fmt: skip
def test_volume_limits(volume_type, iops, size, problems):
    assert convention.volume_problems(volume_type, iops, size) == problems
