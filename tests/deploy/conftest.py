"""Packages made once per session with ``make package``, as a user makes them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

PROJECT = Path(__file__).parents[2]


def make_env(**extra: str) -> dict[str, str]:
    """This environment without the outer make's flags (``make test`` runs us) and without
    ``OMI_`` settings (an ``OMI_ENDPOINT_URL`` would turn ``run`` from the embedded server
    to a store), as a fresh shell has it."""
    outer = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if k not in outer and not k.startswith("OMI_")}
    return env | extra


@pytest.fixture(scope="session")
def packaged(tmp_path_factory) -> Callable[[str], Path]:
    """``make package STAGE=stage OUT=…``: the directory it wrote, made once per stage.

    An ``OMI_BUCKET`` in the shell must not reach the package: the stage's settings are
    the only source of what is deployed."""
    made: dict[str, Path] = {}

    def package(stage: str) -> Path:
        if stage not in made:
            out = tmp_path_factory.mktemp(f"package-{stage}") / "out"
            subprocess.run(
                ["make", "--no-print-directory", "package", f"STAGE={stage}", f"OUT={out}"],
                cwd=PROJECT,
                env=make_env(AWS_DEFAULT_REGION="eu-west-2", OMI_BUCKET="not-the-stage-bucket"),
                check=True,
                capture_output=True,
                timeout=600,
            )
            made[stage] = out
        return made[stage]

    return package
