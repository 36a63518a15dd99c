"""Dependencies are locked: uv.lock matches pyproject.toml, and the environment the tests run in holds exactly
the locked version of every package `make venv` installs."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def uv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["uv", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def make_venv_extras() -> list[str]:
    match = re.search(r"^EXTRAS \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "the Makefile names the extras `make venv` installs"
    return match.group(1).split()


def test_the_lock_matches_pyproject():
    result = uv("lock", "--check", "--offline")
    assert result.returncode == 0, f"run `uv lock` and commit uv.lock:\n{result.stderr}"


def test_the_environment_holds_the_locked_versions():
    extras = [item for extra in make_venv_extras() for item in ("--extra", extra)]
    exported = uv("export", "--frozen", "--no-hashes", "--no-emit-project", "--no-header", *extras)
    assert exported.returncode == 0, exported.stderr
    locked = [Requirement(line) for line in exported.stdout.splitlines() if line and line[0].isalnum()]
    wanted = {r.name: next(iter(r.specifier)).version for r in locked if r.marker is None or r.marker.evaluate()}
    assert {"kopf", "kubernetes", "torch", "torchserve"} <= set(wanted)
    installed = {name: importlib.metadata.version(name) for name in wanted}
    assert {name: v for name, v in installed.items() if Version(v) != Version(wanted[name])} == {}
