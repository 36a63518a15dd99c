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
