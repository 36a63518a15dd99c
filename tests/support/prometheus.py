"""The devcluster's Prometheus (devcluster/monitoring.py), queried through its HTTP API on the host's loopback
forward. Its configuration comes only from the Prometheus Operator: nothing here writes scrape configs.

The Prometheus Operator turns the pod labels a ServiceMonitor names in podTargetLabels into target labels,
replacing the characters Prometheus forbids: `serving.canaria.dev/track` becomes `serving_canaria_dev_track`.

    prometheus = Prometheus(monitoring.url(ports))
    prometheus.wait_for_value('sum(rate(ts_inference_requests_total[1m]))', lambda v: v > 0)
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from devcluster.podnet import guard_dial

TRACK_LABEL = "serving_canaria_dev_track"
VERSION_LABEL = "serving_canaria_dev_version"


@dataclass(frozen=True)
class Prometheus:
    url: str  # http://127.0.0.1:<port>: the host side of the forward

    def __post_init__(self) -> None:
        guard_dial(urllib.parse.urlsplit(self.url).hostname or "", None)  # the host never dials a pod address

    def _data(self, path: str, **params: str) -> Any:
        response = requests.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query, now or at Unix time `at`."""
        params = {"query": promql} if at is None else {"query": promql, "time": str(at)}
        result: list[dict[str, Any]] = self._data("/api/v1/query", **params)["result"]
        return result

    def query_range(self, promql: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
        """A range query: each series' samples from start to end (Unix seconds), every step_s."""
        data = self._data("/api/v1/query_range", query=promql, start=str(start), end=str(end), step=str(step_s))
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for_value(self, promql: str, accept: Callable[[float], bool], timeout_s: float = 60) -> float:
        """Polls an instant query until it returns one sample whose value `accept`s; returns that value."""
        deadline = time.monotonic() + timeout_s
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            last = self.query(promql)
            if len(last) == 1 and accept(float(last[0]["value"][1])):
                return float(last[0]["value"][1])
            time.sleep(0.5)
        raise TimeoutError(f"{promql} gave {last} for {timeout_s}s")

    def targets(self) -> list[dict[str, Any]]:
        """The active targets: discoveredLabels, labels, scrapePool, health ("up", "down", "unknown")..."""
        active: list[dict[str, Any]] = self._data("/api/v1/targets", state="active")["activeTargets"]
        return active

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._data("/api/v1/rules")["groups"]
        return groups

    def config(self) -> str:
        """The configuration Prometheus runs, as YAML."""
        text: str = self._data("/api/v1/status/config")["yaml"]
        return text
