"""docs/omi-manifest.service: settings and keys from its owner-only EnvironmentFile,
nothing of one deployment written into the unit, and a unit systemd accepts."""

from __future__ import annotations

import re
import shutil
import subprocess

from .conftest import PROJECT

UNIT = PROJECT / "docs" / "omi-manifest.service"


def service() -> dict[str, list[str]]:
    """The [Service] settings, each with every value it is given (continuations joined)."""
    text = UNIT.read_text().replace("\\\n", " ")
    settings: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            name, value = line.split("=", 1)
            settings.setdefault(name, []).append(value)
    return settings


def test_exec_start_names_no_region_bucket_or_endpoint():
    (command,) = service()["ExecStart"]
    assert command.split()[1:] == ["run", "--poll", "300"]
    assert not re.search(r"eu-west|outscale\.com|omi-snapshots|--bucket|--endpoint", command)


def test_the_program_is_told_which_file_holds_the_keys():
    settings = service()
    (keys_file,) = settings["EnvironmentFile"]
    assert f"OMI_ENV_FILE={keys_file}" in settings["Environment"]


def test_the_unit_runs_from_the_clone_the_docs_say_to_make():
    (command,) = service()["ExecStart"]
    clone = command.split()[0].removesuffix("/.venv/bin/omi-manifest")
    guide = (PROJECT / "docs" / "outscale.md").read_text()
    assert f"git clone <this repository> {clone}\n" in guide
    assert f"cd {clone} && make install" in guide


def test_systemd_accepts_the_unit(tmp_path):
    """``systemd-analyze verify`` with the paths pointed at this clone and a keys file."""
    assert shutil.which("systemd-analyze"), "systemd-analyze is not on PATH: this test runs it"
    keys_file = tmp_path / "env"
    keys_file.write_text("OMI_BUCKET=b\n")
    keys_file.chmod(0o600)
    (command,) = service()["ExecStart"]
    (configured,) = service()["EnvironmentFile"]
    here = UNIT.read_text()
    here = here.replace(command.split()[0], str(PROJECT / ".venv" / "bin" / "omi-manifest"))
    here = here.replace(configured, str(keys_file))
    unit = tmp_path / "omi-manifest.service"
    unit.write_text(here)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
