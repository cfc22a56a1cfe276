"""``omi-manifest put``: upload one OMI's snapshots with their ``omi:`` tags set at creation.

Uploading first and tagging after lets the pipeline see each file untagged for a
moment: a two-disk OMI whose first disk lands without ``omi:snapshots=2`` is
published as a one-disk manifest, then withdrawn when the tag arrives. Tags sent
with the upload (``PutObject`` and ``CreateMultipartUpload`` both take them) never
show that state.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from .. import convention, signing
from ..config import Settings
from ..convention import PREFIX
from .console import ProgressBar

TAG_VALUE = re.compile(r"[A-Za-z0-9 _.:/=+\-@]{0,256}")
USER_TAG_ROOM = convention.MAX_TAGS - 1  # one is kept for the pipeline's omi:status
SNAPSHOT_OPTIONS = ("volume-type", "iops", "delete-on-termination")
IMAGE_OPTIONS = ("description", "architecture", "product-type", "account")
OPTIONS = ("omi", *SNAPSHOT_OPTIONS, *IMAGE_OPTIONS)  # each is put's --OPTION and an omi: tag
WAIT_INTERVAL = 1.0


class PutError(Exception):
    """What stops an upload before it starts, or a wait that ends without a manifest."""


@dataclass(frozen=True)
class Upload:
    path: str
    key: str
    tags: dict[str, str]


def parse_destination(destination: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` to (bucket, prefix ending in ``/`` or empty)."""
    if not destination.startswith("s3://"):
        raise PutError(f"{destination} is not s3://BUCKET/PREFIX/ - the last argument says where")
    bucket, _, prefix = destination[5:].partition("/")
    if not bucket:
        raise PutError(f"{destination} names no bucket - use s3://BUCKET/PREFIX/")
    if prefix and not prefix.endswith("/"):
        raise PutError(
            f"{destination} must end with / - put keeps the file names, in the folder given"
        )
    return bucket, prefix


def devices_in_order(count: int) -> list[str]:
    """``/dev/sda1``, then ``/dev/sdb``, ``/dev/sdc``…: OUTSCALE's first disk, then the others."""
    if count > 26:
        raise PutError(f"{count} files: an OMI has at most 26 disks here (/dev/sda1 to /dev/sdz)")
    return ["/dev/sda1"] + [f"/dev/sd{chr(ord('b') + n)}" for n in range(count - 1)]


def plan_uploads(
    files: Sequence[str],
    destination: str,
    options: dict[str, str | None],
    settings: Settings,
) -> tuple[str, list[Upload]]:
    """The bucket and one upload per file, each with the tags the pipeline needs.

    Devices come from the file names when every name is a device (``sdb.qcow2``),
    else from the order given. ``omi:snapshots`` goes on every file, so whichever
    lands first already says how many to wait for; image-level options go on the
    first file only, leaving room for the pipeline's status tag.
    """
    bucket, prefix = parse_destination(destination)
    if not prefix and not options.get("omi"):
        raise PutError(
            f"s3://{bucket}/ is the bucket root - give the OMI's folder (s3://{bucket}/NAME/) "
            "or --omi NAME"
        )
    keys = [prefix + os.path.basename(path) for path in files]
    if len(set(keys)) != len(keys):
        raise PutError("two files have the same name - each snapshot needs its own key")
    named = [convention.device_from_key(key) for key in keys]
    devices = [None] * len(keys) if all(named) else devices_in_order(len(keys))
    omi = options.get("omi")
    uploads = []
    for number, (path, key, device) in enumerate(zip(files, keys, devices, strict=True)):
        tags = {"name": omi, "device": device}
        if len(files) > 1:
            tags["snapshots"] = str(len(files))
        tags |= {name: options.get(name) for name in SNAPSHOT_OPTIONS}
        if number == 0:
            tags |= {name: options.get(name) for name in IMAGE_OPTIONS}
        found = {PREFIX + name: value for name, value in tags.items() if value is not None}
        _check(key, found, settings)
        uploads.append(Upload(path, key, found))
    return bucket, uploads


def _check(key: str, tags: dict[str, str], settings: Settings) -> None:
    for name, value in tags.items():
        if not TAG_VALUE.fullmatch(value):
            raise PutError(
                f"{name} {value!r} cannot be a tag value - use at most 256 letters, digits, "
                "spaces and _ . : / = + - @"
            )
    if len(tags) > USER_TAG_ROOM:
        raise PutError(
            f"{key} would get {len(tags)} tags - at most {USER_TAG_ROOM} leave room for omi:status"
        )
    found = convention.read_settings(key, tags, settings.defaults, settings.reserved_prefixes)
    if found.problems:
        raise PutError(f"{key}: {found.problems[0]}")


def omi_name(upload: Upload) -> str:
    return upload.tags.get(PREFIX + "name") or convention.default_name(upload.key) or ""


def upload_all(client: Any, bucket: str, uploads: list[Upload], say: Callable[[str], None]) -> None:
    """Upload in the order given; multipart (with the same tags) for large files."""
    for upload in uploads:
        progress = None
        if sys.stderr.isatty():
            progress = ProgressBar(upload.key, os.path.getsize(upload.path))
        try:
            client.upload_file(
                upload.path,
                bucket,
                upload.key,
                ExtraArgs={"Tagging": urlencode(upload.tags)},
                Callback=progress.add if progress else None,
            )
        finally:
            if progress:
                progress.close()
        shown = " ".join(f"{k}={v}" for k, v in upload.tags.items())
        say(f"uploaded s3://{bucket}/{upload.key} {shown}".rstrip())


PUBLISHED = ("published:", "importing: ", "imported: ")  # the manifest is there (spec 9)


def wait_for_manifest(
    tags_of: Callable[[str], dict[str, str] | None],
    uploads: list[Upload],
    manifest_key: str,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], None] = time.sleep,
) -> tuple[str | None, dict[str, str]]:
    """Poll the uploaded objects' ``omi:status`` until all are published or one is in error.

    Returns the manifest URL (None on error) and every object's status. A status on an
    object can only be the pipeline's answer to this upload: the upload replaced the
    object's whole tag set.
    """
    deadline = clock() + timeout
    while True:
        statuses = {u.key: (tags_of(u.key) or {}).get(convention.STATUS, "") for u in uploads}
        if any(s.startswith("error:") for s in statuses.values()):
            return None, statuses
        if all(s.startswith(PUBLISHED) for s in statuses.values()):
            url = signing.url_from_tags(tags_of(manifest_key) or {})
            if url is not None:
                return url, statuses
        if clock() >= deadline:
            waiting = "; ".join(f"{k}: {s or 'no status yet'}" for k, s in statuses.items())
            raise PutError(f"no manifest after {timeout:g} s - {waiting}")
        pause(WAIT_INTERVAL)
