"""The tag convention: object key and ``omi:*`` tags to snapshot settings, and status text.

Pure: plain values in, plain values out. Every message is written for the
``omi:status`` tag, so it uses only the characters a tag value allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from posixpath import basename, dirname

from .inspection import image_suffix
from .inspection.result import safe_name, tag_safe

PREFIX = "omi:"
STATUS = "omi:status"
RENEW = "omi:renew"
SNAPSHOT_TAGS = (
    "name",
    "device",
    "ordering",
    "volume-type",
    "iops",
    "delete-on-termination",
    "size",
)
IMAGE_TAGS = (
    "snapshots",
    "architecture",
    "product-type",
    "description",
    "account",
    "import",  # true / false: import this OMI into OUTSCALE, whatever the stage says
    "image-name",  # the name of the imported OMI, when not the OMI's own
)
KNOWN_TAGS = frozenset(PREFIX + name for name in (*SNAPSHOT_TAGS, *IMAGE_TAGS)) | {STATUS, RENEW}
MAX_TAGS = 10
TAG_VALUE_LIMIT = 256

VOLUME_TYPES = ("standard", "gp2", "io1")
ARCHITECTURES = ("x86_64", "i386")
PRODUCT_TYPES = ("0001", "0002", "0004", "0005")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_ ()/.\-]{3,128}")  # OUTSCALE's ImageName rule
NAME_RULE = "use 3 to 128 letters digits spaces and _ / . - or parentheses"
ACCOUNT_PATTERN = re.compile(r"[0-9]{12}")
NUMBER_PATTERN = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit takes "²" too

# OUTSCALE's own limits, from its API reference (outscale/osc-api, outscale.yaml):
# BlockDeviceMappingImage.DeviceName - the root device is /dev/sda1, the others /dev/sdX,
# /dev/sdXX, /dev/xvdX or /dev/xvdXX (first X from b to z, second from a to z);
# BsuToCreate.Iops / CreateVolume.Iops - io1 takes at most 13000 IOPS and 300 per GiB
# (100 is the least the API accepts); CreateVolume.Size - at most 14901 GiB.
ROOT_DEVICE = "/dev/sda1"
DEVICE_STEM = r"sda1|(?:sd|xvd)[b-z][a-z]?"
DEVICE_PATTERN = re.compile(rf"/dev/(?:{DEVICE_STEM})")
STEM_PATTERN = re.compile(DEVICE_STEM)
DEVICE_RULE = (
    "use /dev/sda1 for the first disk and /dev/sdb to /dev/sdz or /dev/xvdb to /dev/xvdz "
    "for the others - a second letter a to z is allowed"
)
MIN_IOPS, MAX_IOPS, MAX_IOPS_PER_GIB = 100, 13000, 300
MAX_VOLUME_GIB = 14901
GIB = 1 << 30


@dataclass(frozen=True)
class Defaults:
    """What a stage configures for tags a user leaves out."""

    volume_type: str = "standard"
    delete_on_termination: bool = True
    architecture: str = "x86_64"
    product_types: tuple[str, ...] = ("0001",)
    description: str = ""
    account: str | None = None


@dataclass(frozen=True)
class SnapshotSettings:
    """What the key and tags of one snapshot say; ``problems`` lists what is wrong."""

    name: str | None
    device: str | None
    ordering: int | None = None
    volume_type: str = "standard"
    iops: int | None = None
    delete_on_termination: bool = True
    size_hint: int | None = None
    image: dict[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def is_reserved(key: str, reserved_prefixes: tuple[str, ...]) -> bool:
    return key.startswith(reserved_prefixes)


def candidate_by_name(key: str) -> bool:
    """A key named like a disk image: one we import (``.qcow2``, ``.raw.gz``, …) or another
    (``.img``, ``.vmdk``, ``.iso``, …) that gets a message saying what to rename or convert."""
    return image_suffix(key) is not None


def is_candidate(key: str, tags: dict[str, str], reserved_prefixes: tuple[str, ...]) -> bool:
    """A snapshot candidate: a disk-image name, or any ``omi:`` tag of the user's."""
    if is_reserved(key, reserved_prefixes):
        return False
    return candidate_by_name(key) or bool(user_tags(tags))


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    """The user's ``omi:*`` tags: what decides grouping (the pipeline's status excluded)."""
    return {k: v for k, v in sorted(tags.items()) if k.startswith(PREFIX) and k != STATUS}


def name_problem(name: str, reserved_prefixes: tuple[str, ...]) -> str | None:
    """Why ``name`` cannot be an OMI name, or None."""
    shown = safe_name(name)
    if not NAME_PATTERN.fullmatch(name):
        return f"OMI name {shown} is invalid - {NAME_RULE}"
    parts = name.split("/")
    if name.startswith("/") or name.endswith("/") or any(p in ("", ".", "..") for p in parts):
        return f"OMI name {shown} is invalid - no leading or trailing / and no . or .. parts"
    if any((name + "/").startswith(prefix) for prefix in reserved_prefixes):
        return f"OMI name {shown} is invalid - it starts with a prefix the pipeline reserves"
    return None


def default_name(key: str) -> str | None:
    """The folder that holds the file: ``web-server/sda1.qcow2`` gives ``web-server``."""
    folder = dirname(key)
    return basename(folder) or None


def device_from_key(key: str) -> str | None:
    """``/dev/sdb`` from ``…/sdb.qcow2`` when the file is named after a device.

    The first disk may be named ``sda`` or ``sda1``: OUTSCALE calls it ``/dev/sda1``.
    """
    stem = basename(key)
    suffix = image_suffix(stem)
    if suffix:
        stem = stem[: -len(suffix) - 1]
    if stem == "sda":
        return ROOT_DEVICE
    return f"/dev/{stem}" if STEM_PATTERN.fullmatch(stem) else None


def device_problem(key: str) -> str:
    return (
        f"cannot tell the device of {safe_name(key)} - name the file after its "
        "device such as sdb.qcow2 or set the omi:device tag"
    )


def _as_int(tags: dict[str, str], tag: str, problems: list[str], least: int = 0) -> int | None:
    value = tags.get(PREFIX + tag)
    if value is None:
        return None
    if not NUMBER_PATTERN.fullmatch(value) or int(value) < least:
        problems.append(f"omi:{tag} {tag_safe(value)} is not a whole number of at least {least}")
        return None
    return int(value)


def _as_choice(
    tags: dict[str, str], tag: str, choices: tuple[str, ...], problems: list[str]
) -> str | None:
    value = tags.get(PREFIX + tag)
    if value is not None and value not in choices:
        problems.append(f"omi:{tag} {safe_name(value)} is not one of {' '.join(choices)}")
        return None
    return value


def read_settings(
    key: str, tags: dict[str, str], defaults: Defaults, reserved_prefixes: tuple[str, ...]
) -> SnapshotSettings:
    """The settings of one snapshot from its key and tags, with every problem found."""
    problems: list[str] = []
    unknown = sorted(k for k in user_tags(tags) if k not in KNOWN_TAGS)
    if unknown:
        problems.append(
            f"unknown tag {safe_name(unknown[0])} - known tags are omi: followed by "
            + " ".join((*SNAPSHOT_TAGS, *IMAGE_TAGS))
        )
    name = tags.get(PREFIX + "name") or default_name(key)
    if name is None:
        problems.append(
            f"{safe_name(key)} is at the bucket root - put it in a folder named after its OMI "
            "or set the omi:name tag"
        )
    elif problem := name_problem(name, reserved_prefixes):
        problems.append(problem)
    device = tags.get(PREFIX + "device")
    if device is not None and not DEVICE_PATTERN.fullmatch(device):
        problems.append(f"omi:device {safe_name(device)} is not an OUTSCALE device - {DEVICE_RULE}")
    volume_type = _as_choice(tags, "volume-type", VOLUME_TYPES, problems) or defaults.volume_type
    iops = _as_int(tags, "iops", problems, least=1)
    if volume_type == "io1" and iops is None:
        problems.append("omi:volume-type io1 needs omi:iops - set omi:iops to a whole number")
    if volume_type != "io1" and iops is not None:
        problems.append(f"omi:iops is only for io1 volumes - this one is {volume_type}")
    dot = _as_choice(tags, "delete-on-termination", ("true", "false"), problems)
    image = _image_settings(tags, problems)
    device = device or device_from_key(key)
    if device is None and int(image.get("snapshots", "1")) > 1:
        problems.append(device_problem(key))
    return SnapshotSettings(
        name=name,
        device=device,
        ordering=_as_int(tags, "ordering", problems, least=1),
        volume_type=volume_type,
        iops=iops if volume_type == "io1" else None,
        delete_on_termination=defaults.delete_on_termination if dot is None else dot == "true",
        size_hint=_as_int(tags, "size", problems, least=1),
        image=image,
        problems=tuple(problems),
    )


def volume_problems(volume_type: str, iops: int | None, virtual_size: int | None) -> list[str]:
    """OUTSCALE's limits on the volume a snapshot becomes; ``virtual_size`` None: not known."""
    problems = []
    gib = -(-virtual_size // GIB) if virtual_size else None
    if gib is not None and gib > MAX_VOLUME_GIB:
        problems.append(
            f"disk of {gib} GiB is larger than the {MAX_VOLUME_GIB} GiB OUTSCALE allows for a "
            "volume - shrink it or spread the data over several disks"
        )
    if volume_type != "io1" or iops is None:
        return problems
    if not MIN_IOPS <= iops <= MAX_IOPS:
        problems.append(
            f"omi:iops {iops} is outside the {MIN_IOPS} to {MAX_IOPS} OUTSCALE allows for io1 "
            f"- set omi:iops between {MIN_IOPS} and {MAX_IOPS}"
        )
    elif gib is not None and iops > MAX_IOPS_PER_GIB * gib:
        problems.append(
            f"omi:iops {iops} is more than the {MAX_IOPS_PER_GIB} per GiB OUTSCALE allows: "
            f"this {gib} GiB volume takes at most {MAX_IOPS_PER_GIB * gib} - lower omi:iops "
            "or use a larger disk"
        )
    return problems


def _image_settings(tags: dict[str, str], problems: list[str]) -> dict[str, str]:
    """Image-level values set explicitly on this snapshot, checked and normalised."""
    image: dict[str, str] = {}
    count = _as_int(tags, "snapshots", problems, least=1)
    if count is not None:
        image["snapshots"] = str(count)
    architecture = _as_choice(tags, "architecture", ARCHITECTURES, problems)
    if architecture:
        image["architecture"] = architecture
    products = tags.get(PREFIX + "product-type")
    if products is not None:
        codes = products.split()
        bad = [code for code in codes if code not in PRODUCT_TYPES]
        if bad or not codes:
            problems.append(
                f"omi:product-type {safe_name(products)} must be codes among "
                + " ".join(PRODUCT_TYPES)
            )
        else:
            image["product-type"] = " ".join(dict.fromkeys(codes))
    if PREFIX + "description" in tags:
        image["description"] = tags[PREFIX + "description"]
    account = tags.get(PREFIX + "account")
    if account is not None:
        if ACCOUNT_PATTERN.fullmatch(account):
            image["account"] = account
        else:
            problems.append(f"omi:account {safe_name(account)} is not a 12-digit account id")
    wanted = _as_choice(tags, "import", ("true", "false"), problems)
    if wanted:
        image["import"] = wanted
    image_name = tags.get(PREFIX + "image-name")
    if image_name is not None:
        if NAME_PATTERN.fullmatch(image_name):
            image["image-name"] = image_name
        else:
            problems.append(f"omi:image-name {safe_name(image_name)} is invalid - {NAME_RULE}")
    return image


# --- status text ------------------------------------------------------------------


def _status(text: str) -> str:
    return tag_safe(text)[:TAG_VALUE_LIMIT]


def status_waiting(present: int, expected: int, name: str) -> str:
    return _status(f"waiting: {present} of {expected} snapshots of {name}")


def status_published(manifest_key: str) -> str:
    return _status(f"published: {manifest_key}")


def status_error(message: str) -> str:
    return _status(f"error: {message}")
