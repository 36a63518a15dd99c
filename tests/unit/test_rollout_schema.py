"""The rollout's API additions: defaults that reach every analysis, and the template variables the CRD admits."""

from __future__ import annotations

from canaria import analysis, schema, spec


def defaulted_rollout(rollout: dict) -> dict:
    md = {"spec": {"model": {"version": "1", "storageUri": "https://a/b.mar"}, "rollout": rollout}}
    return spec.defaulted(md)["spec"]["rollout"]


def test_an_analysis_written_without_metrics_gets_the_default_checks():
    rollout = defaulted_rollout({"analysis": {"interval": "10s"}})
    assert [m["builtin"] for m in rollout["analysis"]["metrics"]] == ["ErrorRate", "MeanLatency"]
    assert defaulted_rollout({"analysis": {"metrics": []}})["analysis"]["metrics"] == []


def test_progress_deadline_defaults_to_ten_minutes():
    assert defaulted_rollout({})["progressDeadline"] == "10m"


def test_the_crd_admits_exactly_the_variables_the_analysis_renders():
    assert schema.VARIABLE_NAMES == analysis.VARIABLES


def test_new_phases_are_in_the_status_enum():
    assert {"Waiting", "Aborted"} <= set(schema.PHASES)
