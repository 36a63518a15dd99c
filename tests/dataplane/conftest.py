"""Data-plane fixtures: the CIFAR-10 example trained and packaged by `python -m canaria.package`, and one
real TorchServe for the session, started from the config.properties that the packager put in the store."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.support.torchserve import (
    ModelSettings,
    Ports,
    TorchServe,
    render_config_properties,
    start_with_config,
    with_model_api,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cifar10"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CIFAR10 = ModelSettings(name="cifar10", version="1.0")

sys.path.insert(0, str(EXAMPLE))
import train  # noqa: E402  (examples/cifar10/train.py: the trainer and its held-out digits)


def run_packager(*args: str) -> dict[str, object]:
    """Run the init container's command; return its JSON summary line."""
    result = subprocess.run(
        [sys.executable, "-m", "canaria.package", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    summary: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


@pytest.fixture(scope="session")
def cifar10_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's files with a freshly trained state_dict, laid out as a user's storage would be."""
    source = tmp_path_factory.mktemp("cifar10-source")
    for name in ("model.py", "index_to_name.json", "model-config.yaml"):
        (source / name).write_bytes((EXAMPLE / name).read_bytes())
    torch.save(train.train(seed=0).state_dict(), source / "cifar10_net.pt")
    return source


def cifar10_args(source: Path, model_store: Path, name: str = "cifar10", *extra: str) -> list[str]:
    return [
        "--name", name, "--version", CIFAR10.version, "--source", str(source),
        "--serialized-file", "cifar10_net.pt", "--model-file", "model.py", "--handler", "image_classifier",
        "--extra-files", "index_to_name.json", "--model-store", str(model_store), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-store")


@pytest.fixture(scope="session")
def server(cifar10_source: Path, model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """TorchServe serving cifar10 (batchSize 1) from the packager's archive and the packager's config copy."""
    workdir = tmp_path_factory.mktemp("torchserve")
    ports = Ports()
    rendered = workdir / "rendered.properties"  # what the operator's ConfigMap would hold
    # test_serving registers more archives on this server: its config alone turns the model API on.
    rendered.write_text(with_model_api(render_config_properties(model_store, CIFAR10, ports)))
    run_packager(*cifar10_args(cifar10_source, model_store), "--config", str(rendered))
    with start_with_config(model_store / "config.properties", model_store, ports, workdir) as running:
        running.wait_until_ready(CIFAR10.name)
        yield running


@pytest.fixture(scope="session")
def affine_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 -> 2 linear regression model with fixed weights, for the JSON tensor handler."""
    source = tmp_path_factory.mktemp("affine-source")
    (source / "affine_model.py").write_bytes((FIXTURES / "affine_model.py").read_bytes())
    state = {
        "linear.weight": torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]]),
        "linear.bias": torch.tensor([0.5, -0.25]),
    }
    torch.save(state, source / "affine.pt")
    return source
