"""Tier 4 seed: a real Prometheus scrapes the real TorchServe, labelled as the operator's ServiceMonitor
would label a stable pod, and the request rate the rollout analysis reads comes back through its HTTP API."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.support.prometheus import TRACK_LABEL, ScrapeTarget, running_prometheus
from tests.support.torchserve import TorchServe

from .conftest import CIFAR10
from .test_serving import digit_image

pytestmark = pytest.mark.torchserve


def test_prometheus_sees_the_request_rate_of_the_stable_track(server: TorchServe, tmp_path: Path) -> None:
    target = ScrapeTarget.for_pod(server.ports.metrics, track="stable", version=CIFAR10.version)
    stop = threading.Event()

    def send_traffic() -> None:
        body = digit_image(4)
        deadline = time.monotonic() + 60  # bounded, whatever happens to the test
        while not stop.is_set() and time.monotonic() < deadline:
            server.predict(CIFAR10.name, body)
            time.sleep(0.05)

    with running_prometheus([target], tmp_path / "prometheus", scrape_interval="1s") as prometheus:
        traffic = threading.Thread(target=send_traffic, daemon=True)
        traffic.start()
        try:
            rate = prometheus.wait_for_value(
                f'sum(rate(ts_inference_requests_total{{model_name="{CIFAR10.name}"}}[1m]))',
                lambda value: value > 0,
                timeout_s=60,
            )
            per_track = f"sum by ({TRACK_LABEL}, namespace, service) (rate(ts_inference_requests_total[1m]))"
            by_track = prometheus.query(per_track)
        finally:
            stop.set()
            traffic.join(timeout=10)
        assert rate > 0
        assert [sample["metric"] for sample in by_track] == [
            {TRACK_LABEL: "stable", "namespace": "models", "service": "cifar10"}
        ]
        (scraped,) = prometheus.targets()
        assert scraped["health"] == "up"
        assert scraped["labels"]["pod"] == "cifar10-stable-0"
