"""The chart against the devcluster's real API server and Prometheus:

- every object the chart renders, with the default values and with every feature on, passes the API server's
  server-side dry run (`kubectl apply --dry-run=server --validate=strict`: the real OpenAPI schemas, the CRDs'
  included, unknown fields rejected);
- the chart's PrometheusRule, applied to the cluster, is turned into rule files by the real Prometheus Operator
  and loaded by the real Prometheus, which evaluates every alert without an error;
- every query of the Grafana dashboard (and of its variables) runs against that Prometheus' HTTP API;
- CRD upgrades: Helm never upgrades crds/, the documented `kubectl apply --server-side` step before
  `helm upgrade` does, and existing objects survive it.

Prometheus is reached on the host's loopback forward (tests/support/prometheus.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from devcluster import Cluster, monitoring
from tests.integration.conftest import get_json, kubectl, wait_for
from tests.integration.test_chart import CHART, ON_FAKE_NODE, Release, exists, helm, new_release
from tests.support.chart_monitoring import (
    alert_expressions,
    dashboard,
    fill,
    panel_queries,
    rule_groups,
    variable_selectors,
)
from tests.support.manifests import rendered_with_a_metrics_server
from tests.support.prometheus import Prometheus

pytestmark = pytest.mark.cluster

RELABEL = [{"action": "replace", "targetLabel": "cluster", "replacement": "dev"}]
DROP_GO = [{"action": "drop", "sourceLabels": ["__name__"], "regex": "go_.*"}]
EVERYTHING_ON = [
    "--set", "metrics.serviceMonitor.enabled=true",
    "--set", "metrics.serviceMonitor.scrapeTimeout=10s",
    "--set-json", f"metrics.serviceMonitor.relabelings={json.dumps(RELABEL)}",
    "--set-json", f"metrics.serviceMonitor.metricRelabelings={json.dumps(DROP_GO)}",
    "--set", "metrics.serviceMonitor.labels.release=kps",
    "--set", "metrics.prometheusRule.enabled=true",
    "--set", "metrics.prometheusRule.labels.release=kps",
    "--set", "metrics.prometheusRule.alertLabels.team=ml",
    "--set", "metrics.dashboard.enabled=true",
    "--set", "metrics.dashboard.annotations.grafana_folder=Canaria",
    "--set-string", "metrics.service.annotations.example\\.com/scrape=true",
    "--set", "serviceAccount.annotations.example\\.com/role=canaria",
    "--set", "podAnnotations.example\\.com/a=b",
    "--set", "podLabels.team=ml",
    "--set", "priorityClassName=system-cluster-critical",
    "--set", "imagePullSecrets[0].name=regcred",
    "--set", "extraEnv[0].name=HTTPS_PROXY", "--set", "extraEnv[0].value=http://proxy:3128",
    "--set", "prometheus.url=http://prometheus-operated.monitoring:9090",
    *ON_FAKE_NODE,
]  # fmt: skip


@pytest.fixture
def release(cluster: Cluster) -> Iterator[Release]:
    with new_release() as made:
        kubectl("create", "namespace", made.namespace)
        yield made


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster) -> Prometheus:
    ports: dict[str, int] = json.loads(cluster.layout.cluster_file.read_text())["ports"]
    assert monitoring.prometheus_ready(ports), "the devcluster runs no Prometheus"
    return Prometheus(monitoring.url(ports))


def cluster_version() -> str:
    version: str = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    return version


def rendered(release: Release, *values: str, chart: Path = CHART) -> list[dict[str, Any]]:
    """`helm template` of the chart for release (its CRD included), for the cluster's Kubernetes version."""
    out = helm("template", release.name, str(chart), "--namespace", release.namespace, "--include-crds",
               "--kube-version", cluster_version(), *values).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def dry_run(objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    return kubectl(
        "apply", "--dry-run=server", "--validate=strict", "--server-side", "--field-manager=chart-test",
        "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(objects), check=False,
    )  # fmt: skip


# -- every object, validated by the API server ------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [[], EVERYTHING_ON, [*EVERYTHING_ON, "--set", "rbac.create=true", "--set", "livenessProbe.enabled=false"]],
    ids=["defaults", "everything-on", "everything-on-namespaced"],
)
def test_the_api_server_accepts_every_rendered_object(release: Release, values: list[str], request: Any) -> None:
    if request.node.callspec.id == "everything-on-namespaced":
        watched = release.create_namespace(f"canaria-watched-{release.suffix}")
        values = [*values, "--set", f"watchNamespaces={{{watched}}}"]
    objects = rendered(release, *values)
    kinds = sorted({o["kind"] for o in objects})
    if values:
        assert {"ServiceMonitor", "PrometheusRule", "ConfigMap", "Service", "CustomResourceDefinition"} <= set(kinds)
    result = dry_run(objects)
    assert result.returncode == 0, f"the API server rejected the chart's objects:\n{result.stderr}"
    for obj in objects:
        assert f"{obj['kind'].lower()}" in result.stdout.lower(), f"{obj['kind']} {obj['metadata']['name']} not applied"
    assert result.stdout.count("(server dry run)") == len(objects), result.stdout


def test_the_dry_run_rejects_what_the_schemas_reject(release: Release) -> None:
    """The check can fail: a field the ServiceMonitor CRD does not have, and a bad port in a core object."""
    objects = rendered(release, "--set", "metrics.serviceMonitor.enabled=true")
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["honorLabel"] = True
    result = dry_run([monitor])
    assert result.returncode != 0 and "honorLabel" in result.stderr, result.stderr
    service = next(o for o in objects if o["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = 70000
    result = dry_run([service])
    assert result.returncode != 0 and "port" in result.stderr, result.stderr


# -- the rules in the real Prometheus --------------------------------------------------------------------------


def test_the_prometheus_operator_loads_the_rules_and_prometheus_evaluates_them(
    release: Release, prometheus: Prometheus
) -> None:
    """The PrometheusRule, applied as the chart renders it, becomes rule files (Prometheus Operator) that the real
    Prometheus loads and evaluates: every alert with health ok and no lastError. The devcluster's Prometheus
    object selects every PrometheusRule (ruleSelector: {}); the chart's labels would match any selector on them."""
    objects = rendered(release, *EVERYTHING_ON)
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    applied = time.monotonic()
    kubectl("apply", "-f", "-", input=yaml.safe_dump(rule))
    wanted = {group["name"]: {r["alert"] for r in group["rules"]} for group in rule_groups(rule)}
    # The Prometheus Operator names each rule file <namespace>-<name>-<uid>.yaml.
    prefix = f"{release.namespace}-{rule['metadata']['name']}-"

    def ours() -> list[dict[str, Any]]:
        return [g for g in prometheus.rule_groups() if Path(g["file"]).name.startswith(prefix)]

    def evaluated() -> list[dict[str, Any]] | None:
        groups = ours()
        loaded = {g["name"]: {r["name"] for r in g["rules"]} for g in groups}
        done = all(r.get("health") != "unknown" for g in groups for r in g["rules"])
        return groups if loaded == wanted and done else None

    groups = wait_for(evaluated, timeout=120, what=f"Prometheus to load and evaluate {sorted(wanted)}")
    print(f"\nchart rules: applied to evaluated in {time.monotonic() - applied:.1f}s")
    for group in groups:
        for alert in group["rules"]:
            assert alert["type"] == "alerting"
            assert alert["health"] == "ok" and not alert.get("lastError"), alert
            assert alert["labels"]["team"] == "ml"
    by_name = {r["name"]: r for g in groups for r in g["rules"]}
    assert by_name["CanariaOperatorDown"]["duration"] == 300  # for: 5m, as the chart says
    # No operator of this release runs: its absence is what CanariaOperatorDown sees (pending, then firing).
    assert by_name["CanariaOperatorDown"]["state"] in ("pending", "firing")
    assert by_name["CanariaOperatorDown"]["alerts"][0]["labels"]["namespace"] == release.namespace

    kubectl("delete", "-n", release.namespace, "prometheusrule", rule["metadata"]["name"])
    wait_for(lambda: not ours(), timeout=60, what="the rule groups to go with their PrometheusRule")


def query_errors(prometheus: Prometheus, promql: str) -> str | None:
    """None when Prometheus runs promql; otherwise its error (a parse error is 400 bad_data)."""
    response = requests.get(f"{prometheus.url}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    if response.status_code != 200 or body.get("status") != "success":
        return f"{response.status_code} {body.get('errorType')}: {body.get('error')}"
    return None


def test_every_dashboard_and_alert_query_runs_in_prometheus(release: Release, prometheus: Prometheus) -> None:
    board = dashboard()
    variables = {"job": f"{release.name}-metrics", "namespace": release.namespace, "model": "cifar10"}
    queries = [(title, fill(expr, variables)) for title, expr in panel_queries(board)]
    rule = next(o for o in rendered(release, *EVERYTHING_ON) if o["kind"] == "PrometheusRule")
    queries += list(alert_expressions(rule).items())
    failures = [f"{title}: {expr}\n  {error}" for title, expr in queries if (error := query_errors(prometheus, expr))]
    assert not failures, "\n".join(failures)
    for name, selector in variable_selectors(board):  # Grafana's label_values(): the series API
        response = requests.get(f"{prometheus.url}/api/v1/series", params={"match[]": fill(selector, variables)},
                                timeout=10)  # fmt: skip
        assert response.status_code == 200 and response.json()["status"] == "success", (name, response.text)
    assert query_errors(prometheus, "sum(rate(ts_inference_requests_total[5m])") is not None, "the check can fail"


# -- CRD upgrades ----------------------------------------------------------------------------------------------


def isolated_chart(directory: Path, group: str) -> tuple[Path, Path]:
    """A copy of the chart whose CRD is served under group instead of serving.canaria.dev, so this test changes a
    CRD of its own, never the one other tests use. Returns (chart, CRD file)."""
    chart = directory / "canaria"
    shutil.copytree(CHART, chart)
    (crd_file,) = (chart / "crds").glob("*.yaml")
    crd = yaml.safe_load(crd_file.read_text())
    crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
    crd["spec"]["group"] = group
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart, crd_file


def served_spec_schema(crd_name: str) -> dict[str, Any]:
    crd = get_json("crd", crd_name)
    (version,) = (v for v in crd["spec"]["versions"] if v["served"])
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def test_crd_upgrade_with_the_documented_step(release: Release, tmp_path: Path) -> None:
    group = f"upgrade-{uuid.uuid4().hex[:6]}.canaria-test.dev"
    chart, crd_file = isolated_chart(tmp_path, group)
    crd = yaml.safe_load(crd_file.read_text())
    crd_name = crd["metadata"]["name"]
    try:
        helm("install", release.name, str(chart), "--namespace", release.namespace, *ON_FAKE_NODE)
        kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{crd_name}")
        assert "upgradeProbe" not in served_spec_schema(crd_name)["properties"]
        existing = {
            "apiVersion": f"{group}/{crd['spec']['versions'][0]['name']}",
            "kind": crd["spec"]["names"]["kind"],
            "metadata": {"name": "survivor", "namespace": release.namespace},
            "spec": {"model": {"version": "1.0", "storageUri": "pvc://models/cifar10", "serializedFile": "m.pt",
                               "handler": "image_classifier"}},
        }  # fmt: skip
        kubectl("apply", "-f", "-", input=yaml.safe_dump(existing))

        # The next chart version's CRD: a new optional field and a changed description.
        spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        spec_schema["properties"]["upgradeProbe"] = {"type": "string", "description": "Added by the upgrade test."}
        spec_schema["description"] = "Changed by the upgrade test."
        crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
        with_field = {**existing, "metadata": {"name": "new", "namespace": release.namespace},
                      "spec": {**existing["spec"], "upgradeProbe": "x"}}  # fmt: skip

        # helm upgrade alone leaves the CRD as it was (Helm never upgrades crds/): the new field is refused.
        helm("upgrade", release.name, str(chart), "--namespace", release.namespace, "--reuse-values")
        assert "upgradeProbe" not in served_spec_schema(crd_name)["properties"]
        refused = kubectl("create", "--dry-run=server", "--validate=strict", "-f", "-",
                          input=yaml.safe_dump(with_field), check=False)  # fmt: skip
        assert refused.returncode != 0 and "upgradeProbe" in refused.stderr, refused.stderr

        # The documented step (charts/canaria/README.md, Upgrading), then helm upgrade. Helm created the CRD
        # (field manager "helm"), so a server-side apply that changes its fields must take them over.
        conflict = kubectl("apply", "--server-side", "-f", str(chart / "crds"), check=False)
        assert conflict.returncode != 0 and "conflict" in conflict.stderr.lower(), conflict.stderr
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(chart / "crds"))
        helm("upgrade", release.name, str(chart), "--namespace", release.namespace, "--reuse-values")
        served = served_spec_schema(crd_name)
        assert served["properties"]["upgradeProbe"]["type"] == "string"
        assert served["description"] == "Changed by the upgrade test."
        kubectl("create", "--dry-run=server", "--validate=strict", "-f", "-", input=yaml.safe_dump(with_field))
        assert exists("-n", release.namespace, crd["spec"]["names"]["plural"] + "." + group, "survivor")
    finally:
        helm("uninstall", release.name, "--namespace", release.namespace, "--wait", check=False)
        kubectl("delete", "crd", crd_name, "--ignore-not-found", "--wait=false", check=False)


# -- the operator's metrics, scraped through the chart's Service and ServiceMonitor ------------------------------

# A pod that stands in for the operator (the chart's own pods would land on kwok's node, where nothing runs): the
# operator's real metrics code (canaria.metrics), with one ModelDeployment's pass recorded, served on the metrics
# port as the operator serves it. Format fields: namespace of the ModelDeployment, port.
OPERATOR_METRICS = """
import time
from canaria import metrics

class Event:
    reason = "RolledBack"
    message = "Version 2.0 rolled back (AnalysisFailed): ErrorRate 12.5 above 1"

operator = metrics.OperatorMetrics()
operator.record_pass("success", 0.04)
operator.record_pass("retry", 0.3)
ended = {{"rollout": {{"phase": "RolledBack", "reason": "AnalysisFailed"}}}}
operator.record_transitions("{namespace}", "cifar10", ended, [Event()])
operator.record_state(
    "{namespace}", "cifar10", {{"rollout": {{"progressDeadline": "1m"}}}},
    {{"phase": "Waiting", "canaryWeight": 25, "conditions": [{{"type": "Ready", "status": "False"}}],
     "rollout": {{"phase": "Waiting", "progressAt": "2026-01-01T00:00:00+00:00",
                 "checks": [{{"name": "errors", "value": 12.5, "stableValue": 0.2}}]}}}},
)
# resnet is not Ready and rolls nothing out: CanariaModelNotReady is about it, not about cifar10's rollout.
operator.record_state(
    "{namespace}", "resnet", {{}},
    {{"phase": "Degraded", "conditions": [{{"type": "Ready", "status": "False"}}], "rollout": {{"phase": "Serving"}}}},
)
operator.serve("0.0.0.0", {port})
while True:
    time.sleep(3600)
"""


def operator_stand_in(release: Release, models_namespace: str, port: int) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "canaria", "app.kubernetes.io/instance": release.name,
              "app.kubernetes.io/component": "operator"}  # fmt: skip  # the chart's selector labels
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator-stand-in", "namespace": release.namespace, "labels": labels},
        "spec": {
            "containers": [
                {
                    "name": "operator",
                    "image": "python:3.11-slim",
                    "command": ["python3", "-c", OPERATOR_METRICS.format(namespace=models_namespace, port=port)],
                    "ports": [{"name": "metrics", "containerPort": port}],
                }
            ]
        },
    }


def rule_states(prometheus: Prometheus, release: Release) -> dict[str, dict[str, Any]]:
    prefix = f"{release.namespace}-{release.name}-"
    return {
        rule["name"]: rule
        for group in prometheus.rule_groups()
        if Path(group["file"]).name.startswith(prefix)
        for rule in group["rules"]
    }


def test_prometheus_scrapes_the_operator_through_the_chart_and_the_alerts_see_it(
    release: Release, prometheus: Prometheus
) -> None:
    """The chart's metrics Service and ServiceMonitor make the operator's endpoint a target whose `job` is the one
    the alerts and the dashboard select, and honorLabels keeps each ModelDeployment's own namespace; the chart's
    alerts then see what the operator's metrics say."""
    models = f"models-{release.suffix}"  # only a label value here
    port = 8081
    helm(
        "install", release.name, str(CHART), "--namespace", release.namespace, "--set", "replicas=0",
        "--set", f"metrics.port={port}", "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.serviceMonitor.interval=2s", "--set", "metrics.prometheusRule.enabled=true",
    )  # fmt: skip
    kubectl("apply", "-f", "-", input=yaml.safe_dump(operator_stand_in(release, models, port)))
    job = f"{release.name}-metrics"
    pool = f"serviceMonitor/{release.namespace}/{release.name}/0"

    def target() -> dict[str, Any] | None:
        return next((t for t in prometheus.targets() if t["scrapePool"] == pool and t["health"] == "up"), None)

    up = wait_for(target, timeout=120, what=f"a healthy target in {pool}")
    assert up["labels"]["job"] == job, "the rules select the operator by this job"
    assert up["labels"]["namespace"] == release.namespace

    # honorLabels: the per-ModelDeployment series keep the model's namespace; the others get the target's.
    ready = wait_for(
        lambda: len(result := prometheus.query(f'canaria_model_deployment_ready{{job="{job}"}}')) == 2 and result,
        timeout=30,
    )
    found = sorted((s["metric"]["namespace"], s["metric"]["name"], s["value"][1]) for s in ready)
    assert found == [(models, "cifar10", "0"), (models, "resnet", "0")]
    assert "exported_namespace" not in ready[0]["metric"]
    (build,) = prometheus.query(f'canaria_build_info{{job="{job}"}}')
    assert build["metric"]["namespace"] == release.namespace

    # The chart's alerts on these series: the rollback fires at once (the counter's first increment), the model
    # that is not Ready and the rollout past its deadline are pending (their `for`), the operator is up.
    wanted = {
        "CanariaRolloutRolledBack": "firing",
        "CanariaModelNotReady": "pending",
        "CanariaRolloutStuck": "pending",
        "CanariaOperatorDown": "inactive",
        "CanariaReconcileErrors": "inactive",
    }  # (CanariaModelHighErrorRate reads every model's TorchServe series, other tests' too: see the next test)

    def states() -> dict[str, dict[str, Any]] | None:
        rules = rule_states(prometheus, release)
        return rules if {name: rules.get(name, {}).get("state") for name in wanted} == wanted else None

    rules = wait_for(states, timeout=120, what=f"the chart's alerts in states {wanted}")
    rolled_back = rules["CanariaRolloutRolledBack"]["alerts"][0]["labels"]
    assert (rolled_back["namespace"], rolled_back["name"], rolled_back["reason"]) == (
        models,
        "cifar10",
        "AnalysisFailed",
    )
    # Not Ready: resnet only; cifar10 is not Ready because its rollout is under way, which CanariaRolloutStuck
    # covers once past its deadline.
    for name, model in (("CanariaModelNotReady", "resnet"), ("CanariaRolloutStuck", "cifar10")):
        alerts = [(alert["labels"]["namespace"], alert["labels"]["name"]) for alert in rules[name]["alerts"]]
        assert alerts == [(models, model)], name

    # The dashboard's panels about this ModelDeployment and the operator show data.
    board = dashboard()
    variables = {"job": job, "namespace": models, "model": "cifar10"}
    for title in ("Ready", "Canary weight", "Analysis checks", "Reconcile passes by result", "Operators up"):
        for expr in (expr for panel_title, expr in panel_queries(board) if panel_title == title):
            assert prometheus.query(fill(expr, variables)), f"{title}: no data for {fill(expr, variables)}"
    (weight,) = prometheus.query(fill('max(canaria_canary_weight{job="$job", namespace="$namespace"})', variables))
    assert weight["value"][1] == "25"

    # The operator gone: CanariaOperatorDown sees no target (pending for its 5m).
    kubectl("delete", "pod", "-n", release.namespace, "operator-stand-in", "--wait=false")

    def operator_down() -> dict[str, Any] | None:
        down = rule_states(prometheus, release).get("CanariaOperatorDown", {})
        return down if down.get("state") in ("pending", "firing") else None

    down = wait_for(operator_down, timeout=120, what="CanariaOperatorDown to see the operator gone")
    assert down["alerts"][0]["labels"]["namespace"] == release.namespace


# -- TorchServe's series, through a ModelDeployment's own ServiceMonitor ------------------------------------------

# Stands in for TorchServe's metrics port: its three counters, growing at 10 requests/s, 2 of them answered 5xx,
# 20 ms each (the names and labels TorchServe's Prometheus mode exports).
TORCHSERVE_METRICS = """
import http.server, time
START = time.monotonic()
MODEL = '{model_name="cifar10",model_version="default",hostname="h"}'
class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        elapsed = time.monotonic() - START
        requests = int(10 * elapsed)
        body = (
            "# TYPE ts_inference_requests_total counter\\n"
            f"ts_inference_requests_total{MODEL} {requests}\\n"
            "# TYPE ts_inference_latency_microseconds counter\\n"
            f"ts_inference_latency_microseconds{MODEL} {requests * 20000}\\n"
            "# TYPE Requests5XX counter\\n"
            f'Requests5XX{{Level="Host",Hostname="h"}} {int(2 * elapsed)}\\n'
        ).encode()
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8082), Metrics).serve_forever()
"""


def test_the_model_alert_and_the_dashboard_read_torchserve_through_the_model_service_monitor(
    release: Release, prometheus: Prometheus
) -> None:
    """The series of a model's pods, scraped through the ServiceMonitor Canaria renders for it, carry what the
    chart's model alert and dashboard select on: `service` is the ModelDeployment's name, and the track label."""
    rule = next(o for o in rendered(release, "--set", "metrics.prometheusRule.enabled=true")
                if o["kind"] == "PrometheusRule")  # fmt: skip
    kubectl("apply", "-f", "-", input=yaml.safe_dump(rule))
    model = rendered_with_a_metrics_server(release.namespace, TORCHSERVE_METRICS, 8082)
    kubectl("apply", "-n", release.namespace, "-f", "-", input=yaml.safe_dump_all(model))

    def erring() -> dict[str, Any] | None:
        """The alert about this test's model (the rule sees every namespace's models: other tests' too)."""
        alerts = rule_states(prometheus, release).get("CanariaModelHighErrorRate", {}).get("alerts", [])
        return next((a for a in alerts if a["labels"]["namespace"] == release.namespace), None)

    alert = wait_for(erring, timeout=180, what="CanariaModelHighErrorRate on the model's 20 % of 5xx")
    assert alert["state"] in ("pending", "firing")  # for: 5m
    assert (alert["labels"]["name"], alert["labels"]["track"]) == ("cifar10", "stable")
    assert 15 <= float(alert["value"]) <= 25

    # The dashboard's panels per track; Grafana's $__rate_interval is 4 scrape intervals at least: 15s here.
    variables = {"namespace": release.namespace, "model": "cifar10", "__rate_interval": "15s"}
    expected = {"Requests per second by track": 10, "Error rate by track (5xx)": 20, "Mean latency by track": 20}
    for title, value in expected.items():
        (expr,) = (expr for panel_title, expr in panel_queries(dashboard()) if panel_title == title)

        def near(expr: str = expr, value: float = value) -> list[dict[str, Any]]:
            samples = prometheus.query(fill(expr, variables))
            return [s for s in samples if 0.8 * value <= float(s["value"][1]) <= 1.2 * value]

        (sample,) = wait_for(near, timeout=60, what=f"{title} at about {value}")
        assert sample["metric"]["serving_canaria_dev_track"] == "stable", (title, sample)
