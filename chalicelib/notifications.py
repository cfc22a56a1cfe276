"""S3 event notifications to plain object changes. Pure.

S3 URL-encodes keys in events (``+`` for a space, ``%2B`` for ``+``); they are
decoded here, exactly once, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus


@dataclass(frozen=True)
class ObjectChange:
    bucket: str
    key: str
    event_name: str


def object_changes(event: dict[str, Any]) -> list[ObjectChange]:
    """Every record of an S3 notification (Chalice's ``S3Event`` reads only the first)."""
    changes = []
    for record in event.get("Records", []):
        s3 = record.get("s3")
        name = record.get("eventName", "")
        if not s3 or "object" not in s3:
            continue
        changes.append(
            ObjectChange(
                bucket=s3["bucket"]["name"],
                key=unquote_plus(s3["object"]["key"]),
                event_name=name,
            )
        )
    return changes
