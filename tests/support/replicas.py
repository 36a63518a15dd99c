"""Operator replicas as the Helm chart runs them, but as processes on this machine: the command line and the
environment of the chart's Deployment (rendered with `helm template`), the downward API's fields filled in as the
kubelet would for a pod of that name, and the liveness endpoint moved to a free loopback port. Used by the
failover test (tests/integration/test_failover.py) and its benchmark (bench/bench_failover.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "canaria"
LIVENESS_IN_CHART = "0.0.0.0:8080"
PORT_VARIABLES = ("CANARIA_METRICS_PORT",)  # ports the chart gives every pod; two processes here need two


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def chart_container(release: str, namespace: str, *values: str) -> dict[str, Any]:
    """The operator container of the chart's Deployment, as `helm template` renders it."""
    helm = shutil.which("helm") or str(ROOT / ".devcluster" / "bin" / "helm")
    rendered = subprocess.run(
        [helm, "template", release, str(CHART), "--namespace", namespace, *values],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    (deployment,) = [doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


@dataclass
class Replica:
    """One operator replica: `pod` is the name the kubelet would give it (POD_NAME, its identity in the Lease)."""

    pod: str
    process: subprocess.Popen[bytes]
    log_path: Path
    liveness: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole process group: what a node failure or an OOM kill does, no goodbye."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def liveness_status(self) -> tuple[int, Any]:
        """(HTTP status, decoded body) of the liveness endpoint; (0, None) while nothing listens."""
        try:
            with urllib.request.urlopen(self.liveness, timeout=5) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, None
        except (urllib.error.URLError, ConnectionError):
            return 0, None


def start_replica(
    container: dict[str, Any],
    pod: str,
    namespace: str,
    kubeconfig: Path,
    logs: Path,
    unset: tuple[str, ...] = (),
    **environ: str,
) -> Replica:
    """Start `python -m canaria` with the container's args and env, as pod `pod` of the release in `namespace`;
    `environ` overrides variables, `unset` removes them. Its log is logs/operator-<pod>.log, started afresh."""
    fields = {"metadata.name": pod, "metadata.namespace": namespace}
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    for variable in container.get("env", []):
        source = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[variable["name"]] = fields[source] if source else variable["value"]
    for name in PORT_VARIABLES:
        if name in env:
            env[name] = str(free_port())
    env.update(environ)
    for name in unset:
        env.pop(name, None)
    port = free_port()
    args = [arg.replace(LIVENESS_IN_CHART, f"127.0.0.1:{port}") for arg in container["args"]]
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"operator-{pod}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "canaria", *args],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
    return Replica(pod, process, log_path, f"http://127.0.0.1:{port}/healthz")


def lease_holder(kubectl: str, kubeconfig: Path, namespace: str, name: str) -> str | None:
    """The Lease's holderIdentity ("" when released), or None while there is no Lease."""
    result = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "get", "lease", "-n", namespace, name, "-o", "json"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise RuntimeError(f"kubectl get lease: {result.stderr}")
    holder: str = json.loads(result.stdout)["spec"].get("holderIdentity") or ""
    return holder


def wait_for_log(replica: Replica, text: str, timeout: float) -> float:
    """Wait until the replica's log contains text; returns the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in replica.log():
            return time.monotonic()
        if not replica.alive():
            raise AssertionError(f"{replica.pod} exited ({replica.process.returncode}):\n{replica.log()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"{replica.pod}: no {text!r} in its log after {timeout}s:\n{replica.log()[-3000:]}")
