"""``omi-manifest demo``: end to end on the embedded server, in seconds, no qemu-img needed."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import urlencode
from urllib.request import urlopen

from .. import manifest, runtime, signing
from ..observability import logger
from ..overview import format_table, omi_statuses
from ..pipeline import manifest_key
from .delivery import chalice_handler
from .runner import PROJECT_DIR, LocalRun, RunOptions, embedded_pump
from .samples import gzipped, qcow2_image, raw_image

GIB = 1 << 30
DATABASE = {"omi:name": "database", "omi:snapshots": "2"}
# key, content, tags, expected virtual size (None: expected to be refused)
DROPS = [
    ("web-server/sda1.qcow2", qcow2_image(10 * GIB), {}, 10 * GIB),
    (
        "uploads/root.raw.gz",
        gzipped(raw_image(8 << 20)),
        {**DATABASE, "omi:device": "/dev/sda1"},
        8 << 20,
    ),
    ("uploads/data.qcow2", qcow2_image(20 * GIB), {**DATABASE, "omi:device": "/dev/sdb"}, 20 * GIB),
    ("broken/sda1.raw", qcow2_image(GIB), {}, None),  # a qcow2 named .raw
]
EXPECTED_STATES = {"web-server": "published", "database": "published", "broken": "error"}


def _fetch(url: str) -> bytes:
    with urlopen(url, timeout=30) as response:
        return response.read()


def run_demo(say: Callable[[str], None] = print, pipeline_logs: bool = False) -> int:
    """The story on ``say``; with ``pipeline_logs``, also the pipeline's own log records
    (JSON, as Lambda writes them)."""
    if not pipeline_logs:
        logger.setLevel("WARNING")  # the demo tells its own story
    local = LocalRun(RunOptions(port=0), say=lambda _: None)
    settings = local.start()
    try:
        store = runtime.pipeline().store
        pump = embedded_pump(local.server, settings)
        handler = chalice_handler(PROJECT_DIR)
        say(f"embedded S3 at {settings.endpoint_url}, bucket {settings.bucket}")
        for key, body, tags, _ in DROPS:
            shown = " ".join(f"{k}={v}" for k, v in tags.items())
            say(f"  dropping {key} ({len(body)} bytes) {shown}")
            store.client.put_object(
                Bucket=settings.bucket, Key=key, Body=body, Tagging=urlencode(tags)
            )
        delivered = pump.pump(handler)
        say(f"pipeline handled {delivered} bucket events\n")
        statuses = omi_statuses(runtime.pipeline())
        say(format_table(statuses) + "\n")
        failures = [
            f"{s.name} is {s.state}, expected {EXPECTED_STATES.get(s.name)}"
            for s in statuses
            if EXPECTED_STATES.get(s.name) != s.state
        ]
        for name in ("web-server", "database"):
            failures += _check_manifest(store, settings, name, say)
    finally:
        local.stop()
    for failure in failures:
        say(f"FAILED: {failure}")
    say("demo: every check passed" if not failures else "demo: some checks failed")
    return 1 if failures else 0


def _check_manifest(store, settings, name: str, say: Callable[[str], None]) -> list[str]:
    """Download the manifest and its snapshots through their URLs and compare."""
    key = manifest_key(settings.manifest_prefix, name)
    url = signing.url_from_tags(store.tags(key) or {})
    if url is None:
        return [f"{name}: no manifest URL in the tags of {key}"]
    say(f"{name}: manifest URL (rebuilt from the tags of {key}):\n  {url}")
    document = json.loads(_fetch(url))
    problems = [f"{name}: {problem}" for problem in manifest.validate(document)]
    expected = {key: (body, size) for key, body, _, size in DROPS}
    for snap in document["Image"]["Snapshots"]:
        body, size = expected[snap["Filename"]]
        if _fetch(snap["PreSignedUrl"]) != body:
            problems.append(f"{snap['Filename']}: bytes fetched through its URL differ")
        if (snap["Size"], snap["CompressedSize"]) != (size, len(body)):
            problems.append(f"{snap['Filename']}: sizes {snap['Size']} {snap['CompressedSize']}")
    if not problems:
        count = len(document["Image"]["Snapshots"])
        say(f"  checked: valid manifest; {count} snapshot(s) downloaded through their URLs\n")
    return problems
