from __future__ import annotations

from typing import Any

import pytest

from canaria import spec
from tests.support.manifests import example_model_deployment


def model_deployment(**spec_overrides: Any) -> dict[str, Any]:
    """A defaulted ModelDeployment as the API server would store it."""
    body = example_model_deployment(**spec_overrides)
    body["metadata"].update({"namespace": "models", "uid": "uid-1", "generation": 3})
    return spec.defaulted(body)


@pytest.fixture
def md() -> dict[str, Any]:
    return model_deployment()
