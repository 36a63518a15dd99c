"""The example ModelDeployment that unit tests, integration tests and benchmarks start from."""

from __future__ import annotations

import copy
from typing import Any


def example_model_deployment(name: str = "cifar10", **spec: Any) -> dict[str, Any]:
    """The CIFAR-10 ModelDeployment from an https source; each keyword updates that spec section."""
    body: dict[str, Any] = {
        "apiVersion": "serving.canaria.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "version": "1.0",
                "storageUri": "https://models.example/cifar10.tar.gz",
                "serializedFile": "cifar10.pt",
                "modelFile": "model.py",
                "handler": "image_classifier",
                "extraFiles": ["index_to_name.json"],
            }
        },
    }
    for section, values in spec.items():
        body["spec"].setdefault(section, {}).update(copy.deepcopy(values))
    return body


# The devcluster's kwok node (devcluster/cluster.py): fake pods that turn Ready without running anything.
FAKE_NODE_SELECTOR = {"type": "kwok"}
FAKE_NODE_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


def on_fake_node(body: dict[str, Any]) -> dict[str, Any]:
    """The ModelDeployment with its pods placed on kwok's fake node: for tests of the control plane (and
    load benchmarks) that need pods to exist and turn Ready, not to serve. Other kinds pass unchanged."""
    if body.get("kind") != "ModelDeployment":
        return body
    placed = copy.deepcopy(body)
    serving = placed["spec"].setdefault("serving", {})
    serving.setdefault("nodeSelector", dict(FAKE_NODE_SELECTOR))
    serving.setdefault("tolerations", []).append(dict(FAKE_NODE_TOLERATION))
    return placed
