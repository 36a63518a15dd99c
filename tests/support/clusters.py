"""Control planes for tests: the environment a cluster's clients need, and a private one for a test module."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from devcluster import Cluster, Layout, Settings

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "serving.canaria.dev_modeldeployments.yaml"


@contextlib.contextmanager
def environment_of(cluster: Cluster) -> Iterator[Cluster]:
    """KUBECONFIG and PATH (kubectl, helm) point at `cluster` meanwhile."""
    saved = {name: os.environ.get(name) for name in ("KUBECONFIG", "PATH")}
    os.environ.update(cluster.env())
    try:
        yield cluster
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def private_cluster(state_dir: Path, third_party_crds: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """A control plane of its own (no add-ons, kwok's fake node) with our CRD and the named third-party CRD files
    of the toolchain, its environment set meanwhile; stopped afterwards. For tests that must not share the
    session's cluster (an operator watching every namespace, an audit log of their own, killed operators)."""
    shared = Layout.resolve(ROOT, Settings())
    private = Cluster.up(ROOT, Settings(state_dir=state_dir, bin_dir=shared.bin_dir, install_crds=False))
    try:
        with environment_of(private):
            crds = [CRD, *(f for f in private.layout.crd_files if f.name in third_party_crds)]
            for crd in crds:
                subprocess.run(["kubectl", "apply", "--server-side", "-f", str(crd)], check=True, capture_output=True)
            subprocess.run(
                ["kubectl", "wait", "--for=condition=Established", "--timeout=30s", "crd", "--all"],
                check=True,
                capture_output=True,
            )
            yield private
    finally:
        private.down()
