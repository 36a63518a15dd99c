"""Shared pytest fixtures. Each section belongs to one part of the project; keep sections self-contained."""

from __future__ import annotations

# --- cluster fixture (owned by devcluster/) ---
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import Cluster

_REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The local control plane. Reuses one that `make cluster` already started (and leaves it running);
    otherwise starts one and stops it when the session ends. KUBECONFIG and PATH (kubectl, helm) point at
    it for the whole session."""
    running = Cluster.attach(_REPO_ROOT)
    devcluster = running or Cluster.up(_REPO_ROOT)
    saved = {name: os.environ.get(name) for name in ("KUBECONFIG", "PATH")}
    os.environ.update(devcluster.env())
    try:
        yield devcluster
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if devcluster.started_here:
            devcluster.down()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses the `cluster` fixture is marked `cluster`, so -m "not cluster" skips it."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


# --- end of cluster fixture ---
