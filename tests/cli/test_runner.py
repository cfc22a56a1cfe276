"""``run --once`` exits non-zero exactly when its pass failed somewhere or an OMI is in error."""

from __future__ import annotations

from collections import Counter

import pytest

from chalicelib.local.runner import LocalRun, RunOptions
from chalicelib.scheduler import PassReport


@pytest.mark.parametrize(
    ("outcomes", "errors", "status", "said"),
    [
        ({"published": 1}, [], 0, []),
        ({"failed": 2}, [], 1, ["failed: 2 (see the lines above; the next pass tries again)"]),
        ({}, ["broken: bad"], 1, ["error: broken: bad"]),
    ],
)
def test_once_exit_status(monkeypatch, outcomes, errors, status, said):
    lines: list[str] = []
    local = LocalRun(RunOptions(once=True), say=lines.append)
    monkeypatch.setattr(local, "one_pass", lambda: PassReport(Counter(outcomes)))
    monkeypatch.setattr(local, "errors", lambda: errors)
    assert local._once() == status
    assert lines == said
