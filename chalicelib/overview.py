"""Each OMI's state as a user asks for it (``omi-manifest status``), read from the bucket."""

from __future__ import annotations

from dataclasses import dataclass

from .grouping import Member, plan_group
from .importing import IMAGE_ID_TAG, IMAGE_STATE_TAG
from .pipeline import Pipeline
from .signing import format_expiry
from .store import ManifestHead

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
    image: str | None = None  # the OUTSCALE import: "ami-12345678 pending" (spec section 9)


def _groups(
    pipeline: Pipeline, name: str | None
) -> dict[str, tuple[list[Member], ManifestHead | None]]:
    """Every group's member records, and its manifest if it is there and built from them
    (the fence: a manifest whose digest is not the records' is not called published)."""
    store = pipeline.store
    groups = {name: store.read_group(name)} if name is not None else store.list_groups()
    return {
        group: (
            [m for marker in found.markers if (m := pipeline.member(marker))],
            pipeline.fenced(found),
        )
        for group, found in sorted(groups.items())
        if found.markers
    }


def omi_statuses(pipeline: Pipeline, name: str | None = None) -> list[OmiStatus]:
    """One line per OMI (or just ``name``), from the state records."""
    statuses = []
    for group, (members, published) in _groups(pipeline, name).items():
        plan = plan_group(group, members, pipeline.settings.defaults)
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
                expires=format_expiry(published.expires)
                if published and published.expires
                else None,
                manifest=pipeline.manifest_key(group) if published else None,
                error=error,
                snapshots=snapshots,
                image=_image(pipeline, group) if published else None,
            )
        )
    return statuses


def _image(pipeline: Pipeline, name: str) -> str | None:
    """The import recorded on a published manifest (one tag read per published OMI)."""
    tags = pipeline.store.tags(pipeline.manifest_key(name)) or {}
    if IMAGE_STATE_TAG not in tags:
        return None
    return f"{tags.get(IMAGE_ID_TAG, 'no image')} {tags[IMAGE_STATE_TAG]}"


def format_table(statuses: list[OmiStatus]) -> str:
    rows = [("OMI", "SNAPSHOTS", "STATE", "URL EXPIRES", "IMAGE", "ERROR")]
    rows += [
        (
            s.name,
            f"{s.present}/{s.expected}",
            s.state,
            s.expires or "-",
            s.image or "-",
            s.error or "",
        )
        for s in statuses
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True))
        + "  "
        + row[5]
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
        f"image:     {status.image or 'none'}",
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
