"""What an inspection found, and the text rules its messages follow."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Characters an S3 tag value may hold; every problem message is written with
# these only, because messages end up in the ``omi:status`` tag.
_UNSAFE = re.compile(r"[^A-Za-z0-9 _.:/=+\-@]")
NAME_LIMIT = 60


def tag_safe(text: str) -> str:
    """``text`` with every character a tag value may not hold replaced by ``_``."""
    return _UNSAFE.sub("_", text)


def safe_name(text: str) -> str:
    """A name from inside a file (backing file, data file) fit for a message."""
    cleaned = tag_safe(text).strip() or "_"
    # Keep the end of a long path: the file name is what the user recognises.
    return cleaned if len(cleaned) <= NAME_LIMIT else "..." + cleaned[3 - NAME_LIMIT :]


@dataclass(frozen=True)
class Inspection:
    """What the pipeline records for one snapshot file.

    ``format`` is what the content is (``qcow2``, ``raw``, ``qcow2.gz``,
    ``raw.gz``, or a foreign format's name such as ``vmdk``); ``problems``
    holds one actionable message per reason the file cannot be imported.
    """

    format: str
    virtual_size: int | None
    compressed_size: int
    problems: tuple[str, ...]
    bytes_read: int
    requests: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def importable(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "virtual_size": self.virtual_size,
            "compressed_size": self.compressed_size,
            "importable": self.importable,
            "problems": list(self.problems),
            "bytes_read": self.bytes_read,
            "requests": self.requests,
            "details": self.details,
        }
