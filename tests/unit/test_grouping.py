"""One OMI's members to a plan: ordering, devices, image-level tags. No S3."""

from chalicelib.convention import Defaults, SnapshotSettings
from chalicelib.grouping import Member, natural_key, plan_group


def member(key, device=None, problems=(), ordering=None, **image):
    settings = SnapshotSettings(name="web", device=device, ordering=ordering, image=image)
    return Member(key, "etag", 1000, 1 << 30, tuple(problems), settings)


def test_complete_omi_without_sda1_is_an_error():
    plan = plan_group(
        "web", [member("w/b", "/dev/sdb", snapshots="2"), member("w/c", "/dev/sdc")], Defaults()
    )
    assert plan.image is None
    assert set(plan.statuses.values()) == {
        "error: web has no /dev/sda1 - the boot disk of an OMI must be /dev/sda1"
    }


def test_waiting_omi_without_sda1_yet_is_waiting():
    plan = plan_group("web", [member("w/b", "/dev/sdb", snapshots="2")], Defaults())
    assert plan.statuses == {"w/b": "waiting: 1 of 2 snapshots of web"}


def test_natural_order_of_devices():
    devices = ["/dev/sda10", "/dev/sdb", "/dev/sda2", "/dev/xvda"]
    assert sorted(devices, key=natural_key) == ["/dev/sda2", "/dev/sda10", "/dev/sdb", "/dev/xvda"]


def test_ordering_follows_device_rank():
    plan = plan_group(
        "web",
        [
            member("w/b", "/dev/sdb", snapshots="3"),
            member("w/a", "/dev/sda1"),
            member("w/c", "/dev/xvdaa"),
        ],
        Defaults(),
    )
    assert [(s.key, s.ordering) for s in plan.image.snapshots] == [
        ("w/a", 1),
        ("w/b", 2),
        ("w/c", 3),
    ]


def test_explicit_ordering_wins_and_sorts():
    plan = plan_group(
        "web",
        [
            member("w/a", "/dev/sda1", ordering=5, snapshots="2"),
            member("w/b", "/dev/sdb", ordering=3),
        ],
        Defaults(),
    )
    assert [(s.key, s.ordering) for s in plan.image.snapshots] == [("w/b", 3), ("w/a", 5)]


def test_duplicate_ordering_is_an_error():
    plan = plan_group(
        "web",
        [
            member("w/a", "/dev/sda1", ordering=1, snapshots="2"),
            member("w/b", "/dev/sdb", ordering=1),
        ],
        Defaults(),
    )
    assert plan.image is None
    assert (
        plan.statuses["w/a"]
        == "error: two snapshots have the same omi:ordering - give each its own number"
    )


def test_single_snapshot_defaults_to_sda1_and_image_defaults():
    plan = plan_group("web", [member("w/disk")], Defaults(account="699659413885", description="d"))
    assert plan.image.snapshots[0].device == "/dev/sda1"
    assert (plan.image.account, plan.image.description) == ("699659413885", "d")


def test_image_tags_set_on_one_snapshot_apply_to_all():
    plan = plan_group(
        "web",
        [member("w/a", "/dev/sda1", snapshots="2", architecture="i386"), member("w/b", "/dev/sdb")],
        Defaults(),
    )
    assert plan.image.architecture == "i386"


def test_waiting_until_complete():
    plan = plan_group("web", [member("w/a", "/dev/sda1", snapshots="3")], Defaults())
    assert plan.image is None
    assert plan.statuses == {"w/a": "waiting: 1 of 3 snapshots of web"}
    assert (plan.present, plan.expected) == (1, 3)


def test_one_bad_member_blocks_the_others():
    plan = plan_group(
        "web",
        [
            member("w/a", "/dev/sda1", snapshots="2"),
            member("w/b", "/dev/sdb", problems=["p1", "p2"]),
        ],
        Defaults(),
    )
    assert plan.statuses == {
        "w/a": "error: OMI web is blocked by w/b: p1 +1 more",
        "w/b": "error: p1 +1 more",
    }


def test_untagged_files_that_disagree_blame_the_missing_count_first():
    """Two files uploaded untagged both default to /dev/sda1; the cause is the missing
    omi:snapshots, and the message names every tag to set, in one round."""
    plan = plan_group("db-server", [member("d/root.qcow2"), member("d/data.raw")], Defaults())
    assert set(plan.statuses.values()) == {
        "error: db-server has 2 snapshots but none has omi:snapshots - tag each "
        "omi:snapshots=2 and its omi:device - /dev/sda1 for the boot disk - or upload them "
        "with omi-manifest put"
    }
    counted = [member("d/a", "/dev/sda1", snapshots="1"), member("d/b", "/dev/sdb")]
    assert plan_group("db-server", counted, Defaults()).statuses["d/a"] == (
        "error: db-server has 2 snapshots but omi:snapshots says 1 - remove one or set "
        "omi:snapshots to 2"
    )
