"""Each OMI's state as a user asks for it (``omi-manifest status``), read from the bucket."""

from __future__ import annotations

from dataclasses import dataclass

from .convention import Defaults
from .grouping import Member, plan_group
from .pipeline import current_markers, manifest_key
from .signing import format_expiry
from .store import Publication, Store

NO_NAME = "(no omi:name)"  # files at the bucket root without the tag share no OMI


@dataclass(frozen=True)
class SnapshotState:
    """One file of an OMI: every problem recorded for it, or the status it has."""

    key: str
    status: str
    problems: tuple[str, ...]


@dataclass(frozen=True)
class OmiStatus:
    name: str
    present: int
    expected: int
    state: str  # published, waiting, error, or pending (complete, not yet published)
    expires: str | None = None
    manifest: str | None = None
    error: str | None = None
    snapshots: tuple[SnapshotState, ...] = ()


def _groups(store: Store, name: str | None) -> dict[str, tuple[list[Member], Publication | None]]:
    """Every group's member records and publication: the only reads of the state."""
    groups = {name: store.read_group(name)} if name is not None else store.list_groups()
    return {
        group: (
            [m for mk in current_markers(found.markers) if (m := store.read_member(mk.state_key))],
            found.published,
        )
        for group, found in sorted(groups.items())
        if found.markers
    }


def omi_statuses(store: Store, defaults: Defaults, name: str | None = None) -> list[OmiStatus]:
    """One line per OMI (or just ``name``), from the state records."""
    statuses = []
    for group, (members, published) in _groups(store, name).items():
        plan = plan_group(group, members, defaults)
        errors = sorted(s for s in plan.statuses.values() if s.startswith("error: "))
        if errors:
            state, error = "error", errors[0].removeprefix("error: ")
        elif published:
            state, error = "published", None
        else:
            state, error = ("pending" if plan.image else "waiting"), None
        snapshots = tuple(
            SnapshotState(
                key=member.key,
                status=plan.statuses.get(member.key, state),
                problems=tuple(member.problems),
            )
            for member in sorted(members, key=lambda m: m.key)
        )
        statuses.append(
            OmiStatus(
                name=group or NO_NAME,
                present=plan.present,
                expected=plan.expected,
                state=state,
                expires=format_expiry(published.expires) if published else None,
                manifest=manifest_key(store.manifest_prefix, group) if published else None,
                error=error,
                snapshots=snapshots,
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


def format_details(status: OmiStatus) -> str:
    """One OMI as ``label: value`` lines, then each file with its state and every problem
    recorded for it (a status tag has room for one)."""
    lines = [
        f"omi:       {status.name}",
        f"state:     {status.state}" + (f" - {status.error}" if status.error else ""),
        f"snapshots: {status.present} of {status.expected}",
        f"manifest:  {status.manifest or 'none published'}",
        f"url:       expires {status.expires}" if status.expires else "url:       none",
        "files:",
    ]
    for snapshot in status.snapshots:
        state = snapshot.status.split(":", 1)[0]
        if snapshot.problems:
            count = len(snapshot.problems)
            lines.append(f"  {snapshot.key}: {state}, {count} problem{'s' * (count > 1)}")
            lines += [f"    - {problem}" for problem in snapshot.problems]
        else:
            lines.append(f"  {snapshot.key}: {snapshot.status}")
    return "\n".join(lines)
