"""The Makefile as a user meets it: what `make run` and `make install` pull in, `PORT`,
and the shared `/usr/local/bin/omi-manifest` link between several clones."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import PROJECT, make_env

FOR_TESTS_ONLY = ("npm", "node", "apt-get", "sudo", "requirements-dev.txt")


def dry_run(*targets: str) -> list[str]:
    """The commands ``make`` would run for ``targets`` from a fresh clone (``-B``)."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", *targets],
        cwd=PROJECT,
        env=make_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines()


def requirements(name: str) -> set[str]:
    """Package names a requirements file installs, following its ``-r`` includes."""
    found: set[str] = set()
    for line in (PROJECT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            found |= requirements(line[3:].strip())
        elif line:
            found.add(re.split(r"[\[=<>~ ]", line)[0].lower())
    return found


def test_make_run_needs_neither_node_nor_root_and_passes_the_port():
    commands = dry_run("run", "PORT=5051")
    assert not [c for c in commands if any(word in c for word in FOR_TESTS_ONLY[:4])]
    assert commands[-1] == ".venv/bin/omi-manifest run --port 5051"
    assert dry_run("run")[-1] == ".venv/bin/omi-manifest run --port 5050"


def test_node_and_s3rver_come_with_make_test():
    assert "npm ci --no-audit --no-fund --loglevel=error" in dry_run("test")


def pulled_in(names: set[str]) -> set[str]:
    """``names`` and everything they depend on, as installed in this environment (which
    ``make setup`` filled from requirements-dev.txt, a superset of the host's)."""
    found: set[str] = set()
    waiting = [(canonicalize_name(name), frozenset()) for name in names]
    while waiting:
        name, extras = waiting.pop()
        if (name, extras) in found:
            continue
        found.add((name, extras))
        for line in metadata.requires(name) or []:
            needed = Requirement(line)
            wanted = needed.marker is None or any(
                needed.marker.evaluate({"extra": extra}) for extra in {"", *extras}
            )
            if wanted:
                waiting.append((canonicalize_name(needed.name), frozenset(needed.extras)))
    return {name for name, _ in found}


def test_make_install_pulls_no_test_tool():
    commands = dry_run("install")
    installs = [c for c in commands if " install " in c and "-r " in c]
    assert installs == [".venv/bin/pip install --quiet -r requirements-host.txt"]
    assert not [c for c in commands if any(word in c for word in FOR_TESTS_ONLY)]
    host = requirements("requirements-host.txt")
    assert host == {"aws-lambda-powertools", "isal", "osc-sdk-python", "boto3"}
    test_tools = {"pytest", "moto", "ruff", "chalice", "awscli"}
    assert not pulled_in(host) & test_tools
    assert test_tools <= requirements("requirements-dev.txt")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def path_without(tmp_path: Path, *missing: str) -> str:
    """This PATH with the named programs gone: each directory holding one is replaced
    by a copy made of links to everything else in it."""
    directories = []
    for index, directory in enumerate(os.environ["PATH"].split(os.pathsep)):
        if not any(os.path.exists(os.path.join(directory, name)) for name in missing):
            directories.append(directory)
            continue
        copy = tmp_path / f"path-{index}"
        copy.mkdir()
        for entry in os.scandir(directory):
            if entry.name not in missing:
                (copy / entry.name).symlink_to(entry.path)
        directories.append(str(copy))
    return os.pathsep.join(directories)


def test_make_run_serves_on_the_port_given_with_no_npm_on_the_path(tmp_path):
    path = path_without(tmp_path, "npm", "node", "npx", "sudo", "apt-get")
    port = free_port()
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"PORT={port}"],
        cwd=PROJECT,
        env=make_env(PATH=path, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    shown = []
    try:
        for line in process.stdout:
            shown.append(line)
            if line.startswith("  endpoint:") or "Error" in line:
                break
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
    assert f"  endpoint: http://127.0.0.1:{port} (embedded" in "".join(shown), "".join(shown) + rest


# --- the shared link: several clones, one /usr/local/bin/omi-manifest ---------------


def clone(root: Path, name: str) -> Path:
    """A clone with this Makefile and an installed command (a stand-in script)."""
    folder = root / name
    (folder / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(PROJECT / "Makefile", folder / "Makefile")
    command = folder / ".venv" / "bin" / "omi-manifest"
    command.write_text("#!/bin/sh\necho " + name + "\n")
    command.chmod(0o755)
    return folder


def make(folder: Path, target: str, link: Path) -> str:
    done = subprocess.run(
        ["make", "--no-print-directory", target, f"LINK={link}"],
        cwd=folder,
        env=make_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_the_link_is_never_re_pointed_at_the_clone_set_up_last(tmp_path):
    shared = tmp_path / "usr-local-bin"
    shared.mkdir()
    link = shared / "omi-manifest"
    first, second = clone(tmp_path, "first"), clone(tmp_path, "second")
    first_command = first / ".venv" / "bin" / "omi-manifest"
    assert make(first, "link", link) == f"omi-manifest: linked {link} to this clone's\n"
    said = make(second, "link", link)
    assert os.readlink(link) == str(first_command)
    assert said == (
        f"omi-manifest: {link} is another install's ({first_command}): left alone; "
        f"this clone's is {second / '.venv' / 'bin' / 'omi-manifest'}\n"
    )
    assert make(first, "link", link) == f"omi-manifest: {link} is this clone's\n"


def test_clean_removes_its_own_link_only_and_leaves_none_dangling(tmp_path):
    shared = tmp_path / "usr-local-bin"
    shared.mkdir()
    link = shared / "omi-manifest"
    first, second = clone(tmp_path, "first"), clone(tmp_path, "second")
    make(first, "link", link)
    make(second, "clean", link)
    assert os.readlink(link) == str(first / ".venv" / "bin" / "omi-manifest")
    assert make(first, "clean", link).startswith(f"omi-manifest: removed {link}\n")
    assert not os.path.lexists(link) and not (first / ".venv").exists()


def test_a_dangling_link_from_a_deleted_clone_is_taken_over(tmp_path):
    shared = tmp_path / "usr-local-bin"
    shared.mkdir()
    link = shared / "omi-manifest"
    link.symlink_to(tmp_path / "deleted-clone" / ".venv" / "bin" / "omi-manifest")
    first = clone(tmp_path, "first")
    make(first, "link", link)
    assert os.readlink(link) == str(first / ".venv" / "bin" / "omi-manifest")


def test_without_moto_run_says_to_give_a_store(tmp_path):
    """A ``make install`` host has no moto: ``run`` with no store says what to do."""
    (tmp_path / "moto.py").write_text("")  # a module, not the package: as if not installed
    done = subprocess.run(
        [str(PROJECT / ".venv" / "bin" / "omi-manifest"), "run", "--port", "0"],
        env=make_env(PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (
        1,
        "omi-manifest: no embedded S3 server in this install (moto is not installed: "
        "`make install` leaves it out) - give --endpoint-url and --bucket of your store, "
        "or run make setup\n",
    )
