"""The Service traffic client against pods that really run on the node agent's node: requests spread uniformly
over a Service's ready endpoints, a pod that turns unready leaves the rotation, every run keeps its bounds,
and no pod address is ever dialled from the host's namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devcluster import Cluster
from devcluster.podnet import PodNetworkError
from devcluster.traffic import GATEWAY, Endpoint, Fixed, Load, ServiceEndpoints, _PodConnection, admin_api, run
from tests.integration.conftest import kubectl
from tests.support import echo
from tests.support.stats import chi_square, chi_square_bound

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 4


def deploy(namespace: str, name: str, replicas: int, track: str = "") -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=echo.manifests(name, replicas, track))


@pytest.fixture
def echo_endpoints(cluster: Cluster, namespace: str) -> Iterator[ServiceEndpoints]:
    deploy(namespace, "echo", REPLICAS)
    with ServiceEndpoints(admin_api(cluster), namespace, "echo", "http") as endpoints:
        endpoints.wait_for(lambda ready: len(ready) == REPLICAS, echo.READY_TIMEOUT_S)
        yield endpoints


def test_requests_spread_uniformly_over_the_ready_endpoints(cluster: Cluster, echo_endpoints: ServiceEndpoints) -> None:
    ready = echo_endpoints.current()
    report = run(Load(count=2000, duration_s=60, concurrency=4), echo_endpoints, cluster.pod_network, seed=1)
    assert report.summary.ok == report.summary.sent == 2000, report.summary
    assert set(report.summary.by_endpoint) == {str(e) for e in ready}
    counts = [report.summary.by_endpoint[str(e)] for e in ready]
    assert chi_square(counts) < chi_square_bound(len(ready) - 1), counts
    # Each answer came from the pod that was dialled (it names the address it was reached at).
    assert all(echo.answered_by(r.body)[1] == r.endpoint.rsplit(":", 1)[0] for r in report.results)
    assert {r.pod for r in report.results} == {e.pod for e in ready}
    assert all(pod.startswith("echo-") for pod in {e.pod for e in ready})


def test_a_pod_that_turns_unready_leaves_the_rotation(cluster: Cluster, echo_endpoints: ServiceEndpoints) -> None:
    network = cluster.pod_network
    leaving = echo_endpoints.current()[0]
    turned = run(Load(count=1, duration_s=10, method="POST", path="/unready"), Fixed(leaving), network)
    assert turned.summary.ok == 1, turned.results
    remaining = echo_endpoints.wait_for(lambda ready: leaving not in ready, echo.READY_TIMEOUT_S)
    assert len(remaining) == REPLICAS - 1

    report = run(Load(count=600, duration_s=60), echo_endpoints, network, seed=2)
    assert report.summary.ok == 600, report.summary
    assert str(leaving) not in report.summary.by_endpoint
    assert set(report.summary.by_endpoint) == {str(e) for e in remaining}
    # Unready is not dead: the pod still answers when asked directly, it just gets no Service traffic.
    assert run(Load(count=1, duration_s=10), Fixed(leaving), network).summary.ok == 1


def test_a_run_stops_at_its_count(cluster: Cluster, echo_endpoints: ServiceEndpoints) -> None:
    report = run(Load(count=25, duration_s=60, concurrency=8), echo_endpoints, cluster.pod_network)
    assert report.summary.sent == 25


def test_a_run_stops_at_its_time_limit_and_keeps_its_rate(cluster: Cluster, echo_endpoints: ServiceEndpoints) -> None:
    report = run(Load(count=10**6, duration_s=2, rate_per_s=20), echo_endpoints, cluster.pod_network)
    # Due at 0, 0.05, ... 1.95 s (the next would start at the limit); a late worker may lose the last ones.
    assert 36 <= report.summary.sent <= 40, report.summary
    assert report.summary.elapsed_s < 2 + 1
    starts = [r.started_s for r in report.results]
    assert max(starts) < 2.0
    assert all(start >= i / 20 - 0.001 for i, start in enumerate(starts))  # never ahead of the rate


def test_no_ready_endpoint_fails_fast_and_says_so(cluster: Cluster, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(echo.service("nobody")))
    with ServiceEndpoints(admin_api(cluster), namespace, "nobody", echo.SERVICE_PORT) as endpoints:
        report = run(Load(count=5, duration_s=10), endpoints, cluster.pod_network)
    assert report.summary.by_status == {"error": 5}
    assert {r.error for r in report.results} == {"no ready endpoint"}


def test_no_pod_address_is_dialled_from_the_host(cluster: Cluster) -> None:
    """Checked without a packet: the guard refuses before any socket connects."""
    network = cluster.pod_network
    for endpoint in (Endpoint("10.244.1.200", echo.PORT), GATEWAY.endpoint):
        connection = _PodConnection(endpoint, network, timeout=1)
        with pytest.raises(PodNetworkError, match="outside the pod network namespace"):
            connection.connect()
        assert connection.sock is None


def test_the_cli_prints_a_summary(cluster: Cluster, namespace: str, echo_endpoints: ServiceEndpoints) -> None:
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "devcluster.traffic", "--service", f"{namespace}/echo", "--port", "http"),
            *("--path", "/hello", "--count", "40", "--duration", "30", "--concurrency", "2"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert (summary["sent"], summary["ok"], summary["by_status"]) == (40, 40, {"200": 40})
    assert set(summary["by_endpoint"]) <= {str(e) for e in echo_endpoints.current()}
    answering = {echo.answered_by(body.encode())[1] for body in summary["by_body"]}
    assert answering <= {e.address for e in echo_endpoints.current()}
