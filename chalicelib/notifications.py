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
    etag: str = ""  # the object's ETag when the event was sent ("" when unknown or removed)
    size: int | None = None
    principal: str = ""  # who made the change (S3's userIdentity.principalId), if told

    @property
    def tags_only(self) -> bool:
        """A tagging event can only have changed tags: content changes bring their own
        ObjectCreated event."""
        return "ObjectTagging" in self.event_name


def object_changes(event: dict[str, Any]) -> list[ObjectChange]:
    """Every record of an S3 notification (Chalice's ``S3Event`` reads only the first)."""
    changes = []
    for record in event.get("Records", []):
        s3 = record.get("s3")
        name = record.get("eventName", "")
        if not s3 or "object" not in s3:
            continue
        found = s3["object"]
        changes.append(
            ObjectChange(
                bucket=s3["bucket"]["name"],
                key=unquote_plus(found["key"]),
                event_name=name,
                etag=str(found.get("eTag") or "").strip('"') if "Removed" not in name else "",
                size=found.get("size") if "Removed" not in name else None,
                principal=str((record.get("userIdentity") or {}).get("principalId") or ""),
            )
        )
    return changes
