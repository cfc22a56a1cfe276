"""Import a published OMI into OUTSCALE once per content, and follow it (spec section 9).

What the pipeline calls, and when:

- ``wanted(stage_imports, image_values)``: after grouping, whether this OMI is imported
  (``OMI_IMPORT`` for the stage, ``omi:import`` on a snapshot overrides it).
- ``image_name_of(omi, image_values)``: the ``ImageName`` asked for (``omi:image-name`` or
  the OMI name).
- ``Importer(api).start(omi, image_name, digest, manifest_key, manifest_url,
  manifest_written_at) -> ImportState``: right after the manifest carrying ``digest`` is
  written (or found written, with no ``omi:image-id`` for it yet); safe to call again,
  concurrently, late or after a crash: it sends ``CreateImage`` only when no image of this
  (OMI, digest) exists. Then write ``manifest_tags(state)`` on the manifest and
  ``snapshot_status(state)`` on each snapshot.
- ``Importer(api).follow(image_ids) -> dict[image_id, ImportState]``: on the short schedule,
  for the manifests whose ``omi:image-state`` is ``pending`` (``pending_image(tags)``); one
  ``ReadImages`` for all of them. Write the tags and statuses again when the state changed.
- ``event_kind(state)``: the event to send when a manifest's ``omi:image-state`` changes.

How one import per (OMI, digest) holds without a record of our own: the image is its own
record. Its ``ImageName`` is chosen from (OMI, digest) and what the account holds, and
OUTSCALE refuses a second image of one name, so two workers racing to create it end with one
image; ``CreateTags`` then marks it with ``omi:name`` and ``omi:digest``. A retry looks for
that mark first; for a crash between ``CreateImage`` and ``CreateTags`` it looks by name, and
an untagged image there is ours when its ``FileLocation`` holds the manifest's path and it was
created after the manifest was written (an earlier content's import was created before).

Names: the OMI name (or ``omi:image-name``) while it is free or holds this content's image.
When an earlier import of this OMI holds it (a republished OMI), the new content is imported
as ``<name>-<digest>``: the earlier image is left alone and named in the log. When an image
that is not an import of this OMI holds it, the import is refused with an ``error:`` status
that names that image and ``omi:image-name``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from urllib.parse import quote

from .convention import NAME_PATTERN, TAG_VALUE_LIMIT, status_error
from .inspection.result import tag_safe
from .observability import count, logger
from .outscale import ApiError, Image, OutcomeUnknown, OutscaleApi

IMAGE_ID_TAG = "omi:image-id"  # on the manifest
IMAGE_STATE_TAG = "omi:image-state"  # on the manifest: pending, available, failed, error
MANIFEST_TAGS = (IMAGE_ID_TAG, IMAGE_STATE_TAG)
NAME_TAG, DIGEST_TAG, MANIFEST_TAG = "omi:name", "omi:digest", "omi:manifest"  # on the image

PENDING, AVAILABLE, FAILED, ERROR = "pending", "available", "failed", "error"
IMPORT_STATUSES = ("importing: ", "imported: ", "error: import failed: ", "error: image name ")
EVENT_OF_STATE = {PENDING: "import-started", AVAILABLE: "imported", FAILED: "import-failed"}


@dataclass(frozen=True)
class ImportState:
    """Where the import of one content of one OMI stands.

    ``state`` is OUTSCALE's (``pending``, ``available``, ``failed``) or ``error`` when no
    image was asked for (``comment`` says why). ``started`` is true only for the call that
    sent the ``CreateImage``; ``earlier_image`` names an earlier import of the OMI that keeps
    the plain name.
    """

    omi: str
    digest: str
    image_id: str | None
    image_name: str
    state: str
    comment: str = ""
    started: bool = False
    earlier_image: str | None = None

    @classmethod
    def of(cls, image: Image, omi: str = "", digest: str = "") -> ImportState:
        return cls(
            omi=omi or image.tags.get(NAME_TAG, ""),
            digest=digest or image.tags.get(DIGEST_TAG, ""),
            image_id=image.image_id,
            image_name=image.name,
            state=image.state,
            comment=image.state_comment,
        )


# --- pure decisions -----------------------------------------------------------------


def wanted(stage_imports: bool, image_values: Mapping[str, str]) -> bool:
    """``omi:import`` on the OMI wins over the stage's ``OMI_IMPORT``."""
    tag = image_values.get("import")
    return stage_imports if tag is None else tag == "true"


def image_name_of(omi: str, image_values: Mapping[str, str]) -> str:
    return image_values.get("image-name") or omi


def suffixed_name(name: str, digest: str) -> str:
    """``web-server-3f2a…``: the name of a later content while an earlier image holds
    ``name``; cut so that it stays within OUTSCALE's 128 characters."""
    suffix = f"-{digest}"
    return name[: 128 - len(suffix)] + suffix


def snapshot_status(state: ImportState) -> str:
    """The ``omi:status`` of each snapshot of an imported OMI. Parentheses are not allowed
    in a tag value, so the spec's ``imported: ami-… (available)`` reads
    ``imported: ami-… - available`` here."""
    if state.state == PENDING:
        return _bounded(f"importing: {state.image_id}")
    if state.state == AVAILABLE:
        return _bounded(f"imported: {state.image_id} - available")
    if state.state == FAILED:
        return status_error(f"import failed: {state.comment or 'no reason given'}")
    return status_error(state.comment)


def refusal(image_name: str) -> str:
    """Why no image was asked for, from the name alone, so that the pipeline rebuilds the
    same status from the manifest's ``omi:image-state=error`` (the log names the image
    that holds a taken name)."""
    if not NAME_PATTERN.fullmatch(image_name):
        return (
            f"image name {tag_safe(image_name)} is invalid - set omi:image-name to 3 to 128 "
            "letters digits spaces _ / . -"
        )
    return (
        f"image name {tag_safe(image_name)} is already used in the account "
        "- set omi:image-name to another name"
    )


def manifest_tags(state: ImportState) -> dict[str, str]:
    """The manifest's two import tags; a refused import has no image id (the pipeline
    removes a stale one: it owns both ``MANIFEST_TAGS``)."""
    tags = {IMAGE_STATE_TAG: state.state}
    if state.image_id:
        tags[IMAGE_ID_TAG] = state.image_id
    return tags


def is_import_status(status: str) -> bool:
    """A snapshot status ``snapshot_status`` gives (its change is the import's event)."""
    return status.startswith(IMPORT_STATUSES)


def pending_image(manifest_tags: Mapping[str, str]) -> str | None:
    """The image id a manifest's tags say is still being imported, else None."""
    if manifest_tags.get(IMAGE_STATE_TAG) == PENDING:
        return manifest_tags.get(IMAGE_ID_TAG) or None
    return None


def event_kind(state: ImportState) -> str:
    """``import-started``, ``imported``, ``import-failed``, or ``rejected`` (refused)."""
    return EVENT_OF_STATE.get(state.state, "rejected")


def _bounded(text: str) -> str:
    return tag_safe(text)[:TAG_VALUE_LIMIT]


def _manifest_paths(manifest_key: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((manifest_key, quote(manifest_key, safe="/~"))))


def is_this_import(
    image: Image, omi: str, digest: str, manifest_key: str, written_at: datetime
) -> bool | None:
    """True: the image of this (OMI, digest); False: an earlier import of this OMI;
    None: not an import of this OMI at all."""
    if DIGEST_TAG in image.tags:
        if image.tags.get(NAME_TAG) != omi:
            return None
        return image.tags[DIGEST_TAG] == digest
    if not any(f"/{path}" in image.file_location for path in _manifest_paths(manifest_key)):
        return None
    # S3 dates are whole seconds: an image made in the second the manifest was written is ours.
    return image.created_at is None or image.created_at >= written_at.replace(microsecond=0)


# --- the calls ----------------------------------------------------------------------


class Importer:
    """Starts and follows imports through an ``OutscaleApi``."""

    def __init__(self, api: OutscaleApi) -> None:
        self.api = api

    def start(
        self,
        omi: str,
        image_name: str,
        digest: str,
        manifest_key: str,
        manifest_url: str,
        manifest_written_at: datetime,
    ) -> ImportState:
        """The import of this content: found if it exists, else started. Never raises for a
        name that cannot be used (an ``error`` state says why); raises ``ApiError`` when
        OUTSCALE cannot be asked, and the caller's retry runs it again safely."""
        if not NAME_PATTERN.fullmatch(image_name):
            return ImportState(omi, digest, None, image_name, ERROR, refusal(image_name))
        marked = [
            image
            for image in self.api.read_images(tags=[f"{DIGEST_TAG}={digest}"])
            if image.tags.get(NAME_TAG) == omi
        ]
        if marked:
            return ImportState.of(min(marked, key=lambda i: i.image_id), omi, digest)
        mine = (omi, digest, manifest_key, manifest_written_at)
        earlier = None
        for name in (image_name, suffixed_name(image_name, digest)):
            holders = self.api.read_images(names=[name])
            verdicts = {image.image_id: is_this_import(image, *mine) for image in holders}
            if ours := [i for i in holders if verdicts[i.image_id]]:
                return self._adopt(ours[0], mine, earlier)
            if any(verdict is None for verdict in verdicts.values()) or (holders and earlier):
                return self._name_taken(omi, digest, name, holders[0])
            if holders:
                earlier = holders[0].image_id
                continue
            return self._create(name, manifest_url, mine, earlier)
        raise AssertionError("unreachable: the second name is free, taken, or ours")

    def follow(self, image_ids: Iterable[str]) -> dict[str, ImportState]:
        """The current state of each image, in one ReadImages; an image that no longer
        exists (deleted by someone) is ``failed``."""
        wanted_ids = list(dict.fromkeys(image_ids))
        if not wanted_ids:
            return {}
        found = {image.image_id: image for image in self.api.read_images(ids=wanted_ids)}
        states = {}
        for image_id in wanted_ids:
            image = found.get(image_id)
            if image is None:
                states[image_id] = ImportState(
                    "", "", image_id, "", FAILED, f"image {image_id} no longer exists"
                )
            else:
                states[image_id] = ImportState.of(image)
        return states

    def _create(self, name, manifest_url, mine, earlier) -> ImportState:
        omi, digest = mine[0], mine[1]
        try:
            image = self.api.create_image(name, manifest_url)
        except OutcomeUnknown:
            # It may have been created: look by name before the caller's retry sends it again.
            again = [i for i in self.api.read_images(names=[name]) if is_this_import(i, *mine)]
            if not again:
                raise
            return self._adopt(again[0], mine, earlier)
        except ApiError as error:
            if not error.name_taken:
                raise
            holders = self.api.read_images(names=[name])  # another worker won the race?
            if ours := [i for i in holders if is_this_import(i, *mine)]:
                return self._adopt(ours[0], mine, earlier)
            if not holders:
                raise
            return self._name_taken(omi, digest, name, holders[0])
        count("ImportsStarted")
        state = replace(ImportState.of(image, omi, digest), started=True, earlier_image=earlier)
        self._mark(image.image_id, mine)
        self._log_started(state)
        return state

    def _adopt(self, image: Image, mine, earlier) -> ImportState:
        """Our image, found untagged or by its mark: tag it (again) and report it."""
        if image.tags.get(DIGEST_TAG) != mine[1]:
            self._mark(image.image_id, mine)
        return replace(ImportState.of(image, mine[0], mine[1]), earlier_image=earlier)

    def _mark(self, image_id: str, mine) -> None:
        """The image's own record of what it imports; a failure here loses nothing (the name
        and FileLocation still find it), so it is logged and left to the next start."""
        omi, digest, manifest_key, _ = mine
        try:
            self.api.create_tags(
                image_id, {NAME_TAG: omi, DIGEST_TAG: digest, MANIFEST_TAG: manifest_key}
            )
        except ApiError:
            logger.warning(
                "image not tagged; the next check tags it", extra={"omi": omi, "image": image_id}
            )

    @staticmethod
    def _name_taken(omi: str, digest: str, name: str, holder: Image) -> ImportState:
        logger.warning(
            f"image name {tag_safe(name)} is already used by {holder.image_id}",
            extra={"omi": omi, "image": holder.image_id},
        )
        return ImportState(omi, digest, None, name, ERROR, refusal(name))

    @staticmethod
    def _log_started(state: ImportState) -> None:
        extra = {"omi": state.omi, "image": state.image_id, "image_name": state.image_name}
        if state.earlier_image:
            logger.info(
                f"earlier image {state.earlier_image} left alone; this content is imported as "
                f"{state.image_name}",
                extra=extra | {"earlier_image": state.earlier_image},
            )
        logger.info("import started", extra=extra | {"digest": state.digest})
