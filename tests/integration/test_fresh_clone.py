"""A fresh clone needs nothing beside it: `make cluster` in a clone placed where no other file is (no
../shared, no .devcluster) brings the control plane up with every third-party CRD Established, the CRDs
coming from the pinned modules through the binary cache. The clone holds the work tree's tracked files as
they are now, committed or not, so the test checks the code under test rather than only HEAD."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
# The binaries are cached (`make test` built them first), so `make cluster` takes seconds; the bound only
# stops a hung start.
MAKE_TIMEOUT_S = 600
# What the other parts rely on: the Prometheus Operator's informers, Canaria's ServiceMonitor, Traefik's
# Gateway provider.
REQUIRED_CRDS = {
    "prometheuses.monitoring.coreos.com",
    "prometheusagents.monitoring.coreos.com",
    "alertmanagers.monitoring.coreos.com",
    "alertmanagerconfigs.monitoring.coreos.com",
    "thanosrulers.monitoring.coreos.com",
    "servicemonitors.monitoring.coreos.com",
    "podmonitors.monitoring.coreos.com",
    "probes.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
    "scrapeconfigs.monitoring.coreos.com",
    "gatewayclasses.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
    "httproutes.gateway.networking.k8s.io",
    "grpcroutes.gateway.networking.k8s.io",
    "referencegrants.gateway.networking.k8s.io",
    "backendtlspolicies.gateway.networking.k8s.io",
}


def git(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def work_tree_snapshot() -> str:
    """A commit of the tracked files as they are in the work tree, made through a temporary index: neither
    the real index, nor a branch, nor any file changes (the commit is reachable only by its hash)."""
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            **os.environ,
            "GIT_INDEX_FILE": str(Path(scratch) / "index"),
            "GIT_AUTHOR_NAME": "test_fresh_clone",
            "GIT_AUTHOR_EMAIL": "test@canaria.invalid",
            "GIT_COMMITTER_NAME": "test_fresh_clone",
            "GIT_COMMITTER_EMAIL": "test@canaria.invalid",
        }
        git("read-tree", "HEAD", env=env)
        git("add", "--update", env=env)
        tree = git("write-tree", env=env)
        return git("commit-tree", tree, "-p", "HEAD", "-m", "work tree snapshot", env=env)


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    clone = tmp_path / "canaria"
    # --shared borrows this repository's objects, the unreferenced snapshot among them.
    git("clone", "--quiet", "--shared", "--no-checkout", str(REPO_ROOT), str(clone))
    git("checkout", "--quiet", work_tree_snapshot(), cwd=clone)
    assert list(tmp_path.iterdir()) == [clone], "the clone must have nothing beside it"
    return clone


def make(clone: Path, target: str) -> subprocess.CompletedProcess[str]:
    """`make <target>` in the clone as a user would run it, except that it shares this session's Python
    environment (building a second one with torch costs minutes and is no part of what is tested here):
    `-o` keeps make from reinstalling it."""
    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "KUBECONFIG"}}
    argv = ["make", target, f"VENV={venv}", "-o", str(venv / ".installed")]
    return subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=MAKE_TIMEOUT_S, check=False)


@pytest.fixture
def clone_cluster(fresh_clone: Path) -> Iterator[Path]:
    up = make(fresh_clone, "cluster")
    try:
        assert up.returncode == 0, f"make cluster in a fresh clone failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        yield fresh_clone
    finally:
        down = make(fresh_clone, "cluster-down")
    assert down.returncode == 0, f"make cluster-down failed:\n{down.stdout}\n{down.stderr}"


def is_established(crd: dict) -> bool:
    conditions = crd.get("status", {}).get("conditions", [])
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def test_make_cluster_in_a_fresh_clone_installs_the_pinned_crds(clone_cluster: Path) -> None:
    state = clone_cluster / ".devcluster"
    listed = subprocess.run(
        [str(state / "bin" / "kubectl"), f"--kubeconfig={state / 'kubeconfig'}", "get", "crd", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    established = {crd["metadata"]["name"] for crd in json.loads(listed.stdout)["items"] if is_established(crd)}
    shipped = {
        doc["metadata"]["name"]
        for path in (state / "bin" / "crds").glob("*.yaml")
        for doc in yaml.load_all(path.read_text(), Loader=yaml.BaseLoader)  # the safe loader refuses `- =`
        if doc and doc.get("kind") == "CustomResourceDefinition"
    }
    assert shipped >= REQUIRED_CRDS, f"build.sh did not generate {sorted(REQUIRED_CRDS - shipped)}"
    assert shipped <= established, f"not Established: {sorted(shipped - established)}"
