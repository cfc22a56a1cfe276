"""The packaged configuration, read by the Terraform on this machine.

No provider can be downloaded here, so ``terraform init`` is pointed at an empty
filesystem mirror (no network at all): it must get past its version checks and fail
only where it would fetch the AWS provider.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import PROJECT

PROVIDER_CONSTRAINT = ">= 5.0.0, < 7.0.0"


@pytest.fixture(scope="module")
def terraform_env(tmp_path_factory) -> dict[str, str]:
    """Terraform offline: no update check, providers only from an empty local mirror."""
    assert shutil.which("terraform"), "terraform is not on PATH: this test runs it"
    folder = tmp_path_factory.mktemp("terraform-cli")
    mirror = folder / "mirror"
    mirror.mkdir()
    config = folder / "terraformrc"
    config.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{mirror}"\n    include = ["*/*/*"]\n  }}\n'
        "}\n"
    )
    return {
        "PATH": shutil.which("terraform").rsplit("/", 1)[0] + ":/usr/bin:/bin",
        "HOME": str(folder),
        "CHECKPOINT_DISABLE": "1",
        "TF_CLI_CONFIG_FILE": str(config),
        "TF_IN_AUTOMATION": "1",
    }


def terraform(directory: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["terraform", f"-chdir={directory}", *args, "-no-color"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("stage", ["prod", "oos"])
def test_init_passes_the_version_checks_and_stops_only_at_the_download(
    packaged, terraform_env, stage
):
    done = terraform(packaged(stage), terraform_env, "init", "-backend=false", "-input=false")
    said = " ".join((done.stdout + done.stderr).split())
    assert "Unsupported Terraform Core version" not in said
    # It went on to install providers: the only failure is that none can be fetched here.
    assert f'Finding hashicorp/aws versions matching "{PROVIDER_CONSTRAINT}"' in said
    assert "hashicorp/aws was not found in any of the search locations" in said
    assert done.returncode == 1


def test_only_the_aws_provider_is_required(packaged, terraform_env):
    done = terraform(packaged("prod"), terraform_env, "providers")
    assert done.returncode == 0, done.stderr
    required = re.findall(r"provider\[([^\]]+)\] (.*)", done.stdout)
    assert required == [("registry.terraform.io/hashicorp/aws", PROVIDER_CONSTRAINT)]


def test_formatted_as_terraform_fmt_writes_it(packaged, terraform_env):
    for directory in (PROJECT / "deploy", packaged("prod")):
        done = terraform(directory, terraform_env, "fmt", "-check", "-diff")
        assert (done.returncode, done.stdout) == (0, ""), done.stdout


def test_chalice_constraints_and_unused_deprecated_data_sources_are_gone(packaged):
    document = json.loads((packaged("prod") / "chalice.tf.json").read_text())
    assert "terraform" not in document  # Chalice's "< 1.4.0" and "< 5": versions.tf rules
    text = json.dumps(document)
    assert "null_data_source" not in text and "aws_region" not in text
    declared = {(kind, name) for kind, found in document["data"].items() for name in found}
    used = set(re.findall(r"\$\{data\.(\w+)\.([\w-]+)\.", text))
    assert used == declared == {("aws_caller_identity", "chalice"), ("aws_partition", "chalice")}
