"""The OMI import manifest (spec section 2): build, render and validate. Pure."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .convention import ARCHITECTURES, NAME_PATTERN, PRODUCT_TYPES, VOLUME_TYPES
from .grouping import ImageSpec

VERSION = 1
CONTENT_TYPE = "application/json"


def build(image: ImageSpec, urls: Mapping[str, str]) -> dict[str, Any]:
    """The manifest document, with ``urls`` giving each snapshot key its pre-signed URL."""
    document: dict[str, Any] = {
        "Name": image.name,
        "ProductTypes": list(image.product_types),
        "Snapshots": [
            {
                "Ordering": snap.ordering,
                "VolumeType": snap.volume_type,
                "Iops": snap.iops,
                "PreSignedUrl": urls[snap.key],
                "Filename": snap.key,
                "CompressedSize": snap.compressed_size,
                "DeleteOnTermination": snap.delete_on_termination,
                "Device": snap.device,
                "Size": snap.virtual_size,
            }
            for snap in image.snapshots
        ],
    }
    if image.account:
        document["User"] = image.account
    document |= {
        "Description": image.description,
        "Type": "machine",
        "Public": False,
        "Architecture": image.architecture,
    }
    return {"Version": VERSION, "Image": document}


def render(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


SNAPSHOT_FIELDS = {
    "Ordering",
    "VolumeType",
    "Iops",
    "PreSignedUrl",
    "Filename",
    "CompressedSize",
    "DeleteOnTermination",
    "Device",
    "Size",
}
SIGV4_QUERY = re.compile(
    r"^https?://[^?\s]+\?(?=.*X-Amz-Algorithm=AWS4-HMAC-SHA256)(?=.*X-Amz-Signature=)"
)


def validate(document: Any) -> list[str]:
    """Every way ``document`` departs from spec section 2, as messages naming the field."""
    if not isinstance(document, dict):
        return ["the manifest must be a JSON object"]
    problems: list[str] = []
    if document.get("Version") != VERSION:
        problems.append("Version must be 1")
    image = document.get("Image")
    if not isinstance(image, dict):
        return [*problems, "Image must be an object"]
    name = image.get("Name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        problems.append("Image.Name must be 3 to 128 characters of A-Z a-z 0-9 _ space ( ) / . -")
    products = image.get("ProductTypes")
    if (
        not isinstance(products, list)
        or not products
        or any(p not in PRODUCT_TYPES for p in products)
    ):
        problems.append(
            f"Image.ProductTypes must be a non-empty list of {', '.join(PRODUCT_TYPES)}"
        )
    if "User" in image and not (isinstance(image["User"], str) and image["User"].isdigit()):
        problems.append("Image.User must be an account id (digits, as a string)")
    if not isinstance(image.get("Description"), str):
        problems.append("Image.Description must be present and a string (it may be empty)")
    if image.get("Type") != "machine":
        problems.append('Image.Type must be "machine"')
    if image.get("Public") is not False:
        problems.append("Image.Public must be false")
    if image.get("Architecture") not in ARCHITECTURES:
        problems.append(f"Image.Architecture must be one of {', '.join(ARCHITECTURES)}")
    snapshots = image.get("Snapshots")
    if not isinstance(snapshots, list) or not snapshots:
        return [*problems, "Image.Snapshots must be a non-empty list"]
    for index, snap in enumerate(snapshots):
        problems += _snapshot_problems(f"Image.Snapshots[{index}]", snap)
    orderings = [s.get("Ordering") for s in snapshots if isinstance(s, dict)]
    if orderings != sorted(o for o in orderings if _is_int(o)):
        problems.append("Image.Snapshots must be sorted by Ordering, each an integer")
    devices = [s.get("Device") for s in snapshots if isinstance(s, dict)]
    if len(set(devices)) != len(devices):
        problems.append("Image.Snapshots: each Device must be unique within the image")
    return problems


def _snapshot_problems(where: str, snap: Any) -> list[str]:
    if not isinstance(snap, dict):
        return [f"{where} must be an object"]
    problems = [f"{where}.{field} is missing" for field in sorted(SNAPSHOT_FIELDS - snap.keys())]
    if snap.get("VolumeType") not in VOLUME_TYPES:
        problems.append(f"{where}.VolumeType must be one of {', '.join(VOLUME_TYPES)}")
    iops = snap.get("Iops")
    if snap.get("VolumeType") == "io1":
        if not _is_int(iops) or iops <= 0:
            problems.append(f"{where}.Iops must be a positive integer for io1")
    elif iops is not None:
        problems.append(f"{where}.Iops must be null unless VolumeType is io1")
    if not isinstance(snap.get("PreSignedUrl"), str) or not SIGV4_QUERY.match(snap["PreSignedUrl"]):
        problems.append(f"{where}.PreSignedUrl must be a Signature V4 pre-signed URL")
    if not isinstance(snap.get("Filename"), str) or not snap.get("Filename"):
        problems.append(f"{where}.Filename must be the object key")
    for field in ("CompressedSize", "Size"):
        if not _is_int(snap.get(field)) or snap[field] <= 0:
            problems.append(f"{where}.{field} must be a positive integer (bytes)")
    if _is_int(snap.get("Size")) and snap["Size"] % 512:
        problems.append(f"{where}.Size must be a multiple of 512")
    if not isinstance(snap.get("DeleteOnTermination"), bool):
        problems.append(f"{where}.DeleteOnTermination must be true or false")
    if not isinstance(snap.get("Device"), str) or not snap["Device"].startswith("/dev/"):
        problems.append(f"{where}.Device must be a device name such as /dev/sda1")
    return problems
