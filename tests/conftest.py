import io
import os
import signal

import boto3
import pytest
from moto import mock_aws

from chalicelib.observability import logger
from tests import images

# Never reach a real AWS account from tests.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-2")
os.environ.pop("AWS_PROFILE", None)

MIB = 1 << 20


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def pytest_sessionstart(session):
    """A run stopped with SIGTERM (a CI time limit, ``kill``) ends as Ctrl-C ends it: every
    fixture is torn down, so the servers and commands the tests started stop too."""
    signal.signal(signal.SIGTERM, _interrupted)


@pytest.fixture(scope="session")
def samples(tmp_path_factory):
    """Small real images shared by pipeline tests, made once by qemu-img."""
    folder = tmp_path_factory.mktemp("samples")
    raw = images.raw_with_data(folder / "data.raw", 4 * MIB)
    qcow2_from_raw = images.convert(raw, folder / "data.qcow2", "qcow2")
    return {
        "qcow2": images.create(folder / "empty.qcow2", "qcow2", 1 << 30),
        "qcow2-2g": images.create(folder / "big.qcow2", "qcow2", 2 << 30),
        "raw": raw,
        "raw.gz": images.gzip_file(raw),
        "qcow2.gz": images.gzip_file(qcow2_from_raw),
        "vmdk": images.create(folder / "disk.vmdk", "vmdk", 16 * MIB),
    }


RANGED_BUCKET = "snapshots"


@pytest.fixture
def ranged_s3():
    """A moto bucket (``RANGED_BUCKET``) whose client records the Range of every GetObject."""
    with mock_aws():
        client = boto3.client("s3", region_name="eu-west-2")
        client.create_bucket(
            Bucket=RANGED_BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"}
        )
        ranges: list[str] = []
        client.meta.events.register(
            "provide-client-params.s3.GetObject",
            lambda params, **_: ranges.append(params.get("Range", "whole object")),
        )
        client.ranges = ranges
        yield client


@pytest.fixture(autouse=True)
def logger_as_imported():
    """Each test starts with the logger as Lambda has it (JSON, no filter): ``cli.main``,
    which some tests call in-process, turns the shared handler into a console one for the
    rest of the process (``observability.use_console``) and would leak into later tests."""
    from chalicelib import observability

    handler = logger.registered_handler
    formatter, filters, stream = handler.formatter, list(handler.filters), handler.stream
    metrics_disabled = os.environ.get("POWERTOOLS_METRICS_DISABLED")
    console = observability._Console.active  # no metric is collected for a person
    yield
    observability._Console.active = console
    handler.setFormatter(formatter)
    handler.filters[:] = filters
    handler.setStream(stream)
    if metrics_disabled is None:
        os.environ.pop("POWERTOOLS_METRICS_DISABLED", None)
    else:
        os.environ["POWERTOOLS_METRICS_DISABLED"] = metrics_disabled


@pytest.fixture
def captured_logs():
    """Everything the JSON logger writes during a test."""
    buffer = io.StringIO()
    handler = logger.registered_handler
    previous = handler.setStream(buffer)
    yield buffer
    handler.setStream(previous)


@pytest.fixture(scope="module")
def embedded_server():
    """The embedded server itself (its request counts, its event queues), for one module."""
    from chalicelib.local.server import EmbeddedServer

    embedded = EmbeddedServer()
    embedded.start()
    yield embedded
    embedded.stop()
