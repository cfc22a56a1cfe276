"""The ``omi-manifest`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from .inspection import FileReader, Inspection, Reader, S3Reader, inspect_snapshot

if TYPE_CHECKING:
    from .config import Settings


def _reader_for(location: str, endpoint_url: str | None) -> tuple[Reader, str]:
    """A reader for a local path or an ``s3://bucket/key`` location, and the key it names."""
    if location.startswith("s3://"):
        bucket, _, key = location[5:].partition("/")
        if not bucket or not key:
            raise SystemExit(f"omi-manifest: {location} is not s3://BUCKET/KEY")
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint_url)
        return S3Reader(client, bucket, key), key
    try:
        return FileReader(location), location
    except OSError as error:
        raise SystemExit(f"omi-manifest: cannot read {location}: {error.strerror}") from None


def _human_size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_inspection(location: str, found: Inspection) -> str:
    """The human-readable report of ``inspect``."""
    virtual = (
        f"{found.virtual_size} bytes ({_human_size(found.virtual_size)})"
        if found.virtual_size is not None
        else "unknown"
    )
    lines = [
        f"file:            {location}",
        f"format:          {found.format}",
        f"virtual size:    {virtual}",
        f"compressed size: {found.compressed_size} bytes ({_human_size(found.compressed_size)})",
        f"bytes read:      {found.bytes_read} in {found.requests} reads",
        f"importable:      {'yes' if found.importable else 'no'}",
    ]
    lines += [f"  problem: {problem}" for problem in found.problems]
    return "\n".join(lines)


def _progress_bar(total: int) -> object:
    """A one-line progress bar on stderr for long raw.gz streams."""
    width = 30

    def show(done: int) -> None:
        share = done / max(total, 1)
        filled = int(width * share)
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\rsizing raw.gz [{bar}] {share:4.0%}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def cmd_inspect(args: argparse.Namespace) -> int:
    reader, key = _reader_for(args.location, args.endpoint_url)
    show_progress = not args.json and sys.stderr.isatty()
    progress = _progress_bar(reader.size) if show_progress else None
    found = inspect_snapshot(reader, key, size_hint=args.size, progress=progress)
    if args.json:
        print(json.dumps(found.to_dict(), indent=2))
    else:
        print(format_inspection(args.location, found))
    return 0 if found.importable else 1


def bucket_settings(args: argparse.Namespace) -> Settings:
    """The configured settings, with ``--bucket`` and ``--endpoint-url`` applied."""
    from . import config

    settings = config.load()
    if args.bucket:
        settings = replace(settings, bucket=args.bucket)
    if args.endpoint_url:
        settings = replace(
            settings,
            endpoint_url=args.endpoint_url,
            public_endpoint_url=settings.public_endpoint_url or args.endpoint_url,
        )
    return settings


def cmd_resign(args: argparse.Namespace) -> int:
    from . import runtime, scheduler

    settings = bucket_settings(args)
    renew_before = settings.renew_before if args.renew_before is None else args.renew_before
    report = scheduler.Pass(
        runtime.build_pipeline(settings), renew_before, check_tags=args.check_tags
    ).run()
    for outcome, number in sorted(report.outcomes.items()):
        print(f"{outcome}: {number}")
    if not report.outcomes:
        print("nothing to do")
    return 1 if report.outcomes["failed"] else 0


def cmd_status(args: argparse.Namespace) -> int:
    from . import runtime
    from .overview import format_table, omi_statuses

    settings = bucket_settings(args)
    pipeline = runtime.build_pipeline(settings)
    statuses = omi_statuses(pipeline.store, settings.defaults, args.name)
    if not statuses:
        print(f"no OMI {args.name}" if args.name else f"no snapshots in {settings.bucket} yet")
        return 1 if args.name else 0
    print(format_table(statuses))
    return 1 if any(s.state == "error" for s in statuses) else 0


def cmd_url(args: argparse.Namespace) -> int:
    from . import runtime, signing
    from .pipeline import manifest_key

    settings = bucket_settings(args)
    key = manifest_key(settings.manifest_prefix, args.name)
    tags = runtime.build_pipeline(settings).store.tags(key)
    url = signing.url_from_tags(tags or {})
    if url is None:
        print(f"omi-manifest: no published manifest for {args.name} ({key})", file=sys.stderr)
        return 1
    print(url)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from . import manifest

    try:
        with open(args.file, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        print(f"omi-manifest: cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        print(f"{args.file}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}")
        if "delimiter" in error.msg:
            print(_json_hint(text, error))
        return 1
    problems = manifest.validate(document)
    for problem in problems:
        print(f"{args.file}: {problem}")
    if not problems:
        print(f"{args.file}: a valid OMI import manifest")
    return 1 if problems else 0


def _json_hint(text: str, error: json.JSONDecodeError) -> str:
    """Show the line where JSON broke; a missing comma is by far the usual cause."""
    lines = text.splitlines()
    before = lines[error.lineno - 2].rstrip() if error.lineno >= 2 else ""
    here = lines[error.lineno - 1] if error.lineno - 1 < len(lines) else ""
    return (
        f"  {error.lineno - 1}: {before}\n  {error.lineno}: {here}\n"
        f"  {' ' * (len(str(error.lineno)) + 1 + error.colno)}^ a comma is probably missing "
        "at the end of the line above"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from .local.runner import LocalRun, RunOptions

    options = RunOptions(
        endpoint_url=args.endpoint_url,
        bucket=args.bucket,
        port=args.port,
        poll=args.poll,
        once=args.once,
        schedule=args.schedule,
        check_tags=args.check_tags,
    )
    return LocalRun(options).run()


def cmd_demo(args: argparse.Namespace) -> int:
    from .local.demo import run_demo

    return run_demo()


def _bucket_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--endpoint-url", help="S3-compatible endpoint (default: AWS, or OMI_ENDPOINT_URL)"
    )
    command.add_argument("--bucket", help="the snapshot bucket (default: OMI_BUCKET)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omi-manifest",
        description="Turn disk snapshots in a bucket into a signed OUTSCALE OMI import manifest.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser(
        "inspect", help="what the pipeline would record for one file (local path or s3://B/K)"
    )
    inspect.add_argument("location", help="a local file or s3://BUCKET/KEY")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.add_argument(
        "--size", type=int, help="virtual size hint for raw.gz, as the omi:size tag gives"
    )
    inspect.add_argument("--endpoint-url", help="S3-compatible endpoint for s3:// locations")
    inspect.set_defaults(handler=cmd_inspect)

    resign = commands.add_parser("resign", help="one re-sign and reconcile pass now")
    _bucket_options(resign)
    resign.add_argument(
        "--renew-before",
        type=int,
        metavar="SECONDS",
        help="re-sign manifests whose URLs expire within this many seconds (default 172800)",
    )
    resign.add_argument(
        "--check-tags",
        action="store_true",
        help="also re-read every object's tags, to repair tagging events that were lost",
    )
    resign.set_defaults(handler=cmd_resign)

    run = commands.add_parser(
        "run", help="the pipeline on this machine (default: an embedded S3 server)"
    )
    _bucket_options(run)
    run.add_argument("--port", type=int, default=5050, help="embedded server port (0: any)")
    run.add_argument(
        "--poll",
        type=float,
        metavar="SECONDS",
        help="find changes by listing, for stores that send no events",
    )
    run.add_argument(
        "--once", action="store_true", help="one full pass, then exit (1 if any OMI is in error)"
    )
    run.add_argument(
        "--schedule",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how often the re-sign and reconcile pass runs (default 3600)",
    )
    run.add_argument(
        "--check-tags", action="store_true", help="passes also re-read every object's tags"
    )
    run.set_defaults(handler=cmd_run)

    demo = commands.add_parser("demo", help="end to end in one go on the embedded server")
    demo.set_defaults(handler=cmd_demo)

    status = commands.add_parser("status", help="each OMI: snapshots, state, URL expiry")
    _bucket_options(status)
    status.add_argument("name", nargs="?", help="one OMI only")
    status.set_defaults(handler=cmd_status)

    url = commands.add_parser("url", help="print an OMI's manifest URL, rebuilt from its tags")
    _bucket_options(url)
    url.add_argument("name")
    url.set_defaults(handler=cmd_url)

    validate = commands.add_parser(
        "validate", help="check a hand-written manifest (spec section 2)"
    )
    validate.add_argument("file")
    validate.set_defaults(handler=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
