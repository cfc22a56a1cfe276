"""Every option of every command, through the real argument parser, reaches the code that
uses it: one row per option, and a check that no option of the parser lacks a row."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from chalicelib import cli, observability, runtime, scheduler
from chalicelib.local import demo, put, runner
from chalicelib.local.samples import qcow2_image
from chalicelib.scheduler import PassReport
from chalicelib.signing import PARAMS_BEFORE_TOKEN, SIGNATURE

ENDPOINT = "http://127.0.0.1:9"  # never reached: the store's side is replaced below
URL_TAGS = {"omi:url": f"{ENDPOINT}/b/manifests/web.json"} | {
    tag: "x" for tag in (*PARAMS_BEFORE_TOKEN, SIGNATURE)
}


class Reached(dict):
    """What reached the code behind the parser, by name."""


class FakeStore:
    def __init__(self, reached: Reached) -> None:
        self.reached = reached
        self.client = object()
        self.manifest_prefix = "manifests/"

    def tags(self, key: str) -> dict[str, str]:
        self.reached["tags of"] = key
        return URL_TAGS

    def read_group(self, name: str) -> str:
        self.reached["group read"] = name
        return name


@dataclass
class FakePipeline:
    store: FakeStore
    settings: Any

    def fenced(self, group: str) -> bool:
        return True  # the manifest is current: url reads its tags

    def decide(self, group: str) -> None:
        return None  # import: nothing published to import (the command says so)


@pytest.fixture
def reached(monkeypatch, tmp_path) -> Reached:
    """The commands' collaborators replaced by recorders; the commands themselves run."""
    found = Reached()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(observability, "use_console", lambda: found.update(logs="console"))
    monkeypatch.setattr(observability, "quiet_metrics", lambda: found.update(logs="json"))

    def build_pipeline(settings, client=None):
        found["settings"] = settings
        return FakePipeline(FakeStore(found), settings)

    monkeypatch.setattr(runtime, "build_pipeline", build_pipeline)
    monkeypatch.setattr(runtime, "s3_client", lambda settings: found.update(settings=settings))
    monkeypatch.setattr(
        put, "upload_all", lambda client, bucket, uploads, say: found.update(uploads=uploads)
    )

    def wait(tags_of, uploads, manifest_key, timeout):
        found["timeout"] = timeout
        return URL_TAGS["omi:url"], {}

    monkeypatch.setattr(put, "wait_for_manifest", wait)

    class RecordedPass:
        def __init__(self, pipeline, renew_before, check_tags=False):
            found["pass"] = {"renew_before": renew_before, "check_tags": check_tags}

        def run(self) -> PassReport:
            return PassReport(Counter(renewed=1, evaluated=2))

    monkeypatch.setattr(scheduler, "Pass", RecordedPass)

    class RecordedRun:
        def __init__(self, options, say=print):
            found["run"] = options

        def run(self) -> int:
            return 0

    monkeypatch.setattr(runner, "LocalRun", RecordedRun)

    def run_demo(say=print, pipeline_logs=False):
        found["demo"] = {"pipeline_logs": pipeline_logs, "say": say}
        return 0

    monkeypatch.setattr(demo, "run_demo", run_demo)

    def statuses(pipeline, name=None):
        found["status of"] = name
        return []

    monkeypatch.setattr("chalicelib.overview.omi_statuses", statuses)
    real_inspect = cli.inspect_snapshot

    def inspect_snapshot(reader, key, size_hint=None, progress=None):
        found["inspected"] = {"key": key, "size_hint": size_hint}
        return real_inspect(reader, key, size_hint=size_hint, progress=progress)

    monkeypatch.setattr(cli, "inspect_snapshot", inspect_snapshot)
    monkeypatch.setattr(cli, "S3Reader", lambda client, bucket, key: found["file reader"])
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(qcow2_image(1 << 30))
    (tmp_path / "data.raw").write_bytes(b"\0" * 4096)
    found["file reader"] = cli.FileReader(str(disk))
    return found


PUT = ["put", "disk.qcow2", "data.raw", "s3://b/web/"]


def first_tags(found: Reached) -> dict[str, str]:
    return found["uploads"][0].tags


def every_tag(name: str) -> Callable[[Reached], set[str | None]]:
    return lambda found: {upload.tags.get(name) for upload in found["uploads"]}


@dataclass(frozen=True)
class Row:
    command: str
    option: str  # an option string, or a positional argument's dest
    argv: list[str]
    effect: Callable[[Reached], Any]
    expected: Any


ROWS = [
    Row(
        "put",
        "files",
        PUT,
        lambda f: [u.key for u in f["uploads"]],
        ["web/disk.qcow2", "web/data.raw"],
    ),
    Row(
        "put",
        "destination",
        ["put", "disk.qcow2", "s3://other/db-server/"],
        lambda f: f["settings"].bucket,
        "other",
    ),
    Row("put", "--omi", [*PUT, "--omi", "db server"], every_tag("omi:name"), {"db server"}),
    Row(
        "put",
        "--description",
        [*PUT, "--description", "two disks"],
        lambda f: first_tags(f)["omi:description"],
        "two disks",
    ),
    Row(
        "put",
        "--volume-type",
        [*PUT, "--volume-type", "gp2"],
        every_tag("omi:volume-type"),
        {"gp2"},
    ),
    Row(
        "put",
        "--iops",
        [*PUT, "--volume-type", "io1", "--iops", "500"],
        every_tag("omi:iops"),
        {"500"},
    ),
    Row(
        "put",
        "--architecture",
        [*PUT, "--architecture", "i386"],
        lambda f: first_tags(f)["omi:architecture"],
        "i386",
    ),
    Row(
        "put",
        "--product-type",
        [*PUT, "--product-type", "0001 0002"],
        lambda f: first_tags(f)["omi:product-type"],
        "0001 0002",
    ),
    Row(
        "put",
        "--delete-on-termination",
        [*PUT, "--delete-on-termination", "false"],
        every_tag("omi:delete-on-termination"),
        {"false"},
    ),
    Row(
        "put",
        "--account",
        [*PUT, "--account", "123456789012"],
        lambda f: first_tags(f)["omi:account"],
        "123456789012",
    ),
    Row("put", "--wait", [*PUT, "--wait"], lambda f: f["timeout"], 600.0),
    Row("put", "--timeout", [*PUT, "--wait", "--timeout", "5"], lambda f: f["timeout"], 5.0),
    Row(
        "put",
        "--endpoint-url",
        [*PUT, "--endpoint-url", ENDPOINT],
        lambda f: f["settings"].endpoint_url,
        ENDPOINT,
    ),
    Row(
        "inspect",
        "location",
        ["inspect", "disk.qcow2"],
        lambda f: f["inspected"]["key"],
        "disk.qcow2",
    ),
    Row(
        "inspect",
        "--json",
        ["inspect", "--json", "disk.qcow2"],
        lambda f: f["json"]["format"],
        "qcow2",
    ),
    Row(
        "inspect",
        "--size",
        ["inspect", "--size", "4096", "data.raw"],
        lambda f: f["inspected"]["size_hint"],
        4096,
    ),
    Row(
        "inspect",
        "--endpoint-url",
        ["inspect", "s3://b/web/disk.qcow2", "--endpoint-url", ENDPOINT],
        lambda f: f["settings"].endpoint_url,
        ENDPOINT,
    ),
    Row(
        "resign",
        "--endpoint-url",
        ["resign", "--endpoint-url", ENDPOINT],
        lambda f: f["settings"].endpoint_url,
        ENDPOINT,
    ),
    Row(
        "resign",
        "--bucket",
        ["resign", "--bucket", "other"],
        lambda f: f["settings"].bucket,
        "other",
    ),
    Row(
        "resign",
        "--renew-before",
        ["resign", "--renew-before", "60"],
        lambda f: f["pass"]["renew_before"],
        60,
    ),
    Row(
        "resign",
        "--check-tags",
        ["resign", "--check-tags"],
        lambda f: f["pass"]["check_tags"],
        True,
    ),
    Row("resign", "--log-format", ["resign", "--log-format", "json"], lambda f: f["logs"], "json"),
    Row(
        "run",
        "--endpoint-url",
        ["run", "--endpoint-url", ENDPOINT],
        lambda f: f["run"].endpoint_url,
        ENDPOINT,
    ),
    Row("run", "--bucket", ["run", "--bucket", "other"], lambda f: f["run"].bucket, "other"),
    Row("run", "--port", ["run", "--port", "5051"], lambda f: f["run"].port, 5051),
    Row("run", "--poll", ["run", "--poll", "2.5"], lambda f: f["run"].poll, 2.5),
    Row("run", "--once", ["run", "--once"], lambda f: f["run"].once, True),
    Row("run", "--schedule", ["run", "--schedule", "30"], lambda f: f["run"].schedule, 30.0),
    Row("run", "--check-tags", ["run", "--check-tags"], lambda f: f["run"].check_tags, True),
    Row("run", "--workers", ["run", "--workers", "3"], lambda f: f["run"].workers, 3),
    Row("run", "--log-format", ["run", "--log-format", "json"], lambda f: f["logs"], "json"),
    Row(
        "demo",
        "--log-format",
        ["demo", "--log-format", "json"],
        lambda f: f["demo"]["pipeline_logs"],
        True,
    ),
    Row(
        "status",
        "--endpoint-url",
        ["status", "--endpoint-url", ENDPOINT],
        lambda f: f["settings"].endpoint_url,
        ENDPOINT,
    ),
    Row(
        "status",
        "--bucket",
        ["status", "--bucket", "other"],
        lambda f: f["settings"].bucket,
        "other",
    ),
    Row("status", "name", ["status", "web"], lambda f: f["status of"], "web"),
    Row(
        "url",
        "--endpoint-url",
        ["url", "web", "--endpoint-url", ENDPOINT],
        lambda f: f["settings"].endpoint_url,
        ENDPOINT,
    ),
    Row(
        "url",
        "--bucket",
        ["url", "web", "--bucket", "other"],
        lambda f: f["settings"].bucket,
        "other",
    ),
    Row("url", "name", ["url", "web"], lambda f: f["tags of"], "manifests/web.json"),
    Row("import", "name", ["import", "web"], lambda f: f["group read"], "web"),
    Row(
        "import",
        "--endpoint-url",
        ["import", "web", "--endpoint-url", ENDPOINT],
        lambda f: f["settings"].endpoint_url,
        ENDPOINT,
    ),
    Row(
        "import",
        "--bucket",
        ["import", "web", "--bucket", "other"],
        lambda f: f["settings"].bucket,
        "other",
    ),
    Row(
        "validate",
        "file",
        ["validate", "disk.qcow2"],
        lambda f: "disk.qcow2 is not UTF-8 text" in f["printed"],
        True,
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda row: f"{row.command} {row.option}")
def test_each_option_reaches_the_code_that_uses_it(row, reached, capsys):
    cli.main(row.argv)
    printed = capsys.readouterr()
    reached["printed"] = printed.out + printed.err
    if "--json" in row.argv:
        reached["json"] = json.loads(printed.out)
    assert row.effect(reached) == row.expected, reached["printed"]


def options_of(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Each command's option strings and positional arguments, as the parser has them."""
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {
            action.option_strings[-1] if action.option_strings else action.dest
            for action in command._actions
            if not isinstance(action, argparse._HelpAction)
        }
        for name, command in commands.choices.items()
    }


def test_every_option_of_every_command_has_a_row():
    rows: dict[str, set[str]] = {}
    for row in ROWS:
        rows.setdefault(row.command, set()).add(row.option)
    assert options_of(cli.build_parser()) == rows


def test_version_is_the_installed_one(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"omi-manifest {cli._version()}\n"


@pytest.fixture
def console_logs():
    """``use_console`` as the command line calls it, undone afterwards."""
    handler = observability.logger.registered_handler
    formatter, filters = handler.formatter, list(handler.filters)
    yield observability.use_console
    handler.setFormatter(formatter)
    handler.filters[:] = filters
    observability._Console.active = False
    observability.metrics.metric_set.clear()


def test_no_metrics_json_on_a_console(console_logs, capsys, monkeypatch):
    """Powertools prints a CloudWatch EMF line every 100 values of one metric; a readable
    console must not show it (JSON mode keeps it: the Lambda stream carries it)."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    observability.metrics.metric_set.clear()
    for _ in range(100):
        observability.count("ObjectEvents")
    assert '"_aws"' in capsys.readouterr().out
    console_logs()
    for _ in range(250):
        observability.count("ObjectEvents")
    assert capsys.readouterr().out == ""


def test_help_describes_every_command_and_argument():
    parser = cli.build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        assert command.description, f"{name} has no description"
        for action in command._actions:
            assert action.help, f"{name} {action.dest} has no help"
            if action.dest == "bucket":
                assert "else omi-snapshots" in action.help  # the default it falls back to


@pytest.mark.parametrize(
    ("argv", "last_line"),
    [
        (
            ["stauts"],
            "omi-manifest: error: argument command: invalid choice: 'stauts' (choose from "
            "'put', 'inspect', 'resign', 'run', 'demo', 'status', 'url', 'import', "
            "'validate') - "
            "did you mean status?",
        ),
        (
            ["run", "--port", "80000"],
            "omi-manifest run: error: argument --port: 80000 is not a port - give 1 to 65535, "
            "or 0 for any",
        ),
        (
            ["put", "disk.qcow2", "s3://b/web/", "--volume-type", "gp3"],
            "omi-manifest put: error: argument --volume-type: invalid choice: 'gp3' (choose "
            "from 'standard', 'gp2', 'io1') - did you mean gp2?",
        ),
    ],
)
def test_usage_errors_say_what_was_meant(argv, last_line, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == last_line


def test_resign_reports_in_words_or_in_json(reached, capsys):
    assert cli.main(["resign"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "1 manifest URL re-signed",
        "2 OMIs checked, nothing to change",
    ]
    assert cli.main(["resign", "--log-format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "renewed": 1,
        "evaluated": 2,
        "unfinished": False,
    }
