"""A real Prometheus (Debian's `prometheus` package) on a free loopback port, scraping TorchServe.

Targets carry the labels that the operator's ServiceMonitor makes the Prometheus Operator attach:
namespace, pod, service, job (the service), endpoint (the port name), container, and the pod labels named
in podTargetLabels. Prometheus label names cannot contain '.' or '/', so the Prometheus Operator turns the
pod label `serving.canaria.dev/track` into `serving_canaria_dev_track` (likewise for the version).

    with running_prometheus([ScrapeTarget.for_pod(server.ports.metrics, track="stable")], workdir) as prom:
        prom.wait_for_value('sum(rate(ts_inference_requests_total[1m]))', lambda v: v > 0)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .processes import free_port, start_process_group, stop_process_group

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
TRACK_LABEL = "serving_canaria_dev_track"
VERSION_LABEL = "serving_canaria_dev_version"


@dataclass(frozen=True)
class ScrapeTarget:
    address: str  # host:port of a TorchServe metrics endpoint
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_pod(
        cls,
        metrics_port: int,
        *,
        track: str,
        version: str = "1.0",
        namespace: str = "models",
        service: str = "cifar10",
        pod: str | None = None,
    ) -> ScrapeTarget:
        labels = {
            "namespace": namespace,
            "service": service,
            "job": service,
            "pod": pod or f"{service}-{track}-0",
            "container": "torchserve",
            "endpoint": "metrics",
            TRACK_LABEL: track,
            VERSION_LABEL: version,
        }
        return cls(address=f"127.0.0.1:{metrics_port}", labels=labels)


def render_config(targets: list[ScrapeTarget], scrape_interval: str) -> str:
    """prometheus.yml (JSON is YAML): one static target per pod, with its ServiceMonitor-style labels."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": "torchserve",
                "honor_labels": False,
                "static_configs": [{"targets": [target.address], "labels": target.labels} for target in targets],
            }
        ],
    }
    return json.dumps(config, indent=2)


@dataclass(frozen=True)
class Prometheus:
    url: str
    workdir: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_value(self, promql: str, accept: Callable[[float], bool], timeout_s: float = 60) -> float:
        """Poll an instant query until it returns one sample whose value `accept`s; return that value."""
        deadline = time.monotonic() + timeout_s
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            last = self.query(promql)
            if len(last) == 1 and accept(float(last[0]["value"][1])):
                return float(last[0]["value"][1])
            time.sleep(0.5)
        raise TimeoutError(f"{promql} gave {last} for {timeout_s}s\n{self.log_tail()}")

    def targets(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/api/v1/targets", timeout=10)
        response.raise_for_status()
        active: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return active

    def log_tail(self, lines: int = 30) -> str:
        log = self.workdir / "prometheus.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


@contextmanager
def running_prometheus(targets: list[ScrapeTarget], workdir: Path, scrape_interval: str = "1s") -> Iterator[Prometheus]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(render_config(targets, scrape_interval))
    port = free_port()
    command = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    process = start_process_group(command, workdir / "prometheus.log", cwd=workdir, env={"PATH": "/usr/bin:/bin"})
    prometheus = Prometheus(url=f"http://127.0.0.1:{port}", workdir=workdir)
    try:
        _wait_until_ready(prometheus, process.poll)
        yield prometheus
    finally:
        stop_process_group(process)


def _wait_until_ready(prometheus: Prometheus, exited: Callable[[], int | None], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if exited() is not None:
            raise RuntimeError(f"prometheus exited during startup\n{prometheus.log_tail()}")
        try:
            if requests.get(f"{prometheus.url}/-/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"prometheus not ready after {timeout_s}s\n{prometheus.log_tail()}")
