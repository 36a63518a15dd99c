"""The chart's monitoring assets, rendered without a cluster: the operator's metrics Service and ServiceMonitor,
the PrometheusRule and the Grafana dashboard ConfigMap, each gated by values; every PromQL expression of the
rules and of the dashboard parsed by promtool. (The alerts' behaviour: test_chart_alerts.py. The same assets in a
real Prometheus: tests/integration/test_chart_monitoring.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chart_monitoring import (
    DASHBOARD,
    alert_expressions,
    as_recording_rules,
    dashboard,
    fill,
    panel_queries,
    panels,
    promtool,
    rule_groups,
    variable_selectors,
    write_rule_file,
)
from tests.unit.test_chart_render import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    Object,
    helm,
    one,
    operator_container,
    template,
    template_error,
)

ALERTS = [
    "CanariaOperatorDown",
    "CanariaReconcileErrors",
    "CanariaRolloutRolledBack",
    "CanariaRolloutStuck",
    "CanariaModelNotReady",
    "CanariaModelHighErrorRate",
]
EVERYTHING_ON = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                             "dashboard": {"enabled": True}}}  # fmt: skip


def kinds(objects: list[Object]) -> list[str]:
    return sorted(o["kind"] for o in objects)


@pytest.fixture
def everything(tmp_path: Path) -> list[Object]:
    return template(tmp_path, EVERYTHING_ON)


def test_helm_lint_strict_passes_with_everything_on(tmp_path: Path) -> None:
    result = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
                  values=EVERYTHING_ON, tmp=tmp_path)  # fmt: skip
    assert result.returncode == 0, f"helm lint failed:\n{result.stdout}\n{result.stderr}"


# -- the metrics Service and the ServiceMonitor ---------------------------------------------------------------


def test_by_default_only_the_metrics_service(tmp_path: Path) -> None:
    objects = template(tmp_path)
    assert not {"ServiceMonitor", "PrometheusRule", "ConfigMap"} & set(kinds(objects))
    service = one(objects, "Service")
    assert service["metadata"]["name"] == "canaria-metrics"
    assert service["metadata"]["namespace"] == NAMESPACE
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items(), "the Service selects the operator's pods"
    off = template(tmp_path, {"metrics": {"service": {"enabled": False}}})
    assert "Service" not in kinds(off)


def test_the_service_reaches_the_operators_metrics_port(tmp_path: Path) -> None:
    """The Service's targetPort is the container port named `metrics`, on metrics.port, where the operator
    listens (CANARIA_METRICS_PORT)."""
    objects = template(tmp_path, {"metrics": {"port": 9102}})
    assert one(objects, "Service")["spec"]["ports"][0]["port"] == 9102
    container = operator_container(objects)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports.get("metrics") == 9102, container["ports"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.get("CANARIA_METRICS_PORT") == "9102"


def test_service_monitor(everything: list[Object], tmp_path: Path) -> None:
    monitor = one(everything, "ServiceMonitor")
    service = one(everything, "Service")
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "30s"
    # The per-ModelDeployment series keep their own `namespace` (the rules and dashboard read it).
    assert endpoint["honorLabels"] is True
    assert "scrapeTimeout" not in endpoint and "relabelings" not in endpoint
    relabel = {"action": "replace", "targetLabel": "cluster", "replacement": "eu-1"}
    custom = one(
        template(
            tmp_path,
            {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}, "interval": "10s",
                                            "scrapeTimeout": "5s", "relabelings": [relabel],
                                            "metricRelabelings": [relabel]}}},
        ),
        "ServiceMonitor",
    )  # fmt: skip
    assert custom["metadata"]["labels"]["release"] == "kps"
    assert custom["metadata"]["labels"]["app.kubernetes.io/instance"] == "canaria"
    (endpoint,) = custom["spec"]["endpoints"]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("10s", "5s")
    assert endpoint["relabelings"] == endpoint["metricRelabelings"] == [relabel]


def test_a_service_monitor_needs_the_service(tmp_path: Path) -> None:
    error = template_error(tmp_path, {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})
    assert "metrics.serviceMonitor.enabled needs metrics.service.enabled" in error


@pytest.mark.parametrize(
    ("values", "mentioned"),
    [
        ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "interval"),
        ({"metrics": {"port": 0}}, "port"),
        ({"metrics": {"prometheusRule": {"alerts": {"CanariaOperatorDwn": {"enabled": False}}}}}, "CanariaOperatorDwn"),
        ({"metrics": {"prometheusRule": {"alerts": {"CanariaModelHighErrorRate": {"percent": 500}}}}}, "percent"),
        ({"metrics": {"dashboard": {"label": {"a": "b"}}}}, "label"),
    ],
)
def test_schema_rejects_bad_monitoring_values(tmp_path: Path, values: dict[str, Any], mentioned: str) -> None:
    assert mentioned in template_error(tmp_path, values)


# -- the PrometheusRule -----------------------------------------------------------------------------------------


def test_prometheus_rule_has_every_alert(everything: list[Object], tmp_path: Path) -> None:
    rule = one(everything, "PrometheusRule")
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert [group["name"] for group in rule_groups(rule)] == ["canaria.operator", "canaria.rollouts", "canaria.models"]
    alerts = {r["alert"]: r for group in rule_groups(rule) for r in group["rules"]}
    assert sorted(alerts) == sorted(ALERTS)
    assert {name: a["labels"]["severity"] for name, a in alerts.items()} == {
        "CanariaOperatorDown": "critical",
        "CanariaReconcileErrors": "warning",
        "CanariaRolloutRolledBack": "warning",
        "CanariaRolloutStuck": "warning",
        "CanariaModelNotReady": "warning",
        "CanariaModelHighErrorRate": "critical",
    }
    assert "for" not in alerts["CanariaRolloutRolledBack"]  # it fires for its window, once
    for alert in alerts.values():
        assert {"summary", "description"} <= set(alert["annotations"])
    # The operator's series are picked by the job the chart's ServiceMonitor gives them (its Service's name).
    for name in ALERTS[:-1]:
        assert 'job="canaria-metrics"' in alerts[name]["expr"], name
    assert 'namespace="canaria-system"' in alerts["CanariaOperatorDown"]["expr"]


def test_alert_values(tmp_path: Path) -> None:
    rule = one(
        template(
            tmp_path,
            {
                "metrics": {
                    "prometheusRule": {
                        "enabled": True,
                        "labels": {"release": "kps"},
                        "alertLabels": {"team": "ml"},
                        "operatorJob": "canaria-operator",
                        "alerts": {
                            "CanariaOperatorDown": {"severity": "page", "for": "2m"},
                            "CanariaModelHighErrorRate": {"percent": 2.5, "window": "10m", "minRequestsPerSecond": 1},
                            "CanariaRolloutStuck": {"enabled": False},
                        },
                    }
                }
            },
        ),
        "PrometheusRule",
    )
    assert rule["metadata"]["labels"]["release"] == "kps"
    alerts = {r["alert"]: r for group in rule_groups(rule) for r in group["rules"]}
    assert "CanariaRolloutStuck" not in alerts
    assert alerts["CanariaOperatorDown"]["labels"] == {"severity": "page", "team": "ml"}
    assert alerts["CanariaOperatorDown"]["for"] == "2m"
    assert all(a["labels"]["team"] == "ml" for a in alerts.values())
    assert 'job="canaria-operator"' in alerts["CanariaReconcileErrors"]["expr"]
    errors = alerts["CanariaModelHighErrorRate"]["expr"]
    assert "[10m]" in errors and "> 2.5" in errors and ">= 1" in errors


def test_groups_without_an_enabled_alert_are_left_out(tmp_path: Path) -> None:
    off = {name: {"enabled": False} for name in ALERTS}
    only_down = template(
        tmp_path,
        {"metrics": {"prometheusRule": {"enabled": True, "alerts": {**off, "CanariaOperatorDown": {"enabled": True}}}}},
    )
    assert [g["name"] for g in rule_groups(one(only_down, "PrometheusRule"))] == ["canaria.operator"]
    nothing = template(tmp_path, {"metrics": {"prometheusRule": {"enabled": True, "alerts": off}}})
    assert "PrometheusRule" not in kinds(nothing), "no empty PrometheusRule"


def test_promtool_accepts_the_rules(everything: list[Object], tmp_path: Path) -> None:
    """`promtool check rules`: the expressions parse, the annotation templates parse, no duplicate rules."""
    rules = write_rule_file(tmp_path / "rules.yaml", rule_groups(one(everything, "PrometheusRule")))
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout, result.stdout
    bad = write_rule_file(tmp_path / "bad.yaml", [{"name": "x", "rules": [{"alert": "X", "expr": "sum(rate(up[5m])"}]}])
    assert promtool("check", "rules", str(bad)).returncode != 0, "promtool must reject a broken expression"


# -- the Grafana dashboard -------------------------------------------------------------------------------------


def test_dashboard_config_map(everything: list[Object], tmp_path: Path) -> None:
    config_map = one(everything, "ConfigMap")
    assert config_map["metadata"]["name"] == "canaria-dashboard"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["canaria.json"]) == dashboard() == json.loads(DASHBOARD.read_text())
    moved = one(
        template(
            tmp_path,
            {"metrics": {"dashboard": {"enabled": True, "namespace": "grafana", "labels": {"dashboards": "ml"},
                                       "annotations": {"grafana_folder": "Canaria"}}}},
        ),
        "ConfigMap",
    )  # fmt: skip
    assert moved["metadata"]["namespace"] == "grafana"
    assert moved["metadata"]["labels"]["dashboards"] == "ml"
    assert moved["metadata"]["labels"]["grafana_dashboard"] == "1", "Helm merges maps: set it to null to drop it"
    assert moved["metadata"]["annotations"] == {"grafana_folder": "Canaria"}


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] == "canaria" and board["title"] == "Canaria"
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    names = [variable["name"] for variable in board["templating"]["list"]]
    assert names == ["datasource", "job", "namespace", "model"]
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']}: no query"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("description"), f"{panel['title']}: say what it shows"
    titles = {panel["title"] for panel in panels(board)}
    for wanted in ("Requests per second by track", "Error rate by track (5xx)", "Mean latency by track",
                   "Canary weight", "ModelDeployments by phase", "Reconcile passes by result", "Reconcile duration",
                   "Queue depth"):  # fmt: skip
        assert wanted in titles
    # Grid: no two panels overlap.
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(board):
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        assert grid["x"] + grid["w"] <= 24


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Every panel query and variable selector, with Grafana's variables filled in, parsed by promtool (as
    recording rules: `promtool check rules` parses each expression)."""
    board = dashboard()
    variables = {"job": "canaria-metrics", "namespace": "models", "model": "cifar10"}
    queries = [(title, fill(expr, variables)) for title, expr in panel_queries(board)]
    queries += [(f"${name}", fill(selector, variables)) for name, selector in variable_selectors(board)]
    assert len(queries) > 20
    rules = write_rule_file(tmp_path / "dashboard.yaml", as_recording_rules(queries))
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout, result.stdout


def test_dashboard_reads_the_series_the_rules_read(everything: list[Object]) -> None:
    """The dashboard and the alerts read the same metric names (a renamed metric breaks both or neither)."""
    expressions = alert_expressions(one(everything, "PrometheusRule")).values()
    dashboard_text = " ".join(expr for _, expr in panel_queries(dashboard()))
    for metric in ("canaria_reconcile_total", "canaria_rollouts_rolled_back_total", "canaria_model_deployment_ready",
                   "ts_inference_requests_total", "Requests5XX"):  # fmt: skip
        assert any(metric in expr for expr in expressions) and metric in dashboard_text, metric


def test_every_alert_setting_is_documented_with_its_default() -> None:
    """The README's Alerts table names each alert of the schema, its severity and every setting with its default
    from values.yaml (the generic values table stops at metrics.prometheusRule.alerts)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    alerts_schema = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]["alerts"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"]["alerts"]
    assert sorted(alerts_schema["properties"]) == sorted(defaults) == sorted(ALERTS)
    table = (CHART / "README.md").read_text().split("### Alerts", 1)[1].split("###", 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines() if line.startswith("| `")}
    for name, settings in defaults.items():
        assert name in rows, f"{name} is not in the README's Alerts table"
        assert f"`{settings['severity']}`" in rows[name], name
        for key, value in settings.items():
            if key not in ("enabled", "severity"):
                assert f"`{key}: {value}`" in rows[name], f"{name}: {key}: {value} is not documented"
