"""raw: a disk with no container format; its size and its partition table must make sense.

The partition-table rules are oslo.utils' checks for MBR and GPT disks: a boot
sector signature with entries no firmware accepts is refused, so the importer
never boots something that only looks like a disk.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

SECTOR = 512
MBR_SIGNATURE = b"\x55\xaa"
PARTITION_ENTRIES_AT = 446
GPT_PROTECTIVE = 0xEE
FAT_MEDIA_FIXED_DISK = 0xF8
REPAIR = "the partition table is damaged - repair it with fdisk or gdisk"

Check = Callable[[int | None, bytes], str | None]


def _partition_entries(head: bytes) -> list[tuple[int, int, tuple[int, int, int], int]]:
    """(boot flag, type, start CHS, start LBA) of the four MBR entries."""
    entries = []
    for index in range(4):
        boot, *chs, kind, _h, _s, _t, lba, _count = struct.unpack_from(
            "<B3BB3BII", head, PARTITION_ENTRIES_AT + 16 * index
        )
        entries.append((boot, kind, tuple(chs), lba))
    return entries


def has_partition_table(head: bytes) -> bool:
    """A boot-sector signature that is not a FAT volume's own boot record."""
    if len(head) < SECTOR or head[510:512] != MBR_SIGNATURE:
        return False
    is_fat = head[0x10] == 2 and head[0x15] == FAT_MEDIA_FIXED_DISK
    return not is_fat


def check_size(size: int | None, head: bytes) -> str | None:
    if size is None:
        return None
    if size == 0:
        return "raw image is empty - upload the disk image again"
    if size < SECTOR:
        return (
            f"raw image of {size} bytes is shorter than one 512-byte sector - "
            "it is not a disk - upload the whole disk image"
        )
    if size % SECTOR:
        return (
            f"raw image size {size} bytes is not a multiple of 512 - "
            "pad it to whole 512-byte sectors with qemu-img resize -f raw"
        )
    return None


def check_boot_flags(size: int | None, head: bytes) -> str | None:
    if not has_partition_table(head):
        return None
    for index, (boot, *_rest) in enumerate(_partition_entries(head)):
        if boot not in (0x00, 0x80):
            return f"raw disk MBR entry {index} has an invalid boot flag {boot:#x} - {REPAIR}"
    return None


def check_protective_mbr(size: int | None, head: bytes) -> str | None:
    if not has_partition_table(head):
        return None
    entries = _partition_entries(head)
    used = [index for index, (_b, kind, _c, _l) in enumerate(entries) if kind]
    for index, (_boot, kind, chs, lba) in enumerate(entries):
        if kind != GPT_PROTECTIVE:
            continue
        if chs != (0, 2, 0) or lba != 1:
            return f"raw disk GPT protective MBR entry {index} is not at sector 1 - {REPAIR}"
        if used != [0]:
            return f"raw disk GPT protective MBR has other partitions beside it - {REPAIR}"
    if not used:
        return f"raw disk has a boot sector signature but no partitions - {REPAIR}"
    return None


CHECKS: tuple[Check, ...] = (check_size, check_boot_flags, check_protective_mbr)


def raw_problems(size: int | None, head: bytes) -> list[str]:
    """What a raw disk of ``size`` bytes (None: not known) starting with ``head`` breaks."""
    return [message for check in CHECKS if (message := check(size, head))]
