"""A person's first hour: `run`'s printed lines work as printed, its output is readable,
`put --wait` gives a URL with no interim manifest, and every mistake is one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock
from urllib.parse import parse_qs, urlsplit
from urllib.request import urlopen

import pytest

from chalicelib import manifest, runtime
from chalicelib.local.runner import LocalRun, RunOptions
from chalicelib.local.samples import qcow2_image
from tests import images
from tests.cli.conftest import (
    AWS_CLI_URL_QUERY,
    BIN,
    CREDENTIALS,
    PROJECT,
    command_env,
    free_port,
    omi,
    on_a_terminal,
    running,
    wait_for,
)

GIB = 1 << 30
MIB = 1 << 20
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"


def fetch(url: str) -> bytes:
    with urlopen(url, timeout=30) as response:
        return response.read()


def in_a_new_terminal(line: str, cwd, home) -> subprocess.CompletedProcess:
    """A line as printed, in a shell that has only PATH and HOME."""
    return subprocess.run(
        line,
        shell=True,
        cwd=cwd,
        env={"PATH": CLEAN_PATH, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_lines_run_prints_work_as_printed_and_its_output_is_readable(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "disk.qcow2").write_bytes(qcow2_image(GIB))
    with running("run", "--port", "0", cwd=tmp_path) as run:
        intro = []
        while not intro or intro[-1] != "Changes, one line each:\n":
            intro.append(run.readline())
            assert intro[-1], "run stopped before it was ready: " + "".join(intro)
        commands = [line.strip() for line in intro if "AWS_ACCESS_KEY_ID=" in line]
        put_line, aws_line, status_line = commands
        assert [line.count("AWS_DEFAULT_REGION=eu-west-2 ") for line in commands] == [1, 1, 1]
        assert " put " in put_line and " s3 cp " in aws_line and " status " in status_line

        done = in_a_new_terminal(put_line, tmp_path, home)
        assert done.returncode == 0, done.stderr
        url = done.stdout.splitlines()[-1]
        assert json.loads(fetch(url))["Image"]["Name"] == "web-server"

        done = in_a_new_terminal(aws_line, tmp_path, home)
        assert done.returncode == 0, done.stderr
        shown = wait_for(
            lambda: (
                (out := in_a_new_terminal(status_line, tmp_path, home).stdout)
                and "app-server  1/1        published" in out
                and out
            ),
            what="the AWS CLI's file to be published, as the status line shows",
        )
        assert "web-server  1/1        published" in shown

        # The README's recipe: the URL rebuilt with the AWS CLI alone.
        endpoint = aws_line.split("--endpoint-url ")[1].split()[0]
        aws = aws_line.split(" --endpoint-url")[0].split()[-1]
        rebuilt = subprocess.run(
            [
                aws,
                "--endpoint-url",
                endpoint,
                "s3api",
                "get-object-tagging",
                "--bucket",
                "omi-snapshots",
                "--key",
                "manifests/app-server.json",
                "--query",
                AWS_CLI_URL_QUERY,
                "--output",
                "text",
            ],
            capture_output=True,
            text=True,
            check=True,
            env=command_env(),
        ).stdout.strip()
        assert json.loads(fetch(rebuilt))["Image"]["Name"] == "app-server"
        url = omi("url", "app-server", "--endpoint-url", endpoint, "--bucket", "omi-snapshots")
        assert parse_qs(urlsplit(rebuilt).query) == parse_qs(urlsplit(url.stdout.strip()).query)
        output, errors = run.stop()
    assert run.process.returncode == 0
    changes = output.splitlines()
    published = [line for line in changes if " published manifests/" in line]
    assert [line.split(" ", 1)[1].split(" (expires")[0] for line in published] == [
        "web-server: published manifests/web-server.json",
        "app-server: published manifests/app-server.json",
    ]
    assert all(len(line) < 200 for line in changes)
    assert "{" not in output and "Warning" not in errors and "Traceback" not in errors
    assert errors == ""


def test_log_format_json_keeps_the_lambda_records(store):
    store.put_object(Bucket=store.bucket, Key="api/sda1.qcow2", Body=qcow2_image(GIB))
    bucket = ["--endpoint-url", store.url, "--bucket", store.bucket]
    done = omi("run", "--once", "--log-format", "json", *bucket)
    records = [json.loads(line) for line in done.stdout.splitlines()]  # nothing else
    assert any(r.get("change", "").startswith("api: published") for r in records)
    assert {"level", "message", "service", "timestamp"} <= set(records[0])
    store.put_object(Bucket=store.bucket, Key="api2/sda1.raw", Body=qcow2_image(GIB))
    done = omi("run", "--once", *bucket)
    assert done.returncode == 1
    assert "{" not in done.stdout and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].endswith(
        " api2/sda1.raw: error: file named .raw is a qcow2 image - rename it to .qcow2"
    )


@pytest.fixture(scope="module")
def local_run():
    """`omi-manifest run`'s embedded default in this process, so its server can be asked
    what was written; its environment changes are undone afterwards, including the
    ``OMI_ENDPOINT_URL`` and ``OMI_BUCKET`` that ``LocalRun.start`` writes (left set, they
    would give every later ``omi-manifest run`` a store it never asked for)."""
    with mock.patch.dict(os.environ):
        for name in ("OMI_BUCKET", "OMI_ENDPOINT_URL", "OMI_PUBLIC_ENDPOINT_URL"):
            os.environ.pop(name, None)
        os.environ.update(CREDENTIALS, POWERTOOLS_METRICS_DISABLED="true")
        local = LocalRun(RunOptions(port=0), say=lambda _: None)
        settings = local.start()
        serving = threading.Thread(target=local.serve, args=(settings,))
        serving.start()
        yield local, settings
        local.stopping.set()
        serving.join(timeout=60)
        runtime.pipeline.cache_clear()


def test_put_wait_publishes_two_disks_with_no_interim_manifest(local_run, tmp_path):
    local, settings = local_run
    first = images.create(tmp_path / "root.qcow2", "qcow2", GIB)
    second = images.raw_with_data(tmp_path / "data.raw", 16 * MIB)  # multipart: > 8 MiB
    done = omi(
        "put",
        "--endpoint-url",
        settings.endpoint_url,
        "--wait",
        "--description",
        "two disks",
        str(first),
        str(second),
        "s3://omi-snapshots/db-server/",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[:2] == [
        "uploaded s3://omi-snapshots/db-server/root.qcow2 omi:device=/dev/sda1 "
        "omi:snapshots=2 omi:description=two disks",
        "uploaded s3://omi-snapshots/db-server/data.raw omi:device=/dev/sdb omi:snapshots=2",
    ]
    document = json.loads(fetch(done.stdout.splitlines()[-1]))
    assert manifest.validate(document) == []
    snapshots = document["Image"]["Snapshots"]
    assert [(s["Filename"], s["Device"]) for s in snapshots] == [
        ("db-server/root.qcow2", "/dev/sda1"),
        ("db-server/data.raw", "/dev/sdb"),
    ]
    assert document["Image"]["Description"] == "two disks"
    assert fetch(snapshots[1]["PreSignedUrl"]) == second.read_bytes()
    written = local.server.requests
    assert written.written("Post", "/omi-snapshots/db-server/data.raw") >= 1  # multipart
    assert written.written("PutObject", "/omi-snapshots/manifests/db-server") == 1


def test_put_shows_progress_only_on_a_terminal(local_run, tmp_path):
    _, settings = local_run
    disk = images.raw_with_data(tmp_path / "sda1.raw", 16 * MIB)
    at = ["--endpoint-url", settings.endpoint_url]
    status, shown = on_a_terminal("put", *at, str(disk), "s3://omi-snapshots/progress/")
    assert status == 0
    # The final state (bytes, rate, time taken), then `uploaded` on a line of its own.
    assert re.search(
        rb"\rprogress/sda1\.raw \[#{30}\] 100%  16\.0 MiB of 16\.0 MiB  [\d.]+ [KMG]?i?B/s  "
        rb"in \d+:\d\d\x1b\[K\r\nuploaded s3://omi-snapshots/progress/sda1\.raw\r\n",
        shown,
    ), shown[-300:]
    done = omi("put", *at, str(disk), "s3://omi-snapshots/progress-piped/")
    assert (done.returncode, done.stderr) == (0, "")


def test_put_wait_reports_the_error_statuses(local_run, tmp_path):
    _, settings = local_run
    misnamed = tmp_path / "sda1.raw"
    misnamed.write_bytes(qcow2_image(GIB))
    done = omi("put", "--endpoint-url", settings.endpoint_url, "--wait", str(misnamed))
    assert done.returncode == 2  # no destination: a usage error
    done = omi(
        "put",
        "--endpoint-url",
        settings.endpoint_url,
        "--wait",
        str(misnamed),
        "s3://omi-snapshots/misnamed/",
    )
    assert (done.returncode, done.stderr) == (1, "")
    assert done.stdout.splitlines()[-1] == (
        "misnamed/sda1.raw: error: file named .raw is a qcow2 image - rename it to .qcow2"
    )


class NoNotifications(BaseHTTPRequestHandler):
    """A store that answers every request as S3 answers what it does not implement."""

    def _refuse(self) -> None:
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code>'
            b"<Message>A header you provided implies functionality that is not implemented"
            b"</Message></Error>"
        )
        self.send_response(501)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _refuse

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def store_without_notifications():
    server = ThreadingHTTPServer(("127.0.0.1", 0), NoNotifications)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def no_dns(folder):
    """A folder whose ``sitecustomize`` makes every name but localhost fail to resolve, as on
    a machine without a network: put on PYTHONPATH, a command run there reaches no one."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import socket\n"
        "resolve = socket.getaddrinfo\n"
        "def local_only(host, *args, **kwargs):\n"
        "    if host not in ('127.0.0.1', 'localhost', '::1'):\n"
        "        raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')\n"
        "    return resolve(host, *args, **kwargs)\n"
        "socket.getaddrinfo = local_only\n"
    )
    return folder


def mistakes(store, tmp_path, quiet_store, moto_port):
    binary = tmp_path / "disk.qcow2"
    binary.write_bytes(qcow2_image(GIB))
    missing = tmp_path / "nothing.qcow2"
    unreachable = f"http://127.0.0.1:{free_port()}"
    at = ["--endpoint-url", store.url]
    nothing = tmp_path / "empty-aws-config"
    nothing.write_text("")
    offline = {"PYTHONPATH": str(no_dns(tmp_path / "offline"))}
    no_credentials = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_DEFAULT_REGION": "",
        "AWS_CONFIG_FILE": str(nothing),
        "AWS_SHARED_CREDENTIALS_FILE": str(nothing),
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance metadata service asked either
    }
    return [
        (
            ["status", *at, "--bucket", "no-such-bucket"],
            {},
            "bucket no-such-bucket does not exist - check the bucket name and the endpoint",
        ),
        (
            ["url", "web", "--bucket", "no-such-bucket"],
            {"OMI_ENDPOINT_URL": store.url},
            "bucket no-such-bucket does not exist - check the bucket name and the endpoint",
        ),
        (
            ["status", "--endpoint-url", unreachable, "--bucket", "b"],
            {},
            f"cannot reach {unreachable} - is it running, and is the endpoint right "
            "(--endpoint-url or OMI_ENDPOINT_URL)?",
        ),
        (
            # No endpoint: AWS, whose name does not resolve here (no traffic leaves).
            ["put", str(binary), "s3://omi-snapshots/web-server/"],
            offline,
            "cannot reach https://omi-snapshots.s3.eu-west-2.amazonaws.com (AWS S3: no endpoint "
            "was given) - for another store, give --endpoint-url URL or set OMI_ENDPOINT_URL",
        ),
        (
            # No credentials and no region: the region lookup fails for want of credentials.
            ["status", *at, "--bucket", store.bucket],
            no_credentials,
            "no AWS credentials - set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) for the store",
        ),
        (
            ["status", "--endpoint-url", "127.0.0.1:9000", "--bucket", "b"],
            {},
            "endpoint 127.0.0.1:9000 must start with http:// or https:// "
            "(e.g. http://127.0.0.1:9000)",
        ),
        (
            ["inspect", f"s3://{store.bucket}/nothing.qcow2"],
            {"OMI_ENDPOINT_URL": store.url},
            f"s3://{store.bucket}/nothing.qcow2: no such object",
        ),
        (["inspect", str(tmp_path)], {}, f"{tmp_path} is a directory - give one disk image file"),
        (
            ["validate", str(binary)],
            {},
            f"{binary} is not UTF-8 text - a manifest is a JSON file",
        ),
        (
            ["validate", str(missing)],
            {},
            f"cannot read {missing}: No such file or directory",
        ),
        (
            ["inspect", str(missing)],
            {},
            f"cannot read {missing}: No such file or directory",
        ),
        (
            ["put", str(missing), f"s3://{store.bucket}/upload/", *at],
            {},
            f"cannot read {missing}: No such file or directory",
        ),
        (
            ["put", str(binary), f"s3://{store.bucket}/x", *at],
            {},
            f"s3://{store.bucket}/x must end with / - put keeps the file names, "
            "in the folder given",
        ),
        (
            ["put", str(binary), f"s3://{store.bucket}/", *at],
            {},
            f"s3://{store.bucket}/ is the bucket root - give the OMI's folder "
            f"(s3://{store.bucket}/NAME/) or --omi NAME",
        ),
        (
            ["put", str(binary), "s3://no-such-bucket/upload/", *at],
            {},
            "bucket no-such-bucket does not exist - check the bucket name and the endpoint",
        ),
        (
            ["run", "--bucket", "b"],
            {"OMI_ENDPOINT_URL": quiet_store},
            f"{quiet_store} cannot send bucket notifications to a queue "
            "(CreateQueue: HTTP 501) - run with --poll SECONDS to find changes by listing",
        ),
        (
            ["run", "--port", str(moto_port)],
            {},
            f"port {moto_port} is in use - choose another with --port (0 picks a free one)",
        ),
        (["run", "--workers", "0"], {}, "--workers must be at least 1"),
    ]


def test_every_mistake_is_one_line_and_exit_status_1(store, tmp_path, store_without_notifications):
    moto_port = int(store.url.rsplit(":", 1)[1])
    cases = mistakes(store, tmp_path, store_without_notifications, moto_port)

    def attempt(case) -> subprocess.CompletedProcess:
        args, env, _ = case
        return subprocess.run(
            [str(BIN / "omi-manifest"), *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=command_env(**env),
        )

    # Independent commands, several at a time: most of their time is waiting (start-up,
    # retries against an endpoint that is not there).
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, cases))
    for (args, _, message), done in zip(cases, results, strict=True):
        assert (done.returncode, done.stderr) == (1, f"omi-manifest: {message}\n"), args


def test_usage_errors_exit_2_without_a_traceback():
    for args in (["status", "--no-such-option"], [], ["put", "only-one-argument"]):
        done = omi(*args)
        assert done.returncode == 2
        assert done.stderr.splitlines()[-1].startswith("omi-manifest")
        assert "Traceback" not in done.stderr


def test_version():
    done = omi("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("omi-manifest ")


def test_docs_stand_alone_in_a_clone():
    """Every relative link of the README and docs/ resolves inside the repository; the
    help cites the repository's own reference."""
    pages = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text and "spec section" not in text.lower(), page
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" not in target:
                assert (page.parent / target).resolve().is_relative_to(PROJECT), target
                assert (page.parent / target).exists(), f"{page.name} links to {target}"
    assert "docs/manifest.md" in omi("validate", "--help").stdout
