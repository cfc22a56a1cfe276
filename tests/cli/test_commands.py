"""run --once, run --poll, run (embedded), demo, status, url, validate, inspect's progress bar."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalicelib.local.samples import gzipped, qcow2_image
from tests.cli.conftest import (
    PROJECT,
    omi,
    on_a_terminal,
    running,
    wait_for,
)

GIB = 1 << 30


def tags_of(store, key):
    try:
        found = store.get_object_tagging(Bucket=store.bucket, Key=key)["TagSet"]
    except store.exceptions.ClientError:
        return {}
    return {t["Key"]: t["Value"] for t in found}


def bucket_args(store):
    return ["--endpoint-url", store.url, "--bucket", store.bucket]


def test_run_once_publishes_and_reports_errors(store):
    store.put_object(Bucket=store.bucket, Key="web-server/sda1.qcow2", Body=qcow2_image(GIB))
    done = omi("run", "--once", *bucket_args(store))
    assert done.returncode == 0, done.stdout + done.stderr
    assert tags_of(store, "web-server/sda1.qcow2")["omi:status"] == (
        "published: manifests/web-server.json"
    )
    store.put_object(Bucket=store.bucket, Key="broken/sda1.raw", Body=qcow2_image(GIB))
    done = omi("run", "--once", *bucket_args(store))
    assert done.returncode == 1
    assert "error: broken: file named .raw is a qcow2 image - rename it to .qcow2" in done.stdout


def test_status_url_and_resign_commands(store):
    store.put_object(Bucket=store.bucket, Key="api-server/sda1.qcow2", Body=qcow2_image(GIB))
    assert omi("run", "--once", *bucket_args(store)).returncode == 0
    status = omi("status", *bucket_args(store))
    assert status.returncode == 0
    header, row = status.stdout.splitlines()
    assert header.split() == ["OMI", "SNAPSHOTS", "STATE", "URL", "EXPIRES", "IMAGE", "ERROR"]
    assert row.split()[:3] == ["api-server", "1/1", "published"]
    url = omi("url", "api-server", *bucket_args(store)).stdout.strip()
    assert url.startswith(f"{store.url}/{store.bucket}/manifests/api-server.json?X-Amz-Algorithm=")
    assert omi("url", "nothing-here", *bucket_args(store)).returncode == 1
    resigned = omi("resign", "--renew-before", "700000", *bucket_args(store))
    assert "1 manifest URL re-signed" in resigned.stdout.splitlines()
    done = omi("status", "api-server", *bucket_args(store))
    lines = done.stdout.splitlines()
    assert lines[:3] == ["omi:       api-server", "state:     published", "snapshots: 1 of 1"]
    assert lines[3:] == [
        "manifest:  manifests/api-server.json",
        lines[4],
        "image:     none",
        "files:",
        "  api-server/sda1.qcow2: published",
    ]
    assert re.fullmatch(r"url:       expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines[4]), lines[4]


def test_run_poll_finds_new_files_and_stops_cleanly(store):
    with running("run", "--poll", "0.5", *bucket_args(store)) as run:
        store.put_object(
            Bucket=store.bucket, Key="polled/sda1.qcow2.gz", Body=gzipped(qcow2_image(GIB))
        )
        wait_for(
            lambda: (
                tags_of(store, "polled/sda1.qcow2.gz").get("omi:status", "").startswith("published")
            ),
            what="the polled file to be published",
        )
        store.delete_object(Bucket=store.bucket, Key="polled/sda1.qcow2.gz")
        wait_for(lambda: not tags_of(store, "manifests/polled.json"), what="withdrawal")
        output, errors = run.stop()
    assert run.process.returncode == 0, output + errors
    assert "stopping" in output


def test_demo_checks_out():
    done = omi("demo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo: every check passed" in done.stdout
    assert re.search(
        r"broken\s+1/1\s+error\s+-\s+-\s+file named .raw is a qcow2 image", done.stdout
    )


def test_demo_log_format_json_keeps_stdout_pure_json():
    done = omi("demo", "--log-format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert {"web-server", "database"} <= {r.get("omi") for r in records if "change" in r}
    assert done.stderr.splitlines()[-1] == "demo: every check passed"


OUTSCALE_SAMPLE = """{
  "Version": 1,
  "Image": {
    "Name": "web-server",
    "ProductTypes": ["0001"],
    "Snapshots": [
      {
        "Ordering": 1,
        "VolumeType": "standard",
        "Iops": null,
        "PreSignedUrl": "https://oos.eu-west-2.outscale.com/b/sda1.raw?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00"
        "Filename": "sda1.raw",
        "CompressedSize": 974,
        "DeleteOnTermination": true,
        "Device": "/dev/sda1",
        "Size": 10737418240
      }
    ],
    "Description": "",
    "Type": "machine",
    "Public": false,
    "Architecture": "x86_64"
  }
}
"""


def test_validate_points_at_the_missing_comma(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(OUTSCALE_SAMPLE)
    done = omi("validate", str(path))
    assert done.returncode == 1
    assert f"{path}:12:9: not valid JSON: Expecting ',' delimiter" in done.stdout
    assert done.stdout.splitlines()[-2:] == [
        '  12:         "Filename": "sda1.raw",',
        "              ^ a comma is probably missing at the end of the line above",
    ]
    fixed = OUTSCALE_SAMPLE.replace('Signature=00"\n', 'Signature=00",\n')
    path.write_text(fixed)
    assert omi("validate", str(path)).stdout.strip() == f"{path}: a valid OMI import manifest"
    document = json.loads(fixed)
    document["Image"]["Snapshots"][0]["VolumeType"] = "fast"
    path.write_text(json.dumps(document))
    done = omi("validate", str(path))
    assert done.returncode == 1
    assert "Image.Snapshots[0].VolumeType must be one of standard, gp2, io1" in done.stdout


def test_inspect_progress_bar_only_on_a_terminal(tmp_path):
    path = tmp_path / "big.raw.gz"
    path.write_bytes(gzipped(b"\0" * (64 << 20)))
    status, shown = on_a_terminal("inspect", str(path))
    assert status == 0
    assert re.search(rb"\rsizing raw\.gz \[#{30}\] 100%  [\d.]+ KiB of [\d.]+ KiB .*\n", shown)
    assert b"\nfile:            " in shown  # the report starts on a line of its own
    piped = omi("inspect", str(path))
    assert "sizing" not in piped.stderr and piped.returncode == 0
    assert f"bytes read:      {path.stat().st_size} bytes (" in piped.stdout
    assert piped.stdout.count(" in 1 request\n") + piped.stdout.count(" requests\n") == 1
    as_json = omi("inspect", "--json", str(path))
    found = json.loads(as_json.stdout)
    assert as_json.stderr == "" and found["virtual_size"] == 64 << 20
    assert found["bytes_read"] == path.stat().st_size  # each byte read once


def test_importing_the_app_is_cheap():
    code = (
        "import sys, app; heavy = ['moto', 'werkzeug', 'flask', 'chalicelib.cli', "
        "'chalicelib.local', 'boto3']; print([m for m in heavy if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_command_errors_say_what_is_wrong(store, tmp_path):
    missing = tmp_path / "nothing.qcow2"
    done = omi("inspect", str(missing))
    assert done.returncode == 1
    assert done.stderr.strip() == f"omi-manifest: cannot read {missing}: No such file or directory"
    done = omi("inspect", "s3://only-a-bucket")
    assert done.stderr.strip() == "omi-manifest: s3://only-a-bucket is not s3://BUCKET/KEY"
    done = omi("url", "nothing-here", *bucket_args(store))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "omi-manifest: no published manifest for nothing-here (manifests/nothing-here.json)"
    )
    done = omi("validate", str(missing))
    assert done.returncode == 1
    assert done.stderr.strip() == f"omi-manifest: cannot read {missing}: No such file or directory"
    done = omi("status", "nothing-here", *bucket_args(store))
    assert (done.returncode, done.stdout.strip()) == (1, "no OMI nothing-here")
    done = omi("status", *bucket_args(store))
    assert (done.returncode, done.stdout.strip()) == (0, f"no snapshots in {store.bucket} yet")


def test_status_name_lists_every_problem_and_names_the_unnamed(store):
    store.put_object(
        Bucket=store.bucket,
        Key="multi/sda1.raw",
        Body=qcow2_image(GIB),
        Tagging="omi:devcie=/dev/sda1",
    )
    store.put_object(Bucket=store.bucket, Key="loose.qcow2", Body=qcow2_image(GIB))
    assert omi("run", "--once", *bucket_args(store)).returncode == 1
    table = omi("status", *bucket_args(store)).stdout.splitlines()
    assert table[1].startswith("(no omi:name)  1/1        error")
    assert table[2].split()[:3] == ["multi", "1/1", "error"]
    assert table[2].endswith(" +1 more")
    done = omi("status", "multi", *bucket_args(store))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == "omi:       multi"
    assert lines[1].startswith("state:     error - unknown tag omi:devcie")
    assert lines[2:] == [
        "snapshots: 1 of 1",
        "manifest:  none published",
        "url:       none",
        "image:     none",
        "files:",
        "  multi/sda1.raw: error, 2 problems",
        "    - unknown tag omi:devcie - known tags are omi: followed by name device ordering "
        "volume-type iops delete-on-termination size snapshots architecture product-type "
        "description account import image-name",
        "    - file named .raw is a qcow2 image - rename it to .qcow2",
    ]


def test_run_workers_handles_events_at_once(store, tmp_path):
    with running("run", "--port", "0", "--workers", "3") as run:
        intro = []
        while not intro or intro[-1] != "Changes, one line each:\n":
            intro.append(run.readline())
            assert intro[-1], "run stopped before it was ready"
        assert any("bucket events, 3 workers;" in line for line in intro)
        endpoint = re.search(r"endpoint: (\S+)", "".join(intro)).group(1)
        disks = []
        for number in range(6):
            disk = tmp_path / f"disk{number}.qcow2"
            disk.write_bytes(qcow2_image(GIB))
            disks.append(disk)

        def put(number: int) -> int:
            folder = f"s3://omi-snapshots/omi-{number}/"
            return omi("put", "--endpoint-url", endpoint, str(disks[number]), folder).returncode

        with ThreadPoolExecutor(max_workers=6) as uploaders:  # events that arrive together
            assert list(uploaders.map(put, range(6))) == [0] * 6
        status = ["status", "--endpoint-url", endpoint, "--bucket", "omi-snapshots"]
        wait_for(lambda: omi(*status).stdout.count(" published ") == 6, what="six manifests")
        output, errors = run.stop()
    assert run.process.returncode == 0 and errors == ""
    published = set(re.findall(r" (omi-\d): published", output))
    assert published == {f"omi-{n}" for n in range(6)}


def test_run_stops_on_sigterm_where_sigint_is_ignored():
    """As under nohup or a CI runner: Ctrl-C's signal is ignored, SIGTERM still stops it,
    and nothing of it is left. With JSON logs, stdout is JSON only: the lines for a person
    (the banner, `stopping`) are on stderr."""
    with running("run", "--port", "0", "--log-format", "json", ignore_sigint=True) as run:
        assert run.process.stderr is not None
        while run.process.stderr.readline() not in ("Changes, one line each:\n", ""):
            pass
        output, errors = run.stop()
    assert run.process.returncode == 0
    assert errors == "stopping\n"
    assert [json.loads(line)["service"] for line in output.splitlines()] == ["omi-manifest"] * len(
        output.splitlines()
    )
    with pytest.raises(ProcessLookupError):
        os.killpg(run.process.pid, 0)
