"""The ``omi-manifest`` command line."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

from .inspection import FileReader, Inspection, Reader, S3Reader, inspect_snapshot

if TYPE_CHECKING:
    from . import scheduler
    from .config import Settings


class CommandError(Exception):
    """A mistake the user can fix, told in one line; the command exits 1."""


def endpoint_of(args: argparse.Namespace) -> str | None:
    """``--endpoint-url``, else ``OMI_ENDPOINT_URL``; it must be a URL, not a host name."""
    endpoint = getattr(args, "endpoint_url", None) or os.environ.get("OMI_ENDPOINT_URL") or None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise CommandError(
            f"endpoint {endpoint} must start with http:// or https:// (e.g. http://{endpoint})"
        )
    return endpoint


def _reader_for(location: str, args: argparse.Namespace) -> tuple[Reader, str]:
    """A reader for a local path or an ``s3://bucket/key`` location, and the key it names."""
    if location.startswith("s3://"):
        bucket, _, key = location[5:].partition("/")
        if not bucket or not key:
            raise CommandError(f"{location} is not s3://BUCKET/KEY")
        from botocore.exceptions import ClientError

        from . import runtime

        client = runtime.s3_client(bucket_settings(args))
        try:
            return S3Reader(client, bucket, key), key
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise CommandError(f"{location}: no such object") from None
            raise
    if os.path.isdir(location):
        raise CommandError(f"{location} is a directory - give one disk image file")
    return FileReader(location), location


def format_inspection(location: str, found: Inspection) -> str:
    """The human-readable report of ``inspect``."""
    from .local.console import human_size

    virtual = (
        f"{found.virtual_size} bytes ({human_size(found.virtual_size)})"
        if found.virtual_size is not None
        else "unknown"
    )
    lines = [
        f"file:            {location}",
        f"format:          {found.format}",
        f"virtual size:    {virtual}",
        f"compressed size: {found.compressed_size} bytes ({human_size(found.compressed_size)})",
        f"bytes read:      {found.bytes_read} bytes ({human_size(found.bytes_read)}) in "
        f"{found.requests} request{'' if found.requests == 1 else 's'}",
        f"importable:      {'yes' if found.importable else 'no'}",
    ]
    lines += [f"  problem: {problem}" for problem in found.problems]
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .local.console import ProgressBar

    reader, key = _reader_for(args.location, args)
    show_progress = not args.json and sys.stderr.isatty()
    progress = ProgressBar("sizing raw.gz", reader.size) if show_progress else None
    try:
        found = inspect_snapshot(reader, key, size_hint=args.size, progress=progress)
    finally:
        if progress:
            progress.close()
    if args.json:
        print(json.dumps(found.to_dict(), indent=2))
    else:
        print(format_inspection(args.location, found))
    return 0 if found.importable else 1


def bucket_settings(args: argparse.Namespace) -> Settings:
    """The configured settings, with ``--bucket`` and ``--endpoint-url`` applied."""
    from . import config

    settings = config.load()
    if getattr(args, "bucket", None):
        settings = replace(settings, bucket=args.bucket)
    endpoint = endpoint_of(args)
    if endpoint:
        settings = replace(
            settings,
            endpoint_url=endpoint,
            public_endpoint_url=settings.public_endpoint_url or endpoint,
        )
    return settings


def cmd_resign(args: argparse.Namespace) -> int:
    from . import runtime, scheduler

    settings = bucket_settings(args)
    renew_before = settings.renew_before if args.renew_before is None else args.renew_before
    report = scheduler.Pass(
        runtime.build_pipeline(settings), renew_before, check_tags=args.check_tags
    ).run()
    print(json.dumps(report.as_dict()) if args.log_format == "json" else format_report(report))
    return 1 if report.outcomes["failed"] else 0


# What each outcome of a pass means, in the singular and the plural.
OUTCOME_WORDS = {
    "renewed": ("manifest URL re-signed", "manifest URLs re-signed"),
    "refreshed": (
        "manifest republished or withdrawn (a snapshot had changed)",
        "manifests republished or withdrawn (a snapshot had changed)",
    ),
    "published": ("manifest published", "manifests published"),
    "reconciled": (
        "record brought in line with the bucket",
        "records brought in line with the bucket",
    ),
    "evaluated": ("OMI checked, nothing to change", "OMIs checked, nothing to change"),
    "checked": ("object's tags read, unchanged", "objects' tags read, unchanged"),
    "stale": ("leftover re-sign entry dropped", "leftover re-sign entries dropped"),
    "gone": ("manifest no longer published", "manifests no longer published"),
    "postponed": (
        "step left for the next pass (time ran out)",
        "steps left for the next pass (time ran out)",
    ),
    "failed": (
        "step failed (see the lines above; the next pass tries again)",
        "steps failed (see the lines above; the next pass tries again)",
    ),
}


def format_report(report: scheduler.PassReport) -> str:
    """A pass's outcomes in words, one per line (``1 manifest URL re-signed``)."""
    known = [name for name in OUTCOME_WORDS if report.outcomes[name]]
    others = sorted(set(report.outcomes) - set(OUTCOME_WORDS))
    lines = []
    for name in known + others:
        number = report.outcomes[name]
        if not number:
            continue
        one, many = OUTCOME_WORDS.get(name, (name, name))
        lines.append(f"{number} {one if number == 1 else many}")
    return "\n".join(lines) or "nothing to do"


def cmd_status(args: argparse.Namespace) -> int:
    from . import runtime
    from .overview import format_details, format_table, omi_statuses

    settings = bucket_settings(args)
    pipeline = runtime.build_pipeline(settings)
    statuses = omi_statuses(pipeline, args.name)
    if not statuses:
        print(f"no OMI {args.name}" if args.name else f"no snapshots in {settings.bucket} yet")
        return 1 if args.name else 0
    print(format_table(statuses) if args.name is None else format_details(statuses[0]))
    return 1 if any(s.state == "error" for s in statuses) else 0


def cmd_url(args: argparse.Namespace) -> int:
    from . import runtime, signing
    from .pipeline import manifest_key

    settings = bucket_settings(args)
    key = manifest_key(settings.manifest_prefix, args.name)
    pipeline = runtime.build_pipeline(settings)
    current = pipeline.fenced(pipeline.store.read_group(args.name))  # built from today's records
    url = signing.url_from_tags(pipeline.store.tags(key) or {}) if current else None
    if url is None:
        raise CommandError(f"no published manifest for {args.name} ({key})")
    print(url)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Start the import of a published OMI, or read its pending import's state now."""
    from . import importing, runtime

    pipeline = runtime.build_pipeline(bucket_settings(args))
    group = pipeline.store.read_group(args.name)
    decision = pipeline.decide(group) if pipeline.fenced(group) else None
    if decision is None:
        raise CommandError(f"no published manifest for {args.name} - nothing to import")
    if not decision.imports:
        raise CommandError(
            f"import is off for {args.name} - set OMI_IMPORT=true, or tag omi:import=true "
            "on one of its snapshots"
        )
    if pipeline.follow_imports(args.name) == 0:
        pipeline.evaluate(args.name)
    tags = pipeline.store.tags(pipeline.manifest_key(args.name)) or {}
    state = tags.get(importing.IMAGE_STATE_TAG, "not started")
    print(f"{args.name}: {tags.get(importing.IMAGE_ID_TAG, 'no image')} {state}")
    return 1 if state in (importing.FAILED, importing.ERROR, "not started") else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from . import manifest

    if os.path.isdir(args.file):
        raise CommandError(f"{args.file} is a directory - give a manifest file")
    try:
        with open(args.file, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise CommandError(f"{args.file} is not UTF-8 text - a manifest is a JSON file") from None
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

    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    options = RunOptions(
        endpoint_url=endpoint_of(args),
        bucket=args.bucket,
        port=args.port,
        poll=args.poll,
        once=args.once,
        schedule=args.schedule,
        check_tags=args.check_tags,
        workers=args.workers,
    )
    return LocalRun(options, say=_human_lines(args)).run()


def _human_lines(args: argparse.Namespace) -> Callable[[str], None]:
    """Where lines for a person go: stdout on a console; stderr beside JSON logs, so that
    stdout stays pure JSON."""
    if args.log_format == "json":
        return lambda line: print(line, file=sys.stderr, flush=True)
    return print


def cmd_demo(args: argparse.Namespace) -> int:
    from .local.demo import run_demo

    if args.log_format == "json":
        return run_demo(say=_human_lines(args), pipeline_logs=True)
    return run_demo()


def cmd_put(args: argparse.Namespace) -> int:
    from . import runtime
    from .local import put
    from .pipeline import manifest_key

    for path in args.files:
        if os.path.isdir(path):
            raise CommandError(f"{path} is a directory - give disk image files")
        os.stat(path)  # a missing file fails here, before anything is uploaded
    settings = bucket_settings(args)
    options = {name: getattr(args, name.replace("-", "_")) for name in put.OPTIONS}
    bucket, uploads = put.plan_uploads(args.files, args.destination, options, settings)
    settings = replace(settings, bucket=bucket)
    pipeline = runtime.build_pipeline(settings)
    put.upload_all(pipeline.store.client, bucket, uploads, print)
    if not args.wait:
        return 0
    name = put.omi_name(uploads[0])
    url, statuses = put.wait_for_manifest(
        pipeline.store.tags, uploads, manifest_key(settings.manifest_prefix, name), args.timeout
    )
    if url is None:
        for key, status in statuses.items():
            print(f"{key}: {status or 'no status yet'}")
        return 1
    print(url)
    return 0


def port_number(text: str) -> int:
    """A TCP port, or 0 for any free one; anything else is a usage error."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port - give 1 to 65535, or 0 for any")
    return int(text)


def _bucket_options(command: argparse.ArgumentParser, bucket: bool = True) -> None:
    command.add_argument(
        "--endpoint-url", help="S3-compatible endpoint (default: OMI_ENDPOINT_URL, else AWS)"
    )
    if bucket:
        command.add_argument(
            "--bucket", help="the snapshot bucket (default: OMI_BUCKET, else omi-snapshots)"
        )


def _log_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="console: one readable line per change (default); json: the Lambda log records",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("omi-manifest")
    except PackageNotFoundError:
        return "unknown (not installed)"


class Parser(argparse.ArgumentParser):
    """argparse, with the nearest choice suggested for a mistyped one (``stauts``)."""

    def error(self, message: str) -> NoReturn:
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:  # choices quoted or not, as Python versions differ
            choices = [choice.strip("'") for choice in found.group(2).split(", ")]
            close = difflib.get_close_matches(found.group(1), choices, n=1, cutoff=0.6)
            if close:
                message += f" - did you mean {close[0]}?"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="omi-manifest",
        description="Turn disk snapshots in a bucket into a signed OUTSCALE OMI import manifest.",
    )
    parser.add_argument("--version", action="version", version=f"omi-manifest {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    put = commands.add_parser(
        "put",
        help="upload one OMI's snapshots with their omi: tags set at creation",
        description="Upload one OMI's snapshot files with their omi: tags set by the upload "
        "itself (multipart for large files), so the pipeline never sees them untagged. "
        "Devices come from the file names when every name is a device (sda1.qcow2, "
        "sdb.qcow2), else from the order given: /dev/sda1, /dev/sdb, /dev/sdc...",
    )
    put.add_argument("files", nargs="+", metavar="FILE", help="snapshot files, first disk first")
    put.add_argument("destination", metavar="s3://BUCKET/PREFIX/", help="where the files go")
    put.add_argument("--omi", metavar="NAME", help="the OMI name (default: the PREFIX folder)")
    put.add_argument("--description", help="omi:description")
    put.add_argument("--volume-type", choices=("standard", "gp2", "io1"), help="omi:volume-type")
    put.add_argument("--iops", help="omi:iops (io1 only)")
    put.add_argument("--architecture", choices=("x86_64", "i386"), help="omi:architecture")
    put.add_argument("--product-type", help="omi:product-type, e.g. 0001 (several: '0001 0002')")
    put.add_argument(
        "--delete-on-termination", choices=("true", "false"), help="omi:delete-on-termination"
    )
    put.add_argument("--account", help="omi:account (the manifest's User)")
    put.add_argument("--wait", action="store_true", help="wait for the manifest and print its URL")
    put.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="of --wait (600)"
    )
    _bucket_options(put, bucket=False)
    put.set_defaults(handler=cmd_put)

    inspect = commands.add_parser(
        "inspect",
        help="what the pipeline would record for one file (local path or s3://B/K)",
        description="Read one snapshot file as the pipeline does - format, virtual and "
        "compressed sizes, whether OUTSCALE can import it and why not - without uploading "
        "or changing anything. Exit status 1 when it is not importable.",
    )
    inspect.add_argument("location", help="a local file or s3://BUCKET/KEY")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.add_argument(
        "--size", type=int, help="virtual size hint for raw.gz, as the omi:size tag gives"
    )
    _bucket_options(inspect, bucket=False)
    inspect.set_defaults(handler=cmd_inspect)

    resign = commands.add_parser(
        "resign",
        help="one re-sign and reconcile pass now",
        description="What the hourly scheduled function does, once, now: re-sign manifest "
        "URLs that expire soon, and bring every OMI's manifest and status tags in line with "
        "the snapshots in the bucket.",
    )
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
    _log_options(resign)
    resign.set_defaults(handler=cmd_resign)

    run = commands.add_parser(
        "run",
        help="the pipeline on this machine (default: an embedded S3 server)",
        description="Run the pipeline here until Ctrl-C or SIGTERM: by default on an embedded "
        "S3-compatible server (in memory) with a bucket whose events reach the same handlers "
        "Lambda runs; with --endpoint-url and --bucket on an existing store, through its bucket "
        "notifications or, with --poll, by listing.",
    )
    _bucket_options(run)
    run.add_argument(
        "--port", type=port_number, default=5050, help="embedded server port (default 5050; 0: any)"
    )
    run.add_argument(
        "--poll",
        type=float,
        metavar="SECONDS",
        help="find changes by listing, for stores that send no events",
    )
    run.add_argument(
        "--once",
        action="store_true",
        help="one full pass, then exit (1 if anything failed or any OMI is in error)",
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
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="handle N events at a time, as Lambda runs concurrent invocations (default 1)",
    )
    _log_options(run)
    run.set_defaults(handler=cmd_run)

    demo = commands.add_parser(
        "demo",
        help="end to end in one go on the embedded server",
        description="Drop sample snapshots into an embedded server, let the pipeline publish, "
        "then fetch each manifest and snapshot through its signed URL and check them. "
        "Needs no credentials, no qemu-img and no network.",
    )
    _log_options(demo)
    demo.set_defaults(handler=cmd_demo)

    status = commands.add_parser(
        "status",
        help="each OMI: snapshots, state, URL expiry",
        description="One line per OMI: snapshots present of expected, its state (published, "
        "waiting, pending or error), when its manifest URL expires and its first error. With "
        "NAME, also every file of that OMI with every problem recorded for it.",
    )
    _bucket_options(status)
    status.add_argument("name", nargs="?", help="one OMI only, with every problem of each file")
    status.set_defaults(handler=cmd_status)

    url = commands.add_parser(
        "url",
        help="print an OMI's manifest URL, rebuilt from its tags",
        description="Print the pre-signed URL of an OMI's published manifest, rebuilt from the "
        "tags of manifests/NAME.json; exit status 1 when none is published.",
    )
    _bucket_options(url)
    url.add_argument("name", help="the OMI name (its folder, or its omi:name tag)")
    url.set_defaults(handler=cmd_url)

    imports = commands.add_parser(
        "import",
        help="start the import of a published OMI into OUTSCALE, or re-check it now",
        description="Start the import of a published OMI into OUTSCALE (CreateImage from its "
        "manifest's URL), or read the state of its pending import now; the import must be on "
        "(OMI_IMPORT=true, or omi:import=true on one of its snapshots).",
    )
    _bucket_options(imports)
    imports.add_argument("name", help="the OMI's name")
    imports.set_defaults(handler=cmd_import)

    validate = commands.add_parser(
        "validate",
        help="check a hand-written manifest (fields and rules: docs/manifest.md)",
        description="Check a hand-written OMI import manifest: valid JSON (a missing comma is "
        "shown where), and every field as docs/manifest.md in the repository describes it.",
    )
    validate.add_argument("file", help="the manifest, a JSON file")
    validate.set_defaults(handler=cmd_validate)
    return parser


def explain(error: Exception) -> str | None:
    """The one line a user reads for an error that is theirs to fix, or None."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    from .local.put import PutError
    from .local.server import PortInUse
    from .signing import SigningSetupError

    if isinstance(error, S3UploadFailedError) and isinstance(error.__context__, Exception):
        return explain(error.__context__)  # a transfer's wrapping of the store's answer
    if isinstance(error, CommandError | PortInUse | PutError | SigningSetupError):
        return str(error)
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return (
            "no AWS credentials - set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) for the store"
        )
    if isinstance(error, NoRegionError):
        return "no region - set AWS_DEFAULT_REGION or OMI_REGION"
    if isinstance(error, ConnectionError):  # refused, timed out, unknown host
        where = urlsplit(getattr(error, "kwargs", {}).get("endpoint_url", ""))
        store = f"{where.scheme}://{where.netloc}" if where.netloc else "the store"
        if where.netloc.endswith(".amazonaws.com"):
            return (
                f"cannot reach {store} (AWS S3: no endpoint was given) - for another store, "
                "give --endpoint-url URL or set OMI_ENDPOINT_URL"
            )
        return (
            f"cannot reach {store} - is it running, and is the endpoint right "
            "(--endpoint-url or OMI_ENDPOINT_URL)?"
        )
    if isinstance(error, ClientError):
        found = error.response.get("Error", {})
        code = found.get("Code", "")
        if code == "NoSuchBucket":
            bucket = found.get("BucketName") or "named"
            return f"bucket {bucket} does not exist - check the bucket name and the endpoint"
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return (
                f"the store refused {error.operation_name} ({code}) - "
                "check the credentials and what they may do on the bucket"
            )
        message = found.get("Message") or "no message"
        return f"the store refused {error.operation_name}: {code} {message}".strip()
    if isinstance(error, OSError) and error.strerror:
        return f"cannot read {error.filename}: {error.strerror}" if error.filename else str(error)
    # An error raised while handling another (a transfer wrapping the store's answer, a
    # region lookup that had no credentials): the one underneath is what the user fixes.
    if isinstance(error.__context__, Exception):
        return explain(error.__context__)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Every mistake ends here as one line on stderr and exit status 1; usage errors
    exit 2 (argparse); a bug shows its traceback only with OMI_DEBUG=1."""
    args = build_parser().parse_args(argv)
    from . import observability

    if getattr(args, "log_format", "console") == "console":
        observability.use_console()
    else:
        observability.quiet_metrics()
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if os.environ.get("OMI_DEBUG"):
            raise
        message = explain(error)
        if message is None:
            message = (
                f"unexpected {type(error).__name__}: {error} - "
                "run again with OMI_DEBUG=1 for the details"
            )
        print(f"omi-manifest: {message.splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
