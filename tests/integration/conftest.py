"""Tier 2: the operator, run as a subprocess, against the real local control plane."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.manifests import on_fake_node
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "serving.canaria.dev_modeldeployments.yaml"
LOGS = ROOT / ".devcluster" / "logs"


def kubectl_binary() -> str:
    local = ROOT / ".devcluster" / "bin" / "kubectl"
    return str(local) if local.exists() else "kubectl"


def kubectl(
    *args: str, input: str | None = None, check: bool = True, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    config = ["--kubeconfig", str(kubeconfig)] if kubeconfig else []
    result = subprocess.run(
        [kubectl_binary(), *config, *args], input=input, capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result


def get_json(*args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.5, what: str = "") -> Any:
    """Poll until predicate returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last value: {last!r}")


@pytest.fixture(scope="session")
def crd_installed(cluster: Any) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/modeldeployments.serving.canaria.dev")


class Operator:
    """`python -m canaria run` in a subprocess, logging to .devcluster/logs/operator-test.log, serving its
    metrics on a free loopback port (`metrics_url`); `env` adds to (or overrides) its environment."""

    def __init__(
        self,
        kubeconfig: Path | None = None,
        log_name: str = "operator-test.log",
        namespaces: str = "t-*",
        env: dict[str, str] | None = None,
    ) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.kubeconfig = kubeconfig  # default: $KUBECONFIG (the session cluster)
        self.log_path = LOGS / log_name
        self.namespaces = namespaces
        self.env = env or {}
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        env = {
            **os.environ,
            "CANARIA_PACKAGER_IMAGE": "canaria-packager:test",
            "CANARIA_METRICS_ADDRESS": "127.0.0.1",
            "CANARIA_METRICS_PORT": str(self.metrics_port),
            **self.env,
        }
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        # Only this suite's namespaces: another operator (the demo's, a benchmark's) may share the cluster.
        command = [sys.executable, "-m", "canaria", "run", "--namespace", self.namespaces]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def operator(crd_installed: None) -> Iterator[Operator]:
    with running(Operator()) as started:
        yield started


@contextlib.contextmanager
def running(operator: Operator) -> Iterator[Operator]:
    """The operator started for a fixture's while, stopped after; a traceback in its log fails the fixture."""
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
    assert "Traceback" not in operator.log(), "the operator logged a traceback: see " + str(operator.log_path)


@contextlib.contextmanager
def fresh_namespace(prefix: str) -> Iterator[str]:
    """A new namespace `<prefix>-<random>`, deleted (without waiting) afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def namespace(cluster: Any) -> Iterator[str]:
    with fresh_namespace("t") as name:
        yield name


def patch_md(namespace: str, spec: dict[str, Any], name: str = "cifar10") -> None:
    """`kubectl patch --type=merge` of a ModelDeployment's spec, as a user would edit it."""
    kubectl("patch", "-n", namespace, "md", name, "--type=merge", "-p", json.dumps({"spec": spec}))


def apply(namespace: str, body: dict[str, Any]) -> None:
    """Applies body; a ModelDeployment's pods go to the fake node (this tier tests the control plane; tests/e2e
    runs pods that serve)."""
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(on_fake_node(body)))


def condition(md: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in md.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def apply_manifest(text: str) -> None:
    """`kubectl apply` of YAML text as written (no placement on the fake node)."""
    kubectl("apply", "-f", "-", input=text)
