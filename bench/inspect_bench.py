"""Inspection cost: bytes read per format, and raw.gz sizing speed against plain zlib.

Each raw.gz sizing runs in its own process so its peak RSS is its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from isal import igzip

from chalicelib.inspection import FileReader, inspect_snapshot

GIB = 1 << 30
OUTPUT_SLICE = 4 << 20
SIZING_IMAGES_GIB = (1, 2, 4)


def sparse_disk(path: Path, size: int) -> Path:
    """A sparse disk with a little real data, like a freshly installed system."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset in range(0, size, size // 8):
            handle.seek(offset)
            handle.write(os.urandom(256 * 1024))
    return path


def gzip_fast(path: Path) -> Path:
    target = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, igzip.open(target, "wb", compresslevel=0) as dst:
        while chunk := src.read(16 << 20):
            dst.write(chunk)
    return target


def gzip_tool(path: Path) -> Path:
    """Compress as users do, with the gzip command (``gzip -1``)."""
    subprocess.run(["gzip", "-1", str(path)], check=True)
    return path.with_name(path.name + ".gz")


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def iso_image(path: Path, size: int) -> Path:
    """A sparse ISO 9660 image: a primary volume descriptor at 32 KiB."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        handle.seek(32 * 1024)
        handle.write(b"\x01CD001\x01")
    return path


def bytes_read_table(workdir: Path) -> None:
    qcow2 = workdir / "sda1.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(qcow2), "10G")
    huge = workdir / "sdb.qcow2"  # its L1 table is 32 KiB, the most inspection reads
    qemu_img("create", "-q", "-f", "qcow2", str(huge), "2T")
    raw = sparse_disk(workdir / "sda1.raw", 10 * GIB)
    cases = [
        ("qcow2, 10 GiB virtual", qcow2, None),
        ("qcow2, 2 TiB virtual", huge, None),
        ("raw, 10 GiB", raw, None),
        ("ISO 9660 named .raw, 10 GiB", iso_image(workdir / "cd.raw", 10 * GIB), None),
        ("qcow2.gz, 10 GiB virtual", gzip_fast(qcow2), None),
        ("qcow2.gz, 2 TiB virtual", gzip_fast(huge), None),
        ("raw.gz, 10 GiB, omi:size hint", gzip_fast(raw), 10 * GIB),
        ("raw.gz, 10 GiB, no hint", workdir / "sda1.raw.gz", None),
    ]
    print("\n== bytes read per inspection (goal: <= 64 KiB except raw.gz without hint)")
    print(
        f"{'file':30} {'file size':>14} {'bytes read':>11} {'reads':>6} {'virtual size':>14} "
        "verdict"
    )
    for label, path, hint in cases:
        found = inspect_snapshot(FileReader(path), path.name, size_hint=hint)
        assert found.importable == ("ISO" not in label), found.problems
        verdict = "importable" if found.importable else f"refused: {found.format}"
        print(
            f"{label:30} {path.stat().st_size:>14} {found.bytes_read:>11} "
            f"{found.requests:>6} {found.virtual_size or '-':>14} {verdict}"
        )
    raw.unlink()


def zlib_baseline(path: str) -> int:
    """The baseline: CPython's zlib in the same bounded streaming loop."""
    inflater = zlib.decompressobj(wbits=31)
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            while chunk:
                size += len(inflater.decompress(chunk, OUTPUT_SLICE))
                chunk = inflater.unconsumed_tail
        while out := inflater.decompress(b"", OUTPUT_SLICE):
            size += len(out)
    return size


def sizing_child(impl: str, path: str) -> None:
    """Run one sizing in this process and print its figures as JSON."""
    start = time.perf_counter()
    if impl == "omi-manifest":
        found = inspect_snapshot(FileReader(path), path)
        assert found.importable, found.problems
        size = found.virtual_size
    else:
        size = zlib_baseline(path)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"size": size, "seconds": seconds, "peak": peak}))


def measure(impl: str, path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.inspect_bench", "--child", impl, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout)


def sizing_table(workdir: Path) -> None:
    print("\n== raw.gz sizing (gzip -1 files): omi-manifest (isal) beside CPython zlib, same run")
    print(
        f"{'image':>8} {'gz size':>10} {'isal GB/s':>10} {'zlib GB/s':>10} {'speed-up':>9} "
        f"{'isal peak MiB':>14} {'zlib peak MiB':>14}"
    )
    for gib in SIZING_IMAGES_GIB:
        packed = gzip_tool(sparse_disk(workdir / f"disk{gib}.raw", gib * GIB))
        ours, base = measure("omi-manifest", packed), measure("zlib", packed)
        assert ours["size"] == base["size"] == gib * GIB
        ours_rate = ours["size"] / ours["seconds"] / 1e9
        base_rate = base["size"] / base["seconds"] / 1e9
        print(
            f"{gib:>5} GiB {packed.stat().st_size:>10} {ours_rate:>10.2f} {base_rate:>10.2f} "
            f"{ours_rate / base_rate:>8.1f}x {ours['peak'] / 2**20:>14.1f} "
            f"{base['peak'] / 2**20:>14.1f}"
        )
        packed.unlink()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="omi-bench-") as tmp:
        bytes_read_table(Path(tmp))
        sizing_table(Path(tmp))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sizing_child(sys.argv[2], sys.argv[3])
    else:
        main()
