"""The chart's alerts, unit-tested with `promtool test rules` (tests/unit/fixtures/chart_alerts_test.yaml): each
alert fires when it should, with its labels and annotations, and not on the series that look like it. The rules
are the chart's PrometheusRule as `helm template` renders it with the default alert values.

Needs promtool (`make tools` builds it into .devcluster/bin); without it these tests fail, they do not skip."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.support.chart_monitoring import promtool, rule_groups, write_rule_file
from tests.unit.test_chart_render import one, template

FIXTURE = Path(__file__).parent / "fixtures" / "chart_alerts_test.yaml"
ALERTS = {
    "CanariaOperatorDown",
    "CanariaReconcileErrors",
    "CanariaRolloutRolledBack",
    "CanariaRolloutStuck",
    "CanariaModelNotReady",
    "CanariaModelHighErrorRate",
}


def rendered_rules(tmp_path: Path) -> Path:
    objects = template(tmp_path, {"metrics": {"prometheusRule": {"enabled": True}}})
    return write_rule_file(tmp_path / "rules.yaml", rule_groups(one(objects, "PrometheusRule")))


def test_every_alert_has_promtool_tests() -> None:
    tested = {case["alertname"] for group in yaml.safe_load(FIXTURE.read_text())["tests"]
              for case in group.get("alert_rule_test", [])}  # fmt: skip
    assert tested == ALERTS
    for group in yaml.safe_load(FIXTURE.read_text())["tests"]:
        cases = group["alert_rule_test"]
        assert any(case["exp_alerts"] for case in cases), f"{group['name']}: nothing fires"
        assert any(not case["exp_alerts"] for case in cases), f"{group['name']}: never checks that it does not fire"


def test_alerts_with_promtool(tmp_path: Path) -> None:
    rendered_rules(tmp_path)
    shutil.copy(FIXTURE, tmp_path / "alerts_test.yaml")
    result = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_tests_can_fail(tmp_path: Path) -> None:
    """A rule that is wrong fails its promtool test: CanariaModelNotReady that fires on Ready models."""
    rules = rendered_rules(tmp_path)
    text = rules.read_text()
    broken = text.replace("(canaria_model_deployment_ready{", "(1 - canaria_model_deployment_ready{", 1)
    assert broken != text
    rules.write_text(broken)
    shutil.copy(FIXTURE, tmp_path / "alerts_test.yaml")
    result = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "CanariaModelNotReady" in result.stdout + result.stderr
