"""The state layout's pure parts: key segments, what a listing says, which record stands."""

from __future__ import annotations

import pytest

from chalicelib.pipeline import current_markers
from chalicelib.scheduler import in_slice
from chalicelib.store import (
    Marker,
    ObjectState,
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


def marker(key_hash="h1", etag="e1", tags="t1", version="v1", modified="1", group="g"):
    state_key = f".omi-state/groups/{group}/{key_hash}@{etag}@0@ok@{tags}"
    return Marker.parse(state_key, version, modified)


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


def test_publication_key_names_its_digest_and_expiry():
    found = Publication.parse(".omi-state/groups/web/~published@abc@20261207T184000Z")
    assert (found.group, found.digest, found.expires.isoformat()) == (
        "web",
        "abc",
        "2026-12-07T18:40:00+00:00",
    )


def test_finished_needs_one_group_one_done_and_matching_facts():
    state = ObjectState("h", frozenset({"web"}), frozenset({("e1", "t1")}))
    assert state.finished("e1", "t1", "web")
    assert state.finished('"e1"', "t1", "web")  # ETags come quoted from S3
    assert state.finished(None, "t1", "web")  # a tagging event: content not compared
    assert not state.finished("e2", "t1", "web")
    assert not state.finished("e1", "t2", "web")
    assert not state.finished("e1", "t1", "other")
    two_groups = ObjectState("h", frozenset({"web", "old"}), frozenset({("e1", "t1")}))
    assert not two_groups.finished("e1", "t1", "web")
    unfinished = ObjectState("h", frozenset({"web"}), frozenset())
    assert not unfinished.finished("e1", "t1", "web")


def test_newest_record_of_a_snapshot_stands_during_a_replacement():
    old = marker(etag="old", modified="2026-12-01 10:00:00")
    new = marker(etag="new", modified="2026-12-01 10:00:05")
    other = marker(key_hash="h2")
    assert current_markers([new, other, old]) == sorted([new, other], key=lambda m: m.state_key)


def test_digest_changes_with_any_record_content():
    base = [marker(), marker(key_hash="h2")]
    assert membership_digest(base) == membership_digest(list(reversed(base)))
    assert membership_digest(base) != membership_digest([marker(version="v2"), base[1]])


def test_every_object_falls_in_exactly_one_slice_of_a_round():
    hashes = [f"{n:08x}" + "0" * 24 for n in range(0, 10_000, 37)]
    for hashed in hashes:
        assert sum(in_slice(hashed, slot, 24) for slot in range(24)) == 1
    assert all(in_slice(hashed, 5, 1) for hashed in hashes)
