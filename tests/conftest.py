"""Shared pytest fixtures. Each section belongs to one part of the project; keep sections self-contained."""

from __future__ import annotations

# --- cluster fixture (owned by devcluster/) ---
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import Cluster
from tests.support.clusters import environment_of

_REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The local control plane. Reuses one that `make cluster` already started (and leaves it running);
    otherwise starts one and stops it when the session ends. KUBECONFIG and PATH (kubectl, helm) point at
    it for the whole session."""
    running = Cluster.attach(_REPO_ROOT)
    devcluster = running or Cluster.up(_REPO_ROOT)
    try:
        with environment_of(devcluster):
            yield devcluster
    finally:
        if devcluster.started_here:
            devcluster.down()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses the `cluster` fixture is marked `cluster`, so -m "not cluster" skips it."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


# --- end of cluster fixture ---
