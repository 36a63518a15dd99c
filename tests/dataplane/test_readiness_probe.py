"""The serving pod's readiness probe (the script the operator ships in its ConfigMap) on a real TorchServe."""

from __future__ import annotations

import subprocess
import sys

import pytest

from canaria import render
from tests.dataplane.conftest import CIFAR10
from tests.support.torchserve import TorchServe

pytestmark = pytest.mark.torchserve


def probe(server_url: str, name: str, version: str, min_workers: int) -> subprocess.CompletedProcess[str]:
    script = render.readiness_script()
    return subprocess.run(
        [sys.executable, "-c", script, name, version, str(min_workers), server_url],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_ready_when_the_minimum_workers_are_ready(server: TorchServe) -> None:
    result = probe(server.management_url, CIFAR10.name, CIFAR10.version, 1)
    assert result.returncode == 0, result.stdout


def test_not_ready_with_fewer_ready_workers_than_the_minimum(server: TorchServe) -> None:
    result = probe(server.management_url, CIFAR10.name, CIFAR10.version, 2)
    assert result.returncode == 1
    assert "1 of 2 workers READY" in result.stdout


def test_not_ready_for_a_version_torchserve_does_not_serve(server: TorchServe) -> None:
    result = probe(server.management_url, CIFAR10.name, "9.9", 1)
    assert result.returncode == 1 and "not described" in result.stdout


def test_not_ready_when_the_management_api_is_down() -> None:
    result = probe("http://127.0.0.1:9", CIFAR10.name, CIFAR10.version, 1)
    assert result.returncode == 1
