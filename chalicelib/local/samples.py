"""Small, valid disk images made without qemu-img, for the demo.

The qcow2 layout is the one ``qemu-img create -f qcow2`` writes: the header in
cluster 0, the refcount table in cluster 1, one refcount block in cluster 2
and the L1 table in cluster 3; every data cluster unallocated (reads as zeros).
"""

from __future__ import annotations

import gzip
import os
import struct

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
REFCOUNT_ORDER = 4  # 16-bit refcounts
QCOW2_V3_HEADER = 104


def qcow2_image(virtual_size: int) -> bytes:
    """An empty qcow2 v3 image of ``virtual_size`` bytes (a multiple of 512)."""
    entries_per_l2 = CLUSTER // 8
    l1_size = -(-virtual_size // (CLUSTER * entries_per_l2))
    l1_clusters = max(1, -(-(l1_size * 8) // CLUSTER))
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQII",
        b"QFI\xfb",
        3,  # version
        0,  # backing file offset
        0,  # backing file size
        CLUSTER_BITS,
        virtual_size,
        0,  # no encryption
        l1_size,
        3 * CLUSTER,  # L1 table offset
        1 * CLUSTER,  # refcount table offset
        1,  # refcount table clusters
        0,  # snapshots
        0,  # snapshots offset
        0,  # incompatible features
        0,  # compatible features
        0,  # autoclear features
        REFCOUNT_ORDER,
        QCOW2_V3_HEADER,
    )
    end_of_extensions = struct.pack(">II", 0, 0)
    used_clusters = 3 + l1_clusters
    refcount_table = struct.pack(">Q", 2 * CLUSTER)
    refcount_block = struct.pack(f">{used_clusters}H", *([1] * used_clusters))
    image = bytearray(used_clusters * CLUSTER)
    image[: len(header) + 8] = header + end_of_extensions
    image[CLUSTER : CLUSTER + 8] = refcount_table
    image[2 * CLUSTER : 2 * CLUSTER + len(refcount_block)] = refcount_block
    return bytes(image)


def raw_image(size: int) -> bytes:
    """A raw disk: a little random data, then zeros."""
    return os.urandom(min(size, 64 * 1024)).ljust(size, b"\0")


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)
