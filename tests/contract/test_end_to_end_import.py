"""From ``put --wait`` to ``imported: ami-…``: ``run``'s embedded server and handler in this
process, importing through the OUTSCALE fake behind ``prism proxy``."""

from __future__ import annotations

import threading

import pytest

from chalicelib import runtime
from chalicelib.local.runner import LocalRun, RunOptions
from tests import images
from tests.cli.conftest import CREDENTIALS, omi, wait_for

GIB = 1 << 30
BUCKET = "import-e2e"


@pytest.fixture
def importing_run(prism_servers, fake_outscale):
    fake_outscale.reset()
    with pytest.MonkeyPatch.context() as env:
        for name in ("OMI_BUCKET", "OMI_ENDPOINT_URL", "OMI_PUBLIC_ENDPOINT_URL"):
            env.delenv(name, raising=False)
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        for name, value in {
            "POWERTOOLS_METRICS_DISABLED": "true",
            "OMI_IMPORT": "true",
            "OSC_ACCESS_KEY": "AKIDEXAMPLE0123456789",
            "OSC_SECRET_KEY": "secret0123456789",
            "OSC_REGION": "eu-west-2",
            "OSC_ENDPOINT_API": prism_servers["proxy"],
        }.items():
            env.setenv(name, value)
        # A bucket of its own: moto's buckets are the process's, and other tests of this
        # worker process may have run an embedded server with the default one.
        local = LocalRun(RunOptions(port=0, follow=0.5, bucket=BUCKET), say=lambda _: None)
        settings = local.start()
        serving = threading.Thread(target=local.serve, args=(settings,))
        serving.start()
        yield settings
        local.stopping.set()
        serving.join(timeout=60)
        runtime.pipeline.cache_clear()


def test_put_wait_then_imported(importing_run, fake_outscale, tmp_path):
    settings = importing_run
    disk = images.create(tmp_path / "root.qcow2", "qcow2", GIB)
    done = omi(
        "put", "--endpoint-url", settings.endpoint_url, "--wait", str(disk),
        f"s3://{BUCKET}/web-server/",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "/manifests/web-server.json?" in done.stdout.splitlines()[-1]
    (image_id,) = fake_outscale.images
    assert fake_outscale.images[image_id]["ImageName"] == "web-server"
    tags = runtime.pipeline().store.tags
    assert tags("web-server/root.qcow2")["omi:status"] == f"importing: {image_id}"
    fake_outscale.settle(image_id, "available")
    wait_for(
        lambda: tags("web-server/root.qcow2")["omi:status"] == f"imported: {image_id} - available",
        what="the import followed to available",
    )
    assert tags("manifests/web-server.json")["omi:image-state"] == "available"
    status = omi(
        "status", "web-server", "--endpoint-url", settings.endpoint_url, "--bucket", BUCKET
    )
    assert f"image:     {image_id} available" in status.stdout.splitlines()
    assert fake_outscale.count("CreateImage") == 1
