"""The full loop, seen through the operator's own metrics: the real Prometheus scrapes the operator through the
chart's ServiceMonitor, and the chart's PrometheusRule alerts on what it scraped. A version whose handler fails
every third batch is rolled back by ErrorRate under steady load; Prometheus then holds the rollout's start and
rollback, the check's value that status reported, the canary's weight going 0 -> step -> 0, and the firing
CanariaRolloutRolledBack alert for that ModelDeployment.

The operator runs on the host here (not as a pod), so the test stands in for what the chart's Service gives a
pod: a forwarder of its own listens inside the pod network (10.244.0.1:<port>) and dials the operator's loopback
metrics port; a selector-less Service with the chart's name, labels and port name, and an EndpointSlice naming
that address, let Kubernetes service discovery find it. Only the chart's ServiceMonitor and PrometheusRule are
applied, as `helm template` renders them. The host never dials a pod address: Prometheus (inside the pod network)
dials the forwarder, and the test reads Prometheus' HTTP API on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import Cluster
from devcluster.podnet import GATEWAY_IP, HOST, INSIDE, READY_MARK, Forward, PodNetwork
from tests.integration.conftest import Operator, kubectl, wait_for
from tests.integration.test_chart import Release
from tests.integration.test_chart_monitoring import rendered
from tests.support.processes import start_process_group, stop_process_group
from tests.support.prometheus import Prometheus

from .conftest import READY_TIMEOUT_S, local_volume, serving_model
from .rollouts import (
    FLAKY_HANDLER,
    good_source,
    handler_model,
    handler_source,
    prometheus_url,
    replace_model,
    service_load,
    status,
)
from .test_serving import apply_md, wait_ready

ROOT = Path(__file__).resolve().parents[2]
NAME = "cifar10"
CHECK = "error-rate"
ERROR_RATE_MAX = 5  # percent; the flaky version fails about 33 %
SCRAPE_S = 2  # the ServiceMonitor's interval
ALERT_WINDOW = "5m"  # CanariaRolloutRolledBack's window: it fires at once, for this long
ROLLOUT: dict[str, Any] = {
    "steps": [{"weight": 50, "pause": "60s"}],
    "progressDeadline": "5m",
    "analysis": {
        "interval": "20s",
        "failureLimit": 2,
        "minRequests": 5,
        "metrics": [{"name": CHECK, "builtin": "ErrorRate", "max": ERROR_RATE_MAX}],
    },
}


@dataclass(frozen=True)
class Scraped:
    """An operator on the host, scraped by the devcluster's Prometheus through the chart's ServiceMonitor."""

    namespace: str  # the ModelDeployment's, watched by the operator
    release: Release  # the chart release the ServiceMonitor and PrometheusRule belong to (its namespace)
    job: str  # the `job` the ServiceMonitor gives the operator's series (the chart's rules select it)
    scrape_pool: str
    address: str  # where Prometheus scrapes: the forwarder, inside the pod network
    prometheus: Prometheus

    def series(self, metric: str, **labels: str) -> str:
        """A selector of the operator's metric about the ModelDeployment (its job's series)."""
        return self.about(metric, job=self.job, **labels)

    def about(self, metric: str, **labels: str) -> str:
        """A selector of metric about the ModelDeployment, whatever its job (an alert has none)."""
        matchers = {"namespace": self.namespace, "name": NAME, **labels}
        return metric + "{" + ", ".join(f'{key}="{value}"' for key, value in matchers.items()) + "}"


def free_port_inside(network: PodNetwork) -> int:
    """A port free on the pod network's gateway address (bound inside the namespace; nothing is dialled)."""
    with network.socket_inside() as probe:
        probe.bind((GATEWAY_IP, 0))
        port: int = probe.getsockname()[1]
        return port


def start_forwarder(network: PodNetwork, port: int, metrics_port: int, log: Path) -> subprocess.Popen[bytes]:
    """`python -m devcluster.podnet forward`: listens inside the pod network at GATEWAY_IP:port, where a pod's
    address would be, and dials the operator's metrics port on host loopback."""
    forward = Forward.parse(f"{INSIDE}:{GATEWAY_IP}:{port}={HOST}:127.0.0.1:{metrics_port}")
    argv = [sys.executable, "-m", "devcluster.podnet", "forward", f"--holder-pid={network.holder_pid}",
            f"--forward={forward}"]  # fmt: skip
    process = start_process_group(argv, log, ROOT, dict(os.environ))
    wait_for(
        lambda: process.poll() is not None or READY_MARK in log.read_text(errors="replace"),
        timeout=30,
        what="the metrics forwarder to listen",
    )
    assert process.poll() is None, f"the forwarder exited: {log.read_text(errors='replace')}"
    return process


def stand_in_endpoints(chart_service: dict[str, Any], port: int) -> list[dict[str, Any]]:
    """What the chart's metrics Service is for a pod, for an operator on the host: the same name, labels and port
    name, no selector, and an EndpointSlice naming the forwarder's address."""
    meta = chart_service["metadata"]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": meta["labels"]},
        "spec": {"type": "ClusterIP", "ports": [{"name": "metrics", "port": port, "protocol": "TCP"}]},
    }
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{meta['name']}-host",
            "namespace": meta["namespace"],
            "labels": {
                "kubernetes.io/service-name": meta["name"],
                "endpointslice.kubernetes.io/managed-by": "canaria-e2e-tests",  # not the controller's: ours
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [GATEWAY_IP], "conditions": {"ready": True}}],
        "ports": [{"name": "metrics", "port": port, "protocol": "TCP"}],
    }
    return [service, endpoint_slice]


def ref(body: dict[str, Any]) -> list[str]:
    return ["-n", body["metadata"]["namespace"], body["kind"], body["metadata"]["name"]]


@pytest.fixture
def scraped(
    cluster: Cluster, crd_installed: None, pod_network: PodNetwork, tmp_path: Path
) -> Iterator[tuple[Scraped, Operator]]:
    suffix = uuid.uuid4().hex[:8]
    namespace = f"e2o-{suffix}"
    release = Release(name=f"canaria-obs-{suffix}", namespace=f"canaria-obs-{suffix}", suffix=suffix)
    operator = Operator(log_name="operator-e2e-observability.log", namespaces="e2o-*")
    created: list[dict[str, Any]] = []
    forwarder = None
    for name in (namespace, release.namespace):
        kubectl("create", "namespace", name)
    try:
        operator.start()
        port = free_port_inside(pod_network)
        forwarder = start_forwarder(pod_network, port, operator.metrics_port, tmp_path / "forward.log")
        chart = rendered(
            release,
            "--set", f"metrics.port={port}",
            "--set", "metrics.serviceMonitor.enabled=true",
            "--set", f"metrics.serviceMonitor.interval={SCRAPE_S}s",
            "--set", "metrics.prometheusRule.enabled=true",
            "--set", f"metrics.prometheusRule.alerts.CanariaRolloutRolledBack.window={ALERT_WINDOW}",
        )  # fmt: skip
        by_kind = {body["kind"]: body for body in chart}  # the chart renders one object of each of these kinds
        monitor = by_kind["ServiceMonitor"]
        for body in [*stand_in_endpoints(by_kind["Service"], port), monitor]:
            kubectl("apply", "-f", "-", input=yaml.safe_dump(body))
            created.append(body)
        found = Scraped(
            namespace=namespace,
            release=release,
            job=by_kind["Service"]["metadata"]["name"],  # the Prometheus Operator's job: the Service's name
            scrape_pool=f"serviceMonitor/{release.namespace}/{monitor['metadata']['name']}/0",
            address=f"{GATEWAY_IP}:{port}",
            prometheus=Prometheus(prometheus_url(cluster)),
        )
        # The rules go in once the target is up: CanariaOperatorDown (absent() until the first scrape) then
        # has nothing to see at any time, which the test checks.
        wait_for(lambda: target(found), timeout=120, interval=1, what=f"a healthy target in {found.scrape_pool}")
        rule = by_kind["PrometheusRule"]
        kubectl("apply", "-f", "-", input=yaml.safe_dump(rule))
        created.append(rule)
        wait_for(lambda: rules_evaluated(found), timeout=120, interval=1, what="Prometheus to evaluate the rules")
        yield found, operator
    finally:
        for body in reversed(created):
            kubectl("delete", *ref(body), "--ignore-not-found", "--wait=false", check=False)
        if forwarder is not None:
            stop_process_group(forwarder)
        # While the operator runs, so that Kopf's finalizer is removed and the namespace can go.
        kubectl("delete", "md", "--all", "-n", namespace, "--timeout=120s", check=False)
        operator.stop()
        for name in (namespace, release.namespace):
            kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)
    assert "Traceback" not in operator.log(), "the operator logged a traceback: see " + str(operator.log_path)


def target(scraped: Scraped) -> dict[str, Any] | None:
    return next(
        (t for t in scraped.prometheus.targets() if t["scrapePool"] == scraped.scrape_pool and t["health"] == "up"),
        None,
    )


def rules_evaluated(scraped: Scraped) -> list[dict[str, Any]]:
    """The chart's alerts in Prometheus (the Prometheus Operator names the rule file <namespace>-<name>-<uid>),
    each evaluated at least once."""
    prefix = f"{scraped.release.namespace}-{scraped.release.name}-"
    rules = [
        rule
        for group in scraped.prometheus.rule_groups()
        if Path(group["file"]).name.startswith(prefix)
        for rule in group["rules"]
    ]
    return rules if rules and all(rule.get("health") == "ok" for rule in rules) else []


def value_at(scraped: Scraped, promql: str, at: float) -> float | None:
    """The one sample promql gives at `at`, or None when there is no series."""
    samples = scraped.prometheus.query(promql, at=at)
    assert len(samples) <= 1, samples
    return float(samples[0]["value"][1]) if samples else None


def test_a_rolled_back_rollout_in_the_operators_metrics_and_alerts(
    cluster: Cluster,
    scraped: tuple[Scraped, Operator],
    pod_network: PodNetwork,
    model_source: Path,
    tmp_path: Path,
) -> None:
    found, _operator = scraped
    namespace, prometheus = found.namespace, found.prometheus
    started_at = time.monotonic()

    # The operator's target, discovered through the ServiceMonitor: the rules' job, the release's namespace.
    up = target(found)
    assert up is not None
    assert up["labels"]["job"] == found.job and up["labels"]["namespace"] == found.release.namespace, up["labels"]
    assert up["discoveredLabels"]["__address__"] == found.address, up["discoveredLabels"]

    good_source(model_source, tmp_path)
    handler_source(model_source, tmp_path, "flaky", FLAKY_HANDLER)
    local_volume(namespace, "models", tmp_path)
    rollout = {**ROLLOUT, "analysis": {**ROLLOUT["analysis"], "prometheusUrl": prometheus_url(cluster)}}
    apply_md(namespace, serving_model(rollout=rollout, monitoring={"serviceMonitor": {"interval": "5s"}}))
    wait_ready(namespace, NAME)

    # Before the rollout: the counter of starts is scraped at 0 (honorLabels kept the model's namespace) and
    # the canary's weight is 0; no rollback series yet.
    started = found.series("canaria_rollouts_started_total")
    wait_for(lambda: prometheus.query(f"{started} == 0"), timeout=60, interval=1, what=f"{started} at 0")
    before = time.time()
    rolled_back = found.series("canaria_rollouts_rolled_back_total", reason="AnalysisFailed")
    assert value_at(found, started, before) == 0
    assert value_at(found, rolled_back, before) is None

    weights_seen: set[int] = set()
    with service_load(cluster, pod_network, namespace) as load:
        replace_model(namespace, handler_model("flaky", "2.0"))

        def ended() -> dict[str, Any] | None:
            now = status(namespace)
            weights_seen.add(int(now.get("canaryWeight") or 0))
            return now if now.get("phase") == "RolledBack" else None

        final = wait_for(ended, timeout=READY_TIMEOUT_S + 180, interval=2, what="version 2.0 rolled back")
        rolled_back_seen = time.time()  # the rollback happened before this moment
    assert final["rollout"]["reason"] == "AnalysisFailed", final["rollout"]
    (check,) = final["rollout"]["checks"]
    assert check["name"] == CHECK and check["value"] > ERROR_RATE_MAX, check
    assert final["canaryWeight"] == 0
    step_weight = max(weights_seen)
    assert step_weight > 0, f"status never showed the canary a share: {weights_seen}"
    assert any(not r.ok for r in load.results() if "-canary-" in r.pod), "the canary never failed a request"

    # The alert: fires on the rollback, for this ModelDeployment, with its reason.
    alert = found.about("ALERTS", alertname="CanariaRolloutRolledBack", alertstate="firing")
    (firing,) = wait_for(lambda: prometheus.query(alert), timeout=90, interval=1, what=f"{alert}")
    fired_after_s = time.time() - rolled_back_seen
    assert firing["metric"]["reason"] == "AnalysisFailed" and firing["metric"]["severity"] == "warning", firing

    # The counters: one start and one AnalysisFailed rollback more than before the rollout.
    after = wait_for(lambda: value_at(found, rolled_back, time.time()), timeout=30, interval=1, what=rolled_back)
    assert after == 1
    assert value_at(found, started, time.time()) == 1
    reasons = prometheus.query(found.series("canaria_rollouts_rolled_back_total"))
    assert [s["metric"]["reason"] for s in reasons] == ["AnalysisFailed"], reasons

    # The check's value: what status reported, exactly (the gauge stays while status keeps the checks).
    measured = found.series("canaria_analysis_check_value", check=CHECK, track="canary")

    def check_value() -> float | None:
        value = value_at(found, measured, time.time())
        return value if value == pytest.approx(check["value"], rel=1e-9) else None

    wait_for(check_value, timeout=30, interval=1, what=f"{measured} at {check['value']}")

    # The canary's weight over the test's window: 0 before, the step's weight during it, 0 after the rollback.
    weight = found.series("canaria_canary_weight")
    wait_for(lambda: value_at(found, weight, time.time()) == 0, timeout=30, interval=1, what=f"{weight} at 0")
    time.sleep(max(0.0, rolled_back_seen + 6 * SCRAPE_S - time.time()))  # a few scrapes after the rollback
    end = time.time()
    (series,) = prometheus.query_range(weight, before, end, SCRAPE_S)
    samples = [(float(t), float(v)) for t, v in series["values"]]
    during = [v for t, v in samples if t < rolled_back_seen]
    settled = [v for t, v in samples if t >= rolled_back_seen + 3 * SCRAPE_S]
    assert samples[0][1] == 0, samples[:3]
    assert max(during) == step_weight, (during, weights_seen)
    assert settled and set(settled) == {0}, settled
    first_positive = next(i for i, (_, v) in enumerate(samples) if v > 0)
    last_positive = max(i for i, (_, v) in enumerate(samples) if v > 0)
    assert all(v > 0 for _, v in samples[first_positive : last_positive + 1]), "the weight went 0 mid-step"
    step_s = samples[last_positive][0] - samples[first_positive][0] + SCRAPE_S

    # The operator's target stayed up all along, so CanariaOperatorDown never even went pending.
    (up_min,) = prometheus.query(f'min_over_time(up{{job="{found.job}"}}[{int(end - before) + 1}s])')
    assert up_min["value"][1] == "1"
    down = f'ALERTS{{alertname="CanariaOperatorDown", namespace="{found.release.namespace}"}}'
    assert not prometheus.query_range(down, before, end, SCRAPE_S)

    print(
        f"\noperator metrics through the ServiceMonitor: job {found.job} at {found.address}; "
        f"started {value_at(found, started, end):.0f}, rolled back (AnalysisFailed) {after:.0f}; "
        f"{CHECK} {check['value']} % (max {ERROR_RATE_MAX}); canary weight {step_weight} for about {step_s:.0f}s, "
        f"then 0; CanariaRolloutRolledBack firing {fired_after_s:.1f}s after status showed RolledBack; "
        f"test body {time.monotonic() - started_at:.0f}s"
    )
