"""Each OMI's state as a user asks for it (``omi-manifest status``), read from the bucket."""

from __future__ import annotations

from dataclasses import dataclass

from .convention import Defaults
from .grouping import plan_group
from .pipeline import current_markers, manifest_key
from .signing import format_expiry
from .store import Store


@dataclass(frozen=True)
class OmiStatus:
    name: str
    present: int
    expected: int
    state: str  # published, waiting, error, or pending (complete, not yet published)
    expires: str | None = None
    manifest: str | None = None
    error: str | None = None


def omi_statuses(store: Store, defaults: Defaults, name: str | None = None) -> list[OmiStatus]:
    """One line per OMI (or just ``name``), from the state records."""
    groups = {name: store.read_group(name)} if name is not None else store.list_groups()
    statuses = []
    for group, records in sorted(groups.items()):
        if not records.markers:
            continue
        found = current_markers(records.markers)
        members = [m for mk in found if (m := store.read_member(mk.state_key))]
        plan = plan_group(group, members, defaults)
        errors = sorted(s for s in plan.statuses.values() if s.startswith("error: "))
        published = records.published
        if errors:
            state, error = "error", errors[0].removeprefix("error: ")
        elif published:
            state, error = "published", None
        else:
            state, error = ("pending" if plan.image else "waiting"), None
        statuses.append(
            OmiStatus(
                name=group,
                present=plan.present,
                expected=plan.expected,
                state=state,
                expires=format_expiry(published.expires) if published else None,
                manifest=manifest_key(store.manifest_prefix, group) if published else None,
                error=error,
            )
        )
    return statuses


def format_table(statuses: list[OmiStatus]) -> str:
    rows = [("OMI", "SNAPSHOTS", "STATE", "URL EXPIRES", "ERROR")]
    rows += [
        (s.name, f"{s.present}/{s.expected}", s.state, s.expires or "-", s.error or "")
        for s in statuses
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    ).rstrip()
