from __future__ import annotations

import copy
from typing import Any

import pytest

from canaria import spec


def model_deployment(**spec_overrides: Any) -> dict[str, Any]:
    """A defaulted ModelDeployment as the API server would store it."""
    body: dict[str, Any] = {
        "apiVersion": "serving.canaria.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "cifar10", "namespace": "models", "uid": "uid-1", "generation": 3},
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
    for section, values in spec_overrides.items():
        body["spec"].setdefault(section, {}).update(copy.deepcopy(values))
    return spec.defaulted(body)


@pytest.fixture
def md() -> dict[str, Any]:
    return model_deployment()
