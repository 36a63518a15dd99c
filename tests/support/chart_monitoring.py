"""The chart's monitoring assets as test data: the PromQL of its PrometheusRule and of its Grafana dashboard (with
Grafana's variables filled in), and promtool to parse and unit-test them. Used by the render tests (promtool only)
and by the cluster tests (the devcluster's real Prometheus)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "canaria"
DASHBOARD = CHART / "dashboards" / "canaria.json"
# Grafana's built-in variables the dashboard uses, as Grafana would fill them in for a query.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__range": "1h", "__interval": "30s"}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)$")

Object = dict[str, Any]


def promtool_binary() -> str:
    local = ROOT / ".devcluster" / "bin" / "promtool"
    if local.is_file():
        return str(local)
    found = shutil.which("promtool")
    if found:
        return found
    pytest.fail("promtool not found: looked for .devcluster/bin/promtool and on PATH. Run `make tools`.", pytrace=False)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool_binary(), *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def dashboard() -> Object:
    loaded: Object = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: Object) -> Iterator[Object]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(board: Object) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query target of every panel."""
    return [(panel["title"], target["expr"]) for panel in panels(board) for target in panel.get("targets", [])]


def variable_selectors(board: Object) -> list[tuple[str, str]]:
    """(variable name, series selector) of every label_values() variable: Grafana asks Prometheus for the
    series that selector matches."""
    found = []
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = _LABEL_VALUES.match(query.strip())
        assert match, f"variable {variable['name']}: not a label_values(selector, label) query: {query}"
        found.append((variable["name"], match["selector"]))
    return found


def fill(expr: str, values: Mapping[str, str]) -> str:
    """expr with Grafana's $name and ${name} replaced from values and GRAFANA_BUILTINS; an unknown one fails."""
    known = {**GRAFANA_BUILTINS, **values}

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in known, f"{expr}: no value for ${name}"
        return known[name]

    return _VARIABLE.sub(value, expr)


def rule_groups(prometheus_rule: Object) -> list[Object]:
    groups: list[Object] = prometheus_rule["spec"]["groups"]
    return groups


def alert_expressions(prometheus_rule: Object) -> dict[str, str]:
    return {rule["alert"]: rule["expr"] for group in rule_groups(prometheus_rule) for rule in group["rules"]}


def write_rule_file(path: Path, groups: list[Object]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def as_recording_rules(expressions: list[tuple[str, str]]) -> list[Object]:
    """Queries as one group of recording rules: `promtool check rules` then parses each of them."""
    rules = [
        {"record": f"canaria_dashboard:query_{index}", "expr": expr} for index, (_, expr) in enumerate(expressions)
    ]
    return [{"name": "dashboard-queries", "rules": rules}]
