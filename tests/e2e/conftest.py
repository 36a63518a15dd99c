"""Tier 4, the full loop: the operator on the host, the devcluster's node agent running each serving pod for
real (the init container packages, TorchServe serves) in the pod network, and the clients of those pods inside
that network namespace. Nothing here dials a pod address from the host."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import Cluster
from devcluster.podnet import PodNetwork
from tests.integration.conftest import Operator, apply_manifest, crd_installed, fresh_namespace, running

__all__ = ["crd_installed"]  # the integration tier's fixture, used here too

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cifar10"
MODEL_FILES = ("model.py", "index_to_name.json", "model-config.yaml")
READY_TIMEOUT_S = 300  # packaging plus TorchServe's start, several pods at once on 2 cores


@pytest.fixture(scope="session")
def e2e_operator(crd_installed: None) -> Iterator[Operator]:
    with running(Operator(log_name="operator-e2e.log", namespaces="e2e-*")) as started:
        yield started


@pytest.fixture
def e2e_namespace(cluster: Cluster) -> Iterator[str]:
    with fresh_namespace("e2e") as name:
        yield name


@pytest.fixture(scope="session")
def pod_network(cluster: Cluster) -> PodNetwork:
    return cluster.pod_network


@pytest.fixture(scope="session")
def model_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's files with freshly trained weights: what a user puts on a volume or in a bucket."""
    source = tmp_path_factory.mktemp("model-source") / "cifar10"
    source.mkdir()
    for name in MODEL_FILES:
        shutil.copy(EXAMPLE / name, source / name)
    subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--out", str(source / "cifar10_net.pt")], check=True)
    return source


def model_tarball(source: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(source.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def local_volume(namespace: str, claim: str, directory: Path) -> None:
    """A PersistentVolume backed by a directory of this machine, bound to claim `claim` in namespace: how a user
    serves a model from a file on this machine (README)."""
    pv_name = f"{namespace}-{claim}"
    apply_manifest(
        f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv_name}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  persistentVolumeReclaimPolicy: Retain
  hostPath: {{path: {directory}}}
  claimRef: {{namespace: {namespace}, name: {claim}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}, namespace: {namespace}}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: {pv_name}
  resources: {{requests: {{storage: 1Gi}}}}
"""
    )


def serving_model(name: str = "cifar10", **spec: Any) -> dict[str, Any]:
    """The example ModelDeployment, its pods on the node agent's real node; `spec` sections update it."""
    body: dict[str, Any] = {
        "apiVersion": "serving.canaria.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "cifar10",
                "version": "1.0",
                "storageUri": "pvc://models/cifar10",
                "serializedFile": "cifar10_net.pt",
                "modelFile": "model.py",
                "handler": "image_classifier",
                "extraFiles": ["index_to_name.json"],
            },
            "serving": {"replicas": 1, "workers": {"min": 1, "max": 1}},
        },
    }
    for section, values in spec.items():
        body["spec"].setdefault(section, {}).update(values)
    return body
