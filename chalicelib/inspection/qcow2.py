"""qcow2: read the header and decide whether OUTSCALE can import the image.

Layout from the qcow2 specification (docs/interop/qcow2.txt in QEMU). Each
safety rule is a named check returning a message a user can act on, so a new
rule is one more function in ``CHECKS``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import pairwise

from .result import safe_name

V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 104
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
HEADER_AREA_LIMIT = 64 * 1024  # header + extensions we are willing to read
L1_READ_LIMIT = 30 * 1024  # L1 tables up to this size (1.8 TiB at 64 KiB clusters) are checked
MAX_L1_BYTES = 32 * 1024 * 1024  # QEMU's own limit (QCOW_MAX_L1_SIZE)
MAX_REFTABLE_BYTES = 8 * 1024 * 1024  # QEMU's QCOW_MAX_REFTABLE_SIZE
MAX_SNAPSHOTS = 65536
MAX_BACKING_NAME = 1023
SNAPSHOT_ENTRY_MIN_BYTES = 40  # the fixed part of a snapshot table entry

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTENDED_L2 = 1 << 4
INCOMPAT_KNOWN = 0x1F

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_DATA_FILE = 0x44415441
EXT_CRYPTO = 0x0537BE77

COMPRESSION_TYPES = {0: "zlib", 1: "zstd"}
CRYPT_METHODS = {1: "AES", 2: "LUKS"}
L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1_RESERVED_MASK = 0x7F000000000001FF

ReadAt = Callable[[int, int], bytes]


class Qcow2Error(Exception):
    """The header cannot be read at all; the message is for the user."""


@dataclass(frozen=True)
class Qcow2Header:
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V2_HEADER_LENGTH
    compression_type: int = 0
    extensions: dict[int, bytes] = field(default_factory=dict)
    extension_problem: str | None = None

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def cluster_bits_valid(self) -> bool:
        return MIN_CLUSTER_BITS <= self.cluster_bits <= MAX_CLUSTER_BITS


def parse_header(head: bytes, read_at: ReadAt) -> Qcow2Header:
    """Decode the fixed header and its extensions (which may lie past ``head``)."""
    if len(head) < V2_HEADER_LENGTH:
        raise Qcow2Error(f"qcow2 header is truncated - the file holds only {len(head)} bytes")
    fields = struct.unpack_from(">4sIQIIQIIQQIIQ", head)
    version = fields[1]
    extra: dict[str, int] = {}
    if version >= 3:
        if len(head) < V3_HEADER_LENGTH:
            raise Qcow2Error(
                f"qcow2 v3 header is truncated - the file holds only {len(head)} bytes"
            )
        incompat, compat, autoclear, refcount_order, header_length = struct.unpack_from(
            ">QQQII", head, V2_HEADER_LENGTH
        )
        extra = {
            "incompatible_features": incompat,
            "compatible_features": compat,
            "autoclear_features": autoclear,
            "refcount_order": refcount_order,
            "header_length": header_length,
        }
        if header_length > V3_HEADER_LENGTH and len(head) > V3_HEADER_LENGTH:
            extra["compression_type"] = head[V3_HEADER_LENGTH]
    header = Qcow2Header(*fields[1:], **extra)
    extensions, problem = _read_extensions(header, head, read_at)
    return replace(header, extensions=extensions, extension_problem=problem)


def _read_extensions(
    header: Qcow2Header, head: bytes, read_at: ReadAt
) -> tuple[dict[int, bytes], str | None]:
    """Walk the extension chain that follows the header inside the first cluster.

    Bytes past ``head`` are fetched only as far as the chain really goes.
    """
    start = header.header_length
    if start % 8 or start < (V3_HEADER_LENGTH if header.version >= 3 else V2_HEADER_LENGTH):
        return {}, f"qcow2 header length {start} is invalid"
    if not header.cluster_bits_valid:
        return {}, None
    area_end = min(header.cluster_size, HEADER_AREA_LIMIT)
    if header.backing_file_offset:
        area_end = min(area_end, max(header.backing_file_offset, start))
    area = bytearray(head[:area_end])

    ended = False  # the file ended before the header area did

    def have(end: int) -> bool:
        nonlocal ended
        if end > len(area) and len(area) < area_end and not ended:
            wanted = min(area_end, max(end, len(area) + 4096)) - len(area)
            more = read_at(len(area), wanted)
            ended = len(more) < wanted
            area.extend(more)
        return end <= len(area)

    truncated = "qcow2 header is truncated inside its extensions - upload the whole file again"
    extensions: dict[int, bytes] = {}
    offset = start
    while have(offset + 8):
        ext_type, length = struct.unpack_from(">II", area, offset)
        if ext_type == EXT_END:
            return extensions, None
        data_end = offset + 8 + length
        if not have(data_end):
            if ended and data_end <= area_end:
                return extensions, truncated
            return (
                extensions,
                "qcow2 header extension runs past the header area - the header is damaged",
            )
        extensions[ext_type] = bytes(area[offset + 8 : data_end])
        offset += 8 + (length + 7) // 8 * 8
    if len(area) < area_end:
        return extensions, truncated
    return extensions, "qcow2 header extensions have no end marker - the header is damaged"


def backing_file_name(header: Qcow2Header, read_at: ReadAt) -> str:
    size = min(header.backing_file_size, MAX_BACKING_NAME)
    raw = read_at(header.backing_file_offset, size) if size else b""
    return safe_name(raw.decode("utf-8", "replace")) if raw else "of unknown name"


def l1_entries_needed(header: Qcow2Header) -> int:
    entry_bytes = 16 if header.incompatible_features & INCOMPAT_EXTENDED_L2 else 8
    bytes_per_l2 = header.cluster_size * (header.cluster_size // entry_bytes)
    return -(-header.size // bytes_per_l2)


def l1_table_end(head: bytes) -> int:
    """Where the L1 table ends, from the first bytes alone; 0 when unknown or too big to read."""
    if len(head) < 48:
        return 0
    l1_size, l1_offset = struct.unpack_from(">IQ", head, 36)
    return l1_offset + l1_size * 8 if l1_size * 8 <= L1_READ_LIMIT else 0


def table_ends(header: Qcow2Header) -> dict[str, int]:
    """Where each structure the header points to ends: the file must reach them all."""
    valid = header.cluster_bits_valid
    ends = {"header cluster": header.cluster_size if valid else V2_HEADER_LENGTH}
    if header.l1_size:
        ends["L1 table"] = header.l1_table_offset + header.l1_size * 8
    if valid:
        ends["refcount table"] = (
            header.refcount_table_offset + header.refcount_table_clusters * header.cluster_size
        )
    if header.nb_snapshots:
        ends["snapshot table"] = (
            header.snapshots_offset + header.nb_snapshots * SNAPSHOT_ENTRY_MIN_BYTES
        )
    return ends


def min_file_size(header: Qcow2Header) -> int:
    """The least length a file with this header can have: its tables must fit."""
    return max(table_ends(header).values())


# --- the checks -------------------------------------------------------------
# Each takes the header and the file size (None when unknown, as inside a
# gzip stream) and returns the user's message, or None when the rule holds.

Check = Callable[[Qcow2Header, int | None], str | None]


def check_header_extensions(h: Qcow2Header, file_size: int | None) -> str | None:
    return h.extension_problem


def check_header_in_first_cluster(h: Qcow2Header, file_size: int | None) -> str | None:
    if h.cluster_bits_valid and h.header_length > h.cluster_size:
        return (
            f"qcow2 header length {h.header_length} runs past the first cluster of "
            f"{h.cluster_size} bytes - the header is damaged"
        )
    return None


def check_backing_format_alone(h: Qcow2Header, file_size: int | None) -> str | None:
    if EXT_BACKING_FORMAT in h.extensions and not h.backing_file_offset:
        return (
            "qcow2 names a backing file format but no backing file - the header is inconsistent "
            "- rebuild it with qemu-img convert -O qcow2"
        )
    return None


def check_encryption(h: Qcow2Header, file_size: int | None) -> str | None:
    if h.crypt_method or EXT_CRYPTO in h.extensions:
        method = CRYPT_METHODS.get(h.crypt_method, f"method {h.crypt_method}")
        return (
            f"qcow2 is encrypted with {method} - OUTSCALE cannot import encrypted images - "
            "decrypt it with qemu-img convert -O qcow2 giving the passphrase in --object secret"
        )
    return None


def check_data_file(h: Qcow2Header, file_size: int | None) -> str | None:
    name = h.extensions.get(EXT_DATA_FILE)
    shown = safe_name(name.decode("utf-8", "replace")) if name else "of unknown name"
    if h.incompatible_features & INCOMPAT_DATA_FILE:
        return (
            f"qcow2 keeps its data in an external file {shown} - "
            "merge it with qemu-img convert -O qcow2"
        )
    if name is not None:
        return (
            f"qcow2 names an external data file {shown} without the data-file feature bit - "
            "the header is inconsistent - rebuild it with qemu-img convert -O qcow2"
        )
    return None


def check_dirty(h: Qcow2Header, file_size: int | None) -> str | None:
    if h.incompatible_features & INCOMPAT_DIRTY:
        return (
            "qcow2 was not closed cleanly: dirty bit set - "
            "repair it with qemu-img check -r all then upload it again"
        )
    return None


def check_corrupt(h: Qcow2Header, file_size: int | None) -> str | None:
    if h.incompatible_features & INCOMPAT_CORRUPT:
        return (
            "qcow2 is marked corrupt - repair it with qemu-img check -r all "
            "or recover the data with qemu-img convert"
        )
    return None


def check_extended_l2(h: Qcow2Header, file_size: int | None) -> str | None:
    if h.incompatible_features & INCOMPAT_EXTENDED_L2:
        return (
            "qcow2 uses extended L2 entries - convert it with "
            "qemu-img convert -O qcow2 -o extended_l2=off"
        )
    return None


def check_unknown_features(h: Qcow2Header, file_size: int | None) -> str | None:
    unknown = h.incompatible_features & ~INCOMPAT_KNOWN
    if unknown:
        bits = " ".join(str(bit) for bit in range(64) if unknown >> bit & 1)
        return (
            f"qcow2 uses unknown incompatible features: bits {bits} - "
            "convert it with qemu-img convert -O qcow2 -o compat=1.1"
        )
    return None


def check_compression_type(h: Qcow2Header, file_size: int | None) -> str | None:
    declared = bool(h.incompatible_features & INCOMPAT_COMPRESSION)
    if h.compression_type not in COMPRESSION_TYPES:
        return f"qcow2 uses unknown compression type {h.compression_type}"
    if declared != (h.compression_type != 0):
        return "qcow2 compression type and its feature bit disagree - the header is damaged"
    return None


def check_cluster_bits(h: Qcow2Header, file_size: int | None) -> str | None:
    if not h.cluster_bits_valid:
        return (
            f"qcow2 cluster bits {h.cluster_bits} are outside 9 to 21 - "
            "the header is damaged or not from QEMU"
        )
    return None


def check_virtual_size(h: Qcow2Header, file_size: int | None) -> str | None:
    if h.size == 0:
        return "qcow2 virtual size is 0 - the image holds no disk"
    if h.size % 512:
        return (
            f"qcow2 virtual size {h.size} is not a multiple of 512 - "
            "resize it with qemu-img resize to whole 512-byte sectors"
        )
    return None


def check_refcount_order(h: Qcow2Header, file_size: int | None) -> str | None:
    if h.refcount_order > 6:
        return f"qcow2 refcount order {h.refcount_order} is above 6 - the header is damaged"
    return None


def check_table_layout(h: Qcow2Header, file_size: int | None) -> str | None:
    """Tables must be cluster-aligned, big enough, within limits and apart."""
    if not h.cluster_bits_valid:
        return None
    cluster = h.cluster_size
    if h.l1_size * 8 > MAX_L1_BYTES:
        return f"qcow2 L1 table of {h.l1_size} entries is larger than QEMU allows"
    if h.l1_size < l1_entries_needed(h):
        return (
            f"qcow2 L1 table has {h.l1_size} entries but the virtual size needs "
            f"{l1_entries_needed(h)} - the header is damaged"
        )
    if h.refcount_table_clusters * cluster > MAX_REFTABLE_BYTES:
        return "qcow2 refcount table is larger than QEMU allows"
    if h.nb_snapshots > MAX_SNAPSHOTS:
        return f"qcow2 declares {h.nb_snapshots} snapshots - more than QEMU allows"
    tables = {
        "L1 table": (h.l1_table_offset, h.l1_size * 8),
        "refcount table": (h.refcount_table_offset, h.refcount_table_clusters * cluster),
    }
    if h.nb_snapshots:
        tables["snapshot table"] = (h.snapshots_offset, 1)
    for name, (offset, length) in tables.items():
        if length and (offset % cluster or offset < cluster):
            return (
                f"qcow2 {name} offset {offset} is not a cluster after the header - "
                "the header is damaged"
            )
    spans = sorted((o, o + n, name) for name, (o, n) in tables.items() if n)
    for (_, end, first), (start, _, second) in pairwise(spans):
        if start < end:
            return f"qcow2 {first} and {second} overlap - the header is damaged"
    return None


def _truncated(name: str, end: int, file_size: int) -> str:
    return (
        f"qcow2 is truncated: its {name} reaches byte {end} but the file has "
        f"{file_size} bytes - upload the whole file again"
    )


def check_header_cluster_in_file(h: Qcow2Header, file_size: int | None) -> str | None:
    end = table_ends(h)["header cluster"]
    if file_size is not None and end > file_size:
        return _truncated("header cluster", end, file_size)
    return None


def check_tables_in_file(h: Qcow2Header, file_size: int | None) -> str | None:
    if file_size is None or not h.cluster_bits_valid:
        return None
    for name, end in table_ends(h).items():
        if end > file_size:
            return _truncated(name, end, file_size)
    return None


CHECKS: tuple[Check, ...] = (
    check_header_cluster_in_file,
    check_header_in_first_cluster,
    check_header_extensions,
    check_backing_format_alone,
    check_encryption,
    check_data_file,
    check_dirty,
    check_corrupt,
    check_extended_l2,
    check_unknown_features,
    check_compression_type,
    check_cluster_bits,
    check_virtual_size,
    check_refcount_order,
    check_table_layout,
    check_tables_in_file,
)


def check_l1_entries(
    h: Qcow2Header, read_at: ReadAt, file_size: int | None
) -> tuple[str | None, int]:
    """Every L2 table the L1 table points to must lie inside the file.

    Returns the problem, if any, and the least file size the entries read
    imply (the evidence a gzip stream's trailer is checked against). Read
    only when the L1 table is small (160 bytes for 10 GiB with 64 KiB
    clusters), so the cost stays bounded whatever the image; entries that
    lie past what ``read_at`` can see are skipped.
    """
    length = h.l1_size * 8
    if not length or length > L1_READ_LIMIT:
        return None, 0
    table = read_at(h.l1_table_offset, length)
    reach = 0
    for index, (entry,) in enumerate(struct.iter_unpack(">Q", table[: len(table) // 8 * 8])):
        offset = entry & L1_OFFSET_MASK
        if entry & L1_RESERVED_MASK or (offset and offset % h.cluster_size):
            return f"qcow2 L1 entry {index} is malformed - the image is damaged", reach
        if not offset:
            continue
        reach = max(reach, offset + h.cluster_size)
        if file_size is not None and reach > file_size:
            return (
                f"qcow2 is truncated: L1 entry {index} points to byte {offset} past the end "
                f"of the file at {file_size} - upload the whole file again"
            ), reach
    return None, reach


@dataclass(frozen=True)
class Qcow2Findings:
    virtual_size: int | None
    problems: list[str]
    details: dict[str, object]


def check_version(version: int) -> str | None:
    if version in (2, 3):
        return None
    return (
        f"qcow2 version {version} is newer than the versions 2 and 3 OUTSCALE imports - "
        "convert it with a QEMU that reads it: qemu-img convert -O qcow2 -o compat=1.1"
    )


def inspect_qcow2(head: bytes, read_at: ReadAt, file_size: int | None) -> Qcow2Findings:
    """All problems of a qcow2 image whose first bytes are ``head``.

    ``file_size`` is None when the image is inside a gzip stream and its
    length is not known; checks that need it are then left to the caller,
    which gets ``min_file_size`` in the details to check the length against.
    """
    version = struct.unpack_from(">I", head, 4)[0]
    if message := check_version(version):
        return Qcow2Findings(None, [message], {"qcow2_version": version})
    try:
        header = parse_header(head, read_at)
    except Qcow2Error as error:
        return Qcow2Findings(None, [str(error)], {})
    details: dict[str, object] = {
        "qcow2_version": header.version,
        "cluster_size": header.cluster_size if header.cluster_bits_valid else None,
        "compression_type": COMPRESSION_TYPES.get(header.compression_type),
    }
    problems: list[str] = []
    if header.backing_file_offset:
        name = backing_file_name(header, read_at)
        problems.append(
            f"qcow2 has a backing file {name} - flatten it with qemu-img convert -O qcow2"
        )
    problems += [message for check in CHECKS if (message := check(header, file_size))]
    reach = 0
    if not problems:
        message, reach = check_l1_entries(header, read_at, file_size)
        if message:
            problems.append(message)
    details["min_file_size"] = max(min_file_size(header), reach)
    return Qcow2Findings(header.size, problems, details)
