"""``make package STAGE=…``: Chalice's Terraform output, made fit for current Terraform.

Chalice 1.34 writes ``chalice.tf.json`` for Terraform < 1.4.0 and AWS provider < 5, and
names the schedule's EventBridge rule the same in every stage. This runs
``chalice package --pkg-format terraform`` and then:

- drops Chalice's ``terraform`` block: the constraints come from ``versions.tf`` beside
  this file (Terraform >= 1.0, AWS provider 5 or 6), copied into the output;
- drops the data sources nothing refers to: ``null_data_source`` (deprecated, and the
  only use of the ``null`` provider) and ``aws_region`` (whose ``name`` provider 6
  deprecates);
- names each EventBridge rule ``APP-STAGE-RULE``, as ``chalice deploy`` does, so that
  two stages in one account do not share (and overwrite) one rule.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
VERSIONS = Path(__file__).with_name("versions.tf")
TERRAFORM_JSON = "chalice.tf.json"
DATA_REFERENCE = re.compile(r"\$\{data\.([A-Za-z0-9_]+)\.([A-Za-z0-9_-]+)\.")


def unreferenced_data(document: dict[str, Any]) -> list[tuple[str, str]]:
    """The data sources (type, name) that no expression in the document refers to."""
    rest = json.dumps({key: value for key, value in document.items() if key != "data"})
    used = set(DATA_REFERENCE.findall(rest))
    return [
        (kind, name)
        for kind, sources in document.get("data", {}).items()
        for name in sources
        if (kind, name) not in used
    ]


def fit_for_current_terraform(document: dict[str, Any], app: str, stage: str) -> dict[str, Any]:
    """``document`` (Chalice's ``chalice.tf.json``) as current Terraform accepts it."""
    fitted = json.loads(json.dumps(document))
    fitted.pop("terraform", None)
    for kind, name in unreferenced_data(fitted):
        del fitted["data"][kind][name]
        if not fitted["data"][kind]:
            del fitted["data"][kind]
    if not fitted.get("data"):
        fitted.pop("data", None)
    for rule in fitted["resource"].get("aws_cloudwatch_event_rule", {}).values():
        rule["name"] = f"{app}-{stage}-{rule['name']}"
    return fitted


def package(stage: str, out: Path) -> Path:
    """Run ``chalice package`` for ``stage`` into ``out`` and fit its output; the file."""
    config = json.loads((PROJECT / ".chalice" / "config.json").read_text())
    stages = ", ".join(config["stages"])
    if stage not in config["stages"]:
        raise SystemExit(f"package: no stage {stage} in .chalice/config.json ({stages})")
    # The stage's variables are the only source of its settings (Chalice sets them before
    # it imports app.py): none of the shell's OMI_* may leak into what is deployed.
    env = {name: value for name, value in os.environ.items() if not name.startswith("OMI_")}
    chalice = Path(sys.executable).parent / "chalice"
    done = subprocess.run(
        [str(chalice), "package", "--pkg-format", "terraform", "--stage", stage, str(out)],
        cwd=PROJECT,
        env=env,
        check=False,
    )
    if done.returncode:  # Chalice has said why on stderr
        raise SystemExit(done.returncode)
    generated = out / TERRAFORM_JSON
    fitted = fit_for_current_terraform(json.loads(generated.read_text()), config["app_name"], stage)
    generated.write_text(json.dumps(fitted, indent=2) + "\n")
    shutil.copyfile(VERSIONS, out / VERSIONS.name)
    return generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True, help="a stage of .chalice/config.json")
    parser.add_argument("out", type=Path, help="the directory to write (Terraform's root)")
    args = parser.parse_args()
    written = package(args.stage, args.out)
    print(f"{written} and {args.out / VERSIONS.name}: cd {args.out} && terraform init")


if __name__ == "__main__":
    main()
