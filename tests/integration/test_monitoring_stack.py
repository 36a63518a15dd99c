"""The real Prometheus Operator and Prometheus around the devcluster (devcluster/monitoring.py): Prometheus is
configured only by the operator, from the ServiceMonitor Canaria renders and from PrometheusRules, runs
inside the pod network, discovers pods through the API server and scrapes processes that really run there.

Prometheus is queried only through the host's loopback forward."""

from __future__ import annotations

import gzip
import ipaddress
import json
import subprocess
import time
from base64 import b64decode
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import Cluster, Layout, monitoring, pki, podnet
from devcluster.api import ApiClient
from devcluster.cluster import NODE_NAME
from devcluster.monitoring_config import CONFIG_KEY, CONFIG_SECRET, NAME, NAMESPACE, POD_NAME
from tests.integration.conftest import kubectl, wait_for
from tests.support.manifests import rendered_with_a_metrics_server
from tests.support.prometheus import TRACK_LABEL, VERSION_LABEL, Prometheus

pytestmark = pytest.mark.cluster

METRICS_PORT = 8082
# The pod's one process: /metrics answers with a fixed exposition, as TorchServe's metrics port would.
METRICS_SERVER = f"""
import http.server
BODY = b'# TYPE ts_inference_requests_total counter\\nts_inference_requests_total{{model_name="cifar10"}} 7\\n'
class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(BODY)
http.server.ThreadingHTTPServer(("0.0.0.0", {METRICS_PORT}), Metrics).serve_forever()
"""


@dataclass(frozen=True)
class Stack:
    prometheus: Prometheus
    layout: Layout
    admin: ApiClient


def _admin(cluster: Cluster) -> ApiClient:
    files = pki.Pki(cluster.layout.pki_dir)
    return ApiClient(cluster.server, files.ca_cert, files.client_cert(pki.ADMIN), files.client_key(pki.ADMIN))


@pytest.fixture(scope="module")
def stack(cluster: Cluster) -> Stack:
    """The monitoring `up` started with the cluster (devcluster/cluster.py composes devcluster/monitoring.py)."""
    ports: dict[str, int] = json.loads(cluster.layout.cluster_file.read_text())["ports"]
    assert monitoring.prometheus_ready(ports), "the cluster runs no Prometheus: was it started with install_crds?"
    return Stack(Prometheus(monitoring.url(ports)), cluster.layout, _admin(cluster))


def _apply(namespace: str, *objects: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def _generated_config(admin: ApiClient) -> dict[str, Any]:
    code, secret = admin.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/{CONFIG_SECRET}")
    assert code == 200, secret
    generated: dict[str, Any] = yaml.safe_load(gzip.decompress(b64decode(secret["data"][CONFIG_KEY])))
    return generated


def test_canarias_service_monitor_makes_the_pod_a_target(stack: Stack, namespace: str) -> None:
    applied = time.monotonic()
    _apply(namespace, *rendered_with_a_metrics_server(namespace, METRICS_SERVER, METRICS_PORT))
    pool = f"serviceMonitor/{namespace}/cifar10/0"

    def target() -> dict[str, Any] | None:
        return next((t for t in stack.prometheus.targets() if t["scrapePool"] == pool and t["health"] == "up"), None)

    up = wait_for(target, timeout=120, what=f"a healthy target in {pool}")
    print(f"\nmonitoring: ServiceMonitor applied to target up in {time.monotonic() - applied:.1f}s")
    labels = up["labels"]
    assert labels[TRACK_LABEL] == "stable" and labels[VERSION_LABEL] == "1.0"
    assert (labels["namespace"], labels["service"], labels["endpoint"]) == (namespace, "cifar10", "metrics")
    assert labels["pod"].startswith("cifar10-stable-")
    address = ipaddress.ip_address(up["discoveredLabels"]["__address__"].rsplit(":", 1)[0])
    assert address in ipaddress.ip_network(podnet.NODE_POD_CIDR), "scraped where the node agent runs the pod"
    by_track = f'ts_inference_requests_total{{namespace="{namespace}", {TRACK_LABEL}="stable", {VERSION_LABEL}="1.0"}}'
    assert stack.prometheus.wait_for_value(by_track, lambda value: value == 7, timeout_s=30) == 7
    assert stack.prometheus.wait_for_value(f'up{{namespace="{namespace}"}}', lambda value: value == 1) == 1


def test_prometheus_runs_exactly_what_the_operator_generated(stack: Stack, namespace: str) -> None:
    (monitor,) = (
        body
        for body in rendered_with_a_metrics_server(namespace, METRICS_SERVER, METRICS_PORT)
        if body["kind"] == "ServiceMonitor"
    )
    _apply(namespace, monitor)

    def job_names(config: dict[str, Any]) -> list[str]:
        return [job["job_name"] for job in config.get("scrape_configs") or []]

    def running_as_generated() -> dict[str, Any] | None:
        running: dict[str, Any] = yaml.safe_load(stack.prometheus.config())
        generated = job_names(_generated_config(stack.admin))
        ours = f"serviceMonitor/{namespace}/cifar10/0" in generated
        return running if ours and job_names(running) == generated else None

    running = wait_for(running_as_generated, timeout=60, what="Prometheus to run the jobs the operator generated")
    kubeconfig = str(monitoring.monitoring_files(stack.layout).kubeconfig)
    for job in running["scrape_configs"]:
        assert "static_configs" not in job, f"{job['job_name']} has targets nobody discovered"
        assert {sd["kubeconfig_file"] for sd in job["kubernetes_sd_configs"]} == {kubeconfig}
    assert running["global"]["external_labels"] == {"prometheus": f"{NAMESPACE}/{NAME}", "prometheus_replica": POD_NAME}


def _rule(name: str, expression: str) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name},
        "spec": {"groups": [{"name": name, "rules": [{"record": "canaria_test:answer", "expr": expression}]}]},
    }


def test_a_prometheus_rule_becomes_a_rule_group_and_leaves_with_it(stack: Stack, namespace: str) -> None:
    group = f"canaria-test-{namespace}"
    applied = time.monotonic()
    _apply(namespace, _rule(group, "vector(42)"))

    def loaded() -> dict[str, Any] | None:
        return next((g for g in stack.prometheus.rule_groups() if g["name"] == group), None)

    found = wait_for(loaded, timeout=60, what=f"rule group {group}")
    print(f"\nmonitoring: PrometheusRule applied to rule group loaded in {time.monotonic() - applied:.1f}s")
    rules_dir = monitoring.monitoring_files(stack.layout).rules_dir
    assert Path(found["file"]).is_relative_to(rules_dir)
    assert stack.prometheus.wait_for_value("canaria_test:answer", lambda value: value == 42, timeout_s=30) == 42
    config = monitoring.monitoring_files(stack.layout).config
    promtool = subprocess.run(
        [str(stack.layout.binary("promtool")), "check", "config", str(config)], capture_output=True, text=True
    )
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr  # the config and every rule file it names

    kubectl("delete", "-n", namespace, "prometheusrule", group)
    wait_for(lambda: loaded() is None, timeout=60, what=f"rule group {group} to go with its PrometheusRule")


def test_the_pod_of_the_prometheus_object_is_fake(stack: Stack) -> None:
    """The operator's StatefulSet exists and its pod sits on kwok's node: only our process runs Prometheus."""
    code, pod = stack.admin.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{POD_NAME}")
    assert code == 200, pod
    assert pod["spec"]["nodeName"] == NODE_NAME
