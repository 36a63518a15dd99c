"""Analysis: strict query templates, the builtin queries, and the judgement of one interval (assess)."""

from __future__ import annotations

import math

import pytest

from canaria import analysis
from canaria.analysis import CheckData, Measurements, Missing, NoData, Outcome, Target, TemplateError, Verdict

CANARY = Target("models", "cifar10", "cifar10", "canary", "2.0", 30)
STABLE = Target("models", "cifar10", "cifar10", "stable", "1.0", 30)
UNREACHABLE = NoData(Missing.UNREACHABLE, "Prometheus at http://prometheus:9090 did not answer: refused")
EMPTY = NoData(Missing.NO_SAMPLES, "no series matched")


def settings(*metrics: dict, min_requests: int = 10, no_data: str = "Wait") -> dict:
    return {"metrics": list(metrics), "minRequests": min_requests, "noData": no_data, "failureLimit": 2}


ERROR_RATE = {"name": "error-rate", "builtin": "ErrorRate", "max": 1}
LATENCY = {"name": "latency", "builtin": "MeanLatency", "maxIncreaseOverStablePercent": 20}


def measured(*checks: CheckData, requests: float | NoData = 100.0) -> Measurements:
    return Measurements("requests", requests, checks)


# -- durations and templates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds", "promql"),
    [
        ("30s", 30, "30s"),
        ("1m30s", 90, "90s"),
        ("500ms", 0.5, "500ms"),
        ("1h", 3600, "3600s"),
        ("1s500ms", 1.5, "1500ms"),
    ],
)
def test_durations_read_as_the_crd_writes_them_and_render_in_one_unit(text, seconds, promql):
    assert analysis.duration_seconds(text) == seconds
    assert analysis.promql_duration(seconds) == promql


@pytest.mark.parametrize("text", ["", "30", "s", "1m 30s", "-5s", "1d"])
def test_a_malformed_duration_is_an_error(text):
    with pytest.raises(ValueError, match="not a duration"):
        analysis.duration_seconds(text)


def test_every_documented_variable_renders():
    template = "{{namespace}}|{{ name }}|{{model}}|{{track}}|{{version}}|{{interval}}"
    assert analysis.render_query(template, CANARY.variables()) == "models|cifar10|cifar10|canary|2.0|30s"


def test_an_unknown_variable_is_an_error_naming_it_never_an_empty_string():
    with pytest.raises(TemplateError, match=r"unknown variable \{\{pod\}\}"):
        analysis.render_query('up{pod="{{pod}}"}', CANARY.variables())


def test_an_unclosed_variable_is_an_error():
    with pytest.raises(TemplateError, match="without its closing"):
        analysis.render_query('up{namespace="{{namespace"}', CANARY.variables())


def test_template_problems_name_the_check_and_the_variable():
    metrics = [
        ERROR_RATE,
        {"name": "custom", "query": 'sum(x{namespace="{{namespace}}"})'},
        {"name": "typo", "query": 'sum(rate(x{ns="{{namepsace}}"}[{{interval}}]))'},
    ]
    assert analysis.template_problems(metrics) == [
        "spec.rollout.analysis.metrics[2] (typo).query: unknown variable {{namepsace}} (known: {{namespace}}, "
        "{{name}}, {{model}}, {{track}}, {{version}}, {{interval}})"
    ]


def test_builtin_queries_select_one_track_of_one_model_deployment():
    error_rate = analysis.builtin_query("ErrorRate", CANARY)
    selector = (
        'namespace="models", pod=~"cifar10-canary-[a-z0-9]+(-[a-z0-9]+)?", '
        'serving_canaria_dev_track="canary", serving_canaria_dev_version="2.0"'
    )
    assert error_rate == (
        f"100 * (sum(rate(Requests5XX{{{selector}}}[30s])) or vector(0)) / "
        f"sum(rate(ts_inference_requests_total{{{selector}}}[30s]))"
    )
    assert analysis.builtin_query("MeanLatency", STABLE) == (
        "sum(rate(ts_inference_latency_microseconds{%s}[30s])) / sum(rate(ts_inference_requests_total{%s}[30s])) / 1000"
        % ((analysis.track_selector(STABLE),) * 2)
    )
    assert analysis.request_count_query(CANARY) == f"sum(increase(ts_inference_requests_total{{{selector}}}[30s]))"


def test_a_name_with_a_dot_is_matched_literally_in_the_pod_regex():
    dotted = Target("models", "resnet.v2", "resnet", "canary", "2.0", 30)
    assert 'pod=~"resnet\\\\.v2-canary-' in analysis.track_selector(dotted)


class Recorder:
    """A provider that answers from a table and records what it was asked."""

    def __init__(self, answers: dict[str, float | NoData], default: float | NoData = 1.0) -> None:
        self.answers, self.default, self.asked = answers, default, []

    def query(self, promql: str) -> float | NoData:
        self.asked.append(promql)
        return self.answers.get(promql, self.default)


def test_measure_asks_the_stable_track_only_for_relative_checks():
    provider = Recorder({analysis.request_count_query(CANARY): 50.0})
    result = analysis.measure(provider, [ERROR_RATE, LATENCY], CANARY, STABLE)
    assert result.requests == 50.0
    assert [c.name for c in result.checks] == ["error-rate", "latency"]
    assert result.checks[0].stable is None and result.checks[0].stable_query == ""
    assert result.checks[1].stable_query == analysis.builtin_query("MeanLatency", STABLE)
    assert len(provider.asked) == 4  # requests, error rate, latency of each track


def test_measure_stops_asking_when_prometheus_is_unreachable():
    provider = Recorder({}, default=UNREACHABLE)
    result = analysis.measure(provider, [ERROR_RATE, LATENCY], CANARY, STABLE)
    assert provider.asked == [analysis.request_count_query(CANARY)]
    assert all(check.canary == UNREACHABLE for check in result.checks)


def test_measure_reports_a_template_error_as_a_rejected_query_without_sending_it():
    provider = Recorder({})
    result = analysis.measure(provider, [{"name": "typo", "query": "x{{nmae}}", "max": 1}], CANARY, STABLE)
    assert result.checks[0].query == ""
    assert isinstance(result.checks[0].canary, NoData) and result.checks[0].canary.cause is Missing.REJECTED
    assert "{{nmae}}" in result.checks[0].canary.detail
    assert len(provider.asked) == 1  # only the request count


# -- assess -------------------------------------------------------------------------------------------------


def one(metric: dict, data: CheckData, **options) -> analysis.CheckResult:
    result = analysis.assess(measured(data, requests=options.pop("requests", 100.0)), settings(metric, **options))
    assert len(result.checks) == 1
    return result.checks[0]


@pytest.mark.parametrize(
    ("metric", "value", "outcome"),
    [
        ({"name": "e", "max": 1}, 0.5, Outcome.PASS),
        ({"name": "e", "max": 1}, 1.0, Outcome.PASS),  # the bound itself passes
        ({"name": "e", "max": 1}, 1.01, Outcome.FAIL),
        ({"name": "e", "min": 0.9}, 0.95, Outcome.PASS),
        ({"name": "e", "min": 0.9}, 0.5, Outcome.FAIL),
        ({"name": "e", "min": 0.2, "max": 0.8}, 0.9, Outcome.FAIL),
        ({"name": "e", "max": 1}, math.inf, Outcome.FAIL),
    ],
)
def test_absolute_thresholds(metric, value, outcome):
    result = one(metric, CheckData("e", "q", value))
    assert result.outcome is outcome
    assert result.counted is Verdict(outcome.value)


@pytest.mark.parametrize(
    ("canary", "stable", "outcome"),
    [(11.9, 10.0, Outcome.PASS), (12.0, 10.0, Outcome.PASS), (12.1, 10.0, Outcome.FAIL), (0.0, 0.0, Outcome.PASS)],
)
def test_relative_threshold_compares_with_the_stable_track_over_the_same_window(canary, stable, outcome):
    result = one(LATENCY, CheckData("latency", "q", canary, "sq", stable))
    assert result.outcome is outcome
    assert result.value == canary and result.stable_value == stable
    assert result.evidence()["stableQuery"] == "sq"


def test_relative_threshold_with_a_stable_value_of_zero_fails_any_increase():
    assert one(LATENCY, CheckData("latency", "q", 0.001, "sq", 0.0)).outcome is Outcome.FAIL


def test_evidence_holds_query_value_threshold_and_verdict():
    result = one(LATENCY, CheckData("latency", "canary-query", 300.0, "stable-query", 100.0))
    assert result.evidence() == {
        "name": "latency",
        "outcome": "Fail",
        "counted": "Fail",
        "message": "latency: 300 is not <= 120 (stable 100 + 20%)",
        "query": "canary-query",
        "value": 300.0,
        "stableValue": 100.0,
        "threshold": "<= 120 (stable 100 + 20%)",
        "stableQuery": "stable-query",
    }


def test_evidence_is_plain_json_even_for_infinite_values():
    evidence = one(ERROR_RATE, CheckData("error-rate", "q", math.inf)).evidence()
    assert evidence["value"] == "inf"


@pytest.mark.parametrize(
    ("policy", "counted"), [("Wait", Verdict.WAIT), ("Fail", Verdict.FAIL), ("Pass", Verdict.PASS)]
)
def test_fewer_requests_than_min_requests_is_no_data_under_the_policy(policy, counted):
    result = one(ERROR_RATE, CheckData("error-rate", "q", 50.0), requests=9.0, no_data=policy)
    assert result.outcome is Outcome.NO_DATA and result.counted is counted
    assert "9 requests in the interval, fewer than minRequests 10" in result.message


def test_min_requests_zero_judges_whatever_came_back():
    assert one(ERROR_RATE, CheckData("error-rate", "q", 0.0), requests=EMPTY, min_requests=0).outcome is Outcome.PASS


@pytest.mark.parametrize(
    ("policy", "counted"), [("Wait", Verdict.WAIT), ("Fail", Verdict.FAIL), ("Pass", Verdict.PASS)]
)
def test_no_samples_and_nan_are_no_data_under_the_policy(policy, counted):
    for value in (EMPTY, math.nan):
        result = one(ERROR_RATE, CheckData("error-rate", "q", value), no_data=policy)
        assert (result.outcome, result.counted) == (Outcome.NO_DATA, counted)


def test_a_relative_check_without_stable_data_is_no_data():
    result = one(LATENCY, CheckData("latency", "q", 10.0, "sq", EMPTY), no_data="Fail")
    assert (result.outcome, result.counted) == (Outcome.NO_DATA, Verdict.FAIL)
    assert "the stable version" in result.message


@pytest.mark.parametrize("policy", ["Wait", "Fail", "Pass"])
def test_unreachable_prometheus_holds_whatever_the_policy_and_says_so(policy):
    for data in (
        CheckData("latency", "q", UNREACHABLE, "sq", UNREACHABLE),
        CheckData("latency", "q", 10.0, "sq", UNREACHABLE),
    ):
        result = one(LATENCY, data, requests=UNREACHABLE, no_data=policy)
        assert (result.outcome, result.counted) == (Outcome.NO_DATA, Verdict.WAIT)
        assert "did not answer" in result.message


@pytest.mark.parametrize("policy", ["Wait", "Pass"])
def test_a_rejected_query_never_passes(policy):
    rejected = NoData(Missing.REJECTED, "Prometheus rejected the query: bad_data: parse error")
    result = one(ERROR_RATE, CheckData("error-rate", "q", rejected), no_data=policy)
    assert (result.outcome, result.counted) == (Outcome.INVALID, Verdict.WAIT)
    assert "parse error" in result.message


def test_the_interval_fails_on_any_failure_waits_on_any_wait_else_passes():
    rules = settings(ERROR_RATE, {"name": "custom", "query": "x", "min": 1})
    verdict = analysis.assess(measured(CheckData("error-rate", "q", 5.0), CheckData("custom", "x", EMPTY)), rules)
    assert verdict.verdict is Verdict.FAIL and verdict.message == "error-rate: 5 is not <= 1"
    verdict = analysis.assess(measured(CheckData("error-rate", "q", 0.0), CheckData("custom", "x", EMPTY)), rules)
    assert verdict.verdict is Verdict.WAIT and verdict.message.startswith("custom: no data (noData: Wait)")
    verdict = analysis.assess(measured(CheckData("error-rate", "q", 0.0), CheckData("custom", "x", 2.0)), rules)
    assert verdict.verdict is Verdict.PASS and [c.outcome for c in verdict.checks] == [Outcome.PASS] * 2
