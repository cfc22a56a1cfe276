"""A local run's workers share one pipeline: evaluations of one OMI take turns, and one
asked for while another runs is skipped once a later one has written every status."""

from __future__ import annotations

import threading
import time

from chalicelib.pipeline import Turns


def test_an_evaluation_asked_for_during_another_is_covered_only_by_a_later_one():
    turns = Turns()
    seen: dict[str, bool] = {}
    first_runs, release_first = threading.Event(), threading.Event()
    asked = threading.Barrier(3)

    def first() -> None:
        with turns.of("app") as (covered, cover):
            seen["first"] = covered
            first_runs.set()
            release_first.wait(10)
            cover()

    def later(name: str) -> None:
        first_runs.wait(10)
        with turns.of("app") as (covered, cover):
            seen[name] = covered
            cover()
        asked.wait(10)

    threads = [threading.Thread(target=first)]
    threads += [threading.Thread(target=later, args=(n,)) for n in ("second", "third")]
    for thread in threads:
        thread.start()
    first_runs.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until both later ones wait for their turn
        with turns._lock:
            if turns._turns["app"].waiting == 3:
                break
        time.sleep(0.001)
    release_first.set()
    asked.wait(10)
    for thread in threads:
        thread.join(10)
    # The first began before the others were asked for: it covers neither. Whichever of
    # the two goes next began after both were asked for, so it covers the other.
    assert seen["first"] is False
    assert sorted([seen["second"], seen["third"]]) == [False, True]
    assert turns._turns == {}


def test_another_omi_does_not_wait():
    turns = Turns()
    with turns.of("app") as (covered, _), turns.of("web") as (other, _):
        assert covered is False and other is False
