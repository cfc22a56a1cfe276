"""The state layout's pure parts: key segments, what a listing says, which records count."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chalicelib.scheduler import in_slice
from chalicelib.store import (
    Filed,
    Filing,
    Group,
    Marker,
    Publication,
    group_from_segment,
    group_segment,
    membership_digest,
)


@pytest.mark.parametrize(
    "name", ["web-server", "", ".", "..", "a/b", "~", "Web Server (prod)", "x.y", "%2E"]
)
def test_group_segment_is_one_safe_segment_and_round_trips(name):
    segment = group_segment(name)
    assert segment and "/" not in segment and segment not in (".", "..")
    assert group_from_segment(segment) == name


def test_unnamed_group_cannot_collide_with_a_name():
    assert group_segment("") == "~" != group_segment("~")


def marker(key_hash="h1", etag="e1", tags="t1", version="v1", group="g"):
    state_key = f".omi-state/groups/{group}/{key_hash}@{etag}@0@ok@{tags}"
    return Marker.parse(state_key, version)


def test_marker_key_round_trips_its_fields():
    found = marker()
    assert (found.group, found.key_hash, found.etag, found.declared, found.ok, found.tags) == (
        "g",
        "h1",
        "e1",
        0,
        True,
        "t1",
    )


def test_publication_hint_names_its_digest_expiry_and_manifest_etag():
    found = Publication.parse(".omi-state/groups/web/~published@abc@20261207T184000Z@md5")
    assert (found.group, found.digest, found.expires.isoformat(), found.etag) == (
        "web",
        "abc",
        "2026-12-07T18:40:00+00:00",
        "md5",
    )


def test_two_records_of_one_snapshot_are_seen_as_such():
    group = Group("g", [marker(etag="old"), marker(etag="new"), marker(key_hash="h2")])
    assert group.duplicated() == {"h1"}
    assert Group("g", [marker(), marker(key_hash="h2")]).duplicated() == set()


def test_announcements_name_their_groups_and_content():
    when = datetime(2026, 12, 1, tzinfo=UTC)
    filed = Filed((Filing("web", "e1", when), Filing("web", "e2", when), Filing("old", "e1", when)))
    assert filed.groups == {"web", "old"}
    assert filed.announced("web", "e2") == Filing("web", "e2", when)
    assert filed.announced("old", "e2") is None


def test_digest_changes_with_any_record_content():
    base = [marker(), marker(key_hash="h2")]
    assert membership_digest(base) == membership_digest(list(reversed(base)))
    assert membership_digest(base) != membership_digest([marker(version="v2"), base[1]])


def test_every_object_falls_in_exactly_one_slice_of_a_round():
    hashes = [f"{n:08x}" + "0" * 24 for n in range(0, 10_000, 37)]
    for hashed in hashes:
        assert sum(in_slice(hashed, slot, 24) for slot in range(24)) == 1
    assert all(in_slice(hashed, 5, 1) for hashed in hashes)
