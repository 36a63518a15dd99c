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


def rendered_with_a_metrics_server(namespace: str, script: str, metrics_port: int) -> list[dict[str, Any]]:
    """Canaria's Service, ServiceMonitor and stable Deployment for the example ModelDeployment as it renders them,
    its pod running `script` (a small metrics server on `metrics_port`) in place of TorchServe: same labels, same
    named ports. No ModelDeployment owns them (the garbage collector would take them)."""
    from canaria import render, spec

    md = example_model_deployment(monitoring={"serviceMonitor": {"interval": "1s"}})
    md["metadata"].update({"namespace": namespace, "uid": "not-applied"})
    md = spec.defaulted(md)
    deployment = render.deployment(md, "stable", md["spec"]["model"], 1, render.Settings())
    deployment["spec"]["template"]["spec"] = {
        "containers": [
            {
                "name": "torchserve",
                "image": "python:3.11-slim",
                "command": ["python3", "-c", script],
                "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": metrics_port}],
            }
        ]
    }
    objects = [render.service(md), render.service_monitor(md), deployment]
    for body in objects:
        del body["metadata"]["ownerReferences"]
    return objects
