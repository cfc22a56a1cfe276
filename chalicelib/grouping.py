"""One OMI's snapshots to either a publishable image or a status for each snapshot.

Pure: the members come in as plain records, the plan goes out as plain data.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from .convention import (
    IMAGE_TAGS,
    Defaults,
    SnapshotSettings,
    device_problem,
    status_error,
    status_waiting,
)
from .inspection.result import safe_name

FIRST_DISK = SINGLE_DISK_DEVICE = "/dev/sda1"


@dataclass(frozen=True)
class Member:
    """What the pipeline recorded of one snapshot object."""

    key: str
    etag: str
    compressed_size: int
    virtual_size: int | None
    problems: tuple[str, ...]
    settings: SnapshotSettings
    content_problems: tuple[str, ...] = ()  # what inspection found: reused while the ETag holds


@dataclass(frozen=True)
class SnapshotSpec:
    key: str
    etag: str
    device: str
    ordering: int
    volume_type: str
    iops: int | None
    delete_on_termination: bool
    compressed_size: int
    virtual_size: int


@dataclass(frozen=True)
class ImageSpec:
    """Everything a manifest needs except the signed URLs."""

    name: str
    architecture: str
    product_types: tuple[str, ...]
    description: str
    account: str | None
    snapshots: tuple[SnapshotSpec, ...]


@dataclass(frozen=True)
class GroupPlan:
    """``image`` is set when the OMI can be published; ``statuses`` hold the rest."""

    name: str
    present: int
    expected: int
    statuses: dict[str, str]
    image: ImageSpec | None = None


def natural_key(text: str) -> tuple[tuple[int, object], ...]:
    """``sda2`` before ``sda10``."""
    return tuple(
        (1, int(part)) if part.isdigit() else (0, part) for part in re.split(r"(\d+)", text)
    )


def _short(key: str) -> str:
    return safe_name(key)


def _image_values(members: list[Member]) -> tuple[dict[str, str], str | None]:
    """Image-level tags set on any snapshot; they must agree where several set one."""
    seen: dict[str, dict[str, str]] = defaultdict(dict)
    for member in members:
        for tag, value in member.settings.image.items():
            seen[tag].setdefault(value, member.key)
    for tag in IMAGE_TAGS:
        if len(seen.get(tag, {})) > 1:
            (v1, k1), (v2, k2) = list(seen[tag].items())[:2]
            return {}, (
                f"snapshots disagree on omi:{tag}: {safe_name(v1)} on {_short(k1)} and "
                f"{safe_name(v2)} on {_short(k2)} - set it on one snapshot only"
            )
    return {tag: next(iter(values)) for tag, values in seen.items()}, None


def _devices(members: list[Member], expected: int) -> tuple[dict[str, str], dict[str, str]]:
    devices: dict[str, str] = {}
    problems: dict[str, str] = {}
    for member in members:
        device = member.settings.device or (SINGLE_DISK_DEVICE if expected == 1 else None)
        if device is None:
            problems[member.key] = device_problem(member.key)
        else:
            devices[member.key] = device
    return devices, problems


def _group_problem(name: str, members: list[Member], devices: dict[str, str], expected: int):
    """The first thing to fix, most likely cause first: several files with no
    ``omi:snapshots`` at all are an untagged upload, whatever their devices say."""
    by_device: dict[str, list[str]] = defaultdict(list)
    for key, device in devices.items():
        by_device[device].append(key)
    counted = any("snapshots" in member.settings.image for member in members)
    if len(members) > expected and not counted:
        return (
            f"{name} has {len(members)} snapshots but none has omi:snapshots - tag each "
            f"omi:snapshots={len(members)} and its omi:device - /dev/sda1 for the boot disk - "
            "or upload them with omi-manifest put"
        )
    for device, keys in sorted(by_device.items()):
        if len(keys) > 1:
            return (
                f"two snapshots of {name} use {device}: {_short(keys[0])} and {_short(keys[1])} "
                "- set omi:device on one of them"
            )
    if len(members) > expected:
        return (
            f"{name} has {len(members)} snapshots but omi:snapshots says {expected} - "
            f"remove one or set omi:snapshots to {len(members)}"
        )
    if len(members) == expected and len(devices) == expected and FIRST_DISK not in by_device:
        # OUTSCALE boots an image from /dev/sda1 (osc-api: BlockDeviceMappingImage).
        return f"{name} has no {FIRST_DISK} - the boot disk of an OMI must be {FIRST_DISK}"
    return None


def _orderings(members: list[Member], devices: dict[str, str]) -> tuple[dict[str, int], str | None]:
    ranked = sorted(devices, key=lambda key: natural_key(devices[key]))
    orderings = {
        key: next(m.settings.ordering for m in members if m.key == key) or rank
        for rank, key in enumerate(ranked, start=1)
    }
    values = list(orderings.values())
    if len(set(values)) != len(values):
        return orderings, "two snapshots have the same omi:ordering - give each its own number"
    return orderings, None


def plan_group(name: str, members: list[Member], defaults: Defaults) -> GroupPlan:
    """Decide what one OMI's snapshots amount to."""
    members = sorted(members, key=lambda m: m.key)
    image_values, problem = _image_values(members)
    expected = int(image_values.get("snapshots", "1"))
    devices, member_problems = _devices(members, expected)
    for member in members:
        if member.problems:
            member_problems[member.key] = member.problems[0] + (
                f" +{len(member.problems) - 1} more" if len(member.problems) > 1 else ""
            )
    problem = problem or _group_problem(name, members, devices, expected)
    orderings, ordering_problem = _orderings(members, devices)
    problem = problem or ordering_problem
    present = len(members)
    if member_problems or problem:
        statuses = {}
        first_bad = next(iter(sorted(member_problems)), None)
        for member in members:
            if member.key in member_problems:
                statuses[member.key] = status_error(member_problems[member.key])
            elif problem:
                statuses[member.key] = status_error(problem)
            else:
                statuses[member.key] = status_error(
                    f"OMI {name} is blocked by {_short(first_bad or '')}: "
                    f"{member_problems[first_bad]}"
                )
        return GroupPlan(name, present, expected, statuses)
    if present < expected:
        waiting = status_waiting(present, expected, name)
        return GroupPlan(name, present, expected, {m.key: waiting for m in members})
    snapshots = tuple(
        sorted(
            (
                SnapshotSpec(
                    key=m.key,
                    etag=m.etag,
                    device=devices[m.key],
                    ordering=orderings[m.key],
                    volume_type=m.settings.volume_type,
                    iops=m.settings.iops,
                    delete_on_termination=m.settings.delete_on_termination,
                    compressed_size=m.compressed_size,
                    virtual_size=m.virtual_size or 0,
                )
                for m in members
            ),
            key=lambda spec: spec.ordering,
        )
    )
    image = ImageSpec(
        name=name,
        architecture=image_values.get("architecture", defaults.architecture),
        product_types=tuple(
            image_values["product-type"].split()
            if "product-type" in image_values
            else defaults.product_types
        ),
        description=image_values.get("description", defaults.description),
        account=image_values.get("account", defaults.account),
        snapshots=snapshots,
    )
    return GroupPlan(name, present, expected, {}, image)
