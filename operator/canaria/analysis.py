"""Canary analysis: the PromQL each check runs, and the pure judgement of what came back.

One analysis interval goes: `measure` asks a `Provider` (canaria.prometheus in the operator) for the canary's
request count and each check's value (and the stable version's, for a relative threshold), then `assess`
turns those numbers into one verdict with per-check evidence. `measure` is the only function here that does
I/O, and only through the provider; everything else is pure.

Queries (the canary and the stable track are queried alike, each with its own track and version):
- `ErrorRate`, percent: `100 * rate(Requests5XX) / rate(ts_inference_requests_total)` over the interval.
  TorchServe counts Requests2XX/4XX/5XX per server for every answer on its ports, health probes and
  scrapes included, so their sum is not the number of inference requests: probes would dilute the rate and
  satisfy minRequests on an idle canary. ts_inference_requests_total counts each inference request as it
  arrives, failed ones included. A track without any 5xx has no Requests5XX series yet: that counts as 0.
- `MeanLatency`, milliseconds: `rate(ts_inference_latency_microseconds) / rate(ts_inference_requests_total)
  / 1000` (TorchServe's latency is a counter).
- A track's pods are selected by the target labels Canaria's ServiceMonitor gives them: `namespace`, the pod
  labels `serving_canaria_dev_track` and `serving_canaria_dev_version`, and `pod` (the pods of Deployment
  `<name>-<track>`), because two models in one namespace often share a version string.
- Templates (`query:`) use the variables in VARIABLES, written `{{name}}`; an unknown variable, or a `{{`
  left open, is an error naming it, never an empty string.

Judgement of one check (`assess`), first match wins:
| what came back                                    | outcome  | counts as                         |
|---------------------------------------------------|----------|-----------------------------------|
| the template or Prometheus rejected the query     | Invalid  | Wait: fix the query               |
| Prometheus unreachable (any query of the check)   | NoData   | Wait, whatever noData says        |
| fewer canary requests than minRequests            | NoData   | noData: Wait, Fail or Pass        |
| no sample, or NaN (0/0: no requests)              | NoData   | noData                            |
| relative check and the stable track has no data   | NoData   | noData                            |
| value above max, below min, or above stable+X %   | Fail     | Fail                              |
| otherwise                                         | Pass     | Pass                              |
The interval's verdict: Fail if any check counts as Fail, else Wait if any counts as Wait, else Pass. An
unreachable Prometheus says nothing about the canary, so it never fails nor passes a check: it holds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

VARIABLES = ("namespace", "name", "model", "track", "version", "interval")
TRACK_LABEL = "serving_canaria_dev_track"
VERSION_LABEL = "serving_canaria_dev_version"
BUILTINS = ("ErrorRate", "MeanLatency")


# -- what a query can return ------------------------------------------------------------------------------


class Missing(StrEnum):
    NO_SAMPLES = "NoSamples"  # the query matched no series, or gave NaN
    UNREACHABLE = "Unreachable"  # Prometheus did not answer (or not as Prometheus): says nothing about the canary
    REJECTED = "Rejected"  # the query is wrong: Prometheus refused it, or it is not one number


@dataclass(frozen=True)
class NoData:
    """A query that gave no number, and why."""

    cause: Missing
    detail: str


class Provider(Protocol):
    """Where numbers come from: one instant query, one number or a reason why there is none."""

    def query(self, promql: str) -> float | NoData: ...


# -- durations ----------------------------------------------------------------------------------------------

DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """Seconds of a duration as the CRD writes them ("30s", "1m30s", "500ms")."""
    parts = DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 30s, 1m30s, 500ms)")
    return sum(int(number) * UNIT_SECONDS[unit] for number, unit in parts)


def promql_duration(seconds: float) -> str:
    """The PromQL range of `seconds`, in one unit so Prometheus accepts it whatever the CRD's spelling."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


# -- queries --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Whose numbers a query asks for: one track of one ModelDeployment, over one interval."""

    namespace: str
    name: str  # the ModelDeployment
    model: str  # the TorchServe model name
    track: str  # "stable" or "canary"
    version: str
    interval_s: float

    def variables(self) -> dict[str, str]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "model": self.model,
            "track": self.track,
            "version": self.version,
            "interval": promql_duration(self.interval_s),
        }


class TemplateError(ValueError):
    """A query template that cannot be rendered: the message names the culprit."""


PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def render_query(template: str, variables: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            known = ", ".join("{{" + known + "}}" for known in variables)
            raise TemplateError(f"unknown variable {{{{{name}}}}} (known: {known})")
        return variables[name]

    rendered = PLACEHOLDER.sub(substitute, template)
    if "{{" in rendered:
        raise TemplateError("a {{ without its closing }}")
    return rendered


def template_problems(metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    """What is wrong with the checks' templates, one message each, for status before any query runs."""
    problems = []
    for index, metric in enumerate(metrics):
        try:
            render_query(metric.get("query", ""), dict.fromkeys(VARIABLES, ""))
        except TemplateError as error:
            problems.append(f"spec.rollout.analysis.metrics[{index}] ({metric['name']}).query: {error}")
    return problems


def _string(value: str) -> str:
    """A PromQL double-quoted string literal's content."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _regex_literal(text: str) -> str:
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)


def track_selector(target: Target) -> str:
    # Deployment pods are <deployment>-<template hash>-<suffix>; a long name can lose the last dash to the
    # API server's cut of generated names, hence the optional group.
    pods = _regex_literal(f"{target.name}-{target.track}-") + "[a-z0-9]+(-[a-z0-9]+)?"
    return ", ".join(
        [
            f'namespace="{_string(target.namespace)}"',
            f'pod=~"{_string(pods)}"',
            f'{TRACK_LABEL}="{_string(target.track)}"',
            f'{VERSION_LABEL}="{_string(target.version)}"',
        ]
    )


def _rate(metric: str, target: Target) -> str:
    return f"sum(rate({metric}{{{track_selector(target)}}}[{promql_duration(target.interval_s)}]))"


def builtin_query(builtin: str, target: Target) -> str:
    requests = _rate("ts_inference_requests_total", target)
    if builtin == "ErrorRate":
        return f"100 * ({_rate('Requests5XX', target)} or vector(0)) / {requests}"
    if builtin == "MeanLatency":
        return f"{_rate('ts_inference_latency_microseconds', target)} / {requests} / 1000"
    raise ValueError(f"unknown builtin {builtin!r} (known: {', '.join(BUILTINS)})")


def request_count_query(target: Target) -> str:
    selector = track_selector(target)
    return f"sum(increase(ts_inference_requests_total{{{selector}}}[{promql_duration(target.interval_s)}]))"


def check_query(metric: Mapping[str, Any], target: Target) -> str:
    """The PromQL of one check for one track; TemplateError for a template that cannot be rendered."""
    if metric.get("builtin"):
        return builtin_query(metric["builtin"], target)
    return render_query(metric["query"], target.variables())


# -- measuring (I/O through the provider) -----------------------------------------------------------------


@dataclass(frozen=True)
class CheckData:
    """One check's numbers over one interval."""

    name: str
    query: str  # the canary's query as sent ("" when it could not be rendered)
    canary: float | NoData
    stable_query: str = ""
    stable: float | NoData | None = None  # None: the check compares with no stable value


@dataclass(frozen=True)
class Measurements:
    requests_query: str
    requests: float | NoData  # inference requests the canary received in the interval
    checks: tuple[CheckData, ...]


def measure(provider: Provider, metrics: Sequence[Mapping[str, Any]], canary: Target, stable: Target) -> Measurements:
    """Run the interval's queries. When Prometheus does not answer the first one, the others are not sent
    (each would wait for its own timeout) and every check says why it has no data."""
    requests_query = request_count_query(canary)
    requests = provider.query(requests_query)
    down = requests if isinstance(requests, NoData) and requests.cause is Missing.UNREACHABLE else None

    def ask(metric: Mapping[str, Any], target: Target) -> tuple[str, float | NoData]:
        try:
            query = check_query(metric, target)
        except TemplateError as error:
            return "", NoData(Missing.REJECTED, f"query template: {error}")
        return query, down or provider.query(query)

    checks = []
    for metric in metrics:
        query, value = ask(metric, canary)
        data = CheckData(metric["name"], query, value)
        if metric.get("maxIncreaseOverStablePercent") is not None:
            stable_query, stable_value = ask(metric, stable)
            data = CheckData(metric["name"], query, value, stable_query, stable_value)
        checks.append(data)
    return Measurements(requests_query, requests, tuple(checks))


# -- judging (pure) -------------------------------------------------------------------------------------------


class Outcome(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    NO_DATA = "NoData"
    INVALID = "Invalid"


class Verdict(StrEnum):
    PASS = "Pass"  # every check passed (or passes by noData: Pass)
    FAIL = "Fail"  # a check failed (or has no data under noData: Fail)
    WAIT = "Wait"  # no failure, but a check cannot tell yet: hold the step


def _json_number(value: float | None) -> float | str | None:
    """A number status can hold: JSON has no NaN or infinity."""
    if value is None or math.isfinite(value):
        return None if value is None else round(value, 6)
    return str(value)


@dataclass(frozen=True)
class CheckResult:
    name: str
    outcome: Outcome
    counted: Verdict
    message: str
    query: str
    value: float | None = None
    stable_value: float | None = None
    threshold: str = ""
    stable_query: str = ""

    def evidence(self) -> dict[str, Any]:
        """The check as status shows it: plain JSON, empty fields left out."""
        fields = {
            "name": self.name,
            "outcome": str(self.outcome),
            "counted": str(self.counted),
            "message": self.message,
            "query": self.query,
            "value": _json_number(self.value),
            "stableValue": _json_number(self.stable_value),
            "threshold": self.threshold,
            "stableQuery": self.stable_query,
        }
        return {key: value for key, value in fields.items() if value not in (None, "")}


@dataclass(frozen=True)
class Assessment:
    verdict: Verdict
    checks: tuple[CheckResult, ...]
    message: str


def _number(value: float | NoData) -> float | None:
    return value if isinstance(value, float | int) and not math.isnan(value) else None


def _no_data(value: float | NoData | None) -> NoData | None:
    if isinstance(value, NoData):
        return value
    if isinstance(value, float) and math.isnan(value):
        return NoData(Missing.NO_SAMPLES, "the query gave NaN (0/0: no requests in the interval)")
    return None


def _thresholds(metric: Mapping[str, Any], stable: float | None) -> tuple[list[tuple[str, float]], str]:
    """(limits as (kind, bound), their description) of a check; the relative one needs the stable value."""
    limits: list[tuple[str, float]] = []
    words = []
    if metric.get("max") is not None:
        limits.append(("max", float(metric["max"])))
        words.append(f"<= {metric['max']:g}")
    if metric.get("min") is not None:
        limits.append(("min", float(metric["min"])))
        words.append(f">= {metric['min']:g}")
    increase = metric.get("maxIncreaseOverStablePercent")
    if increase is not None and stable is not None:
        bound = stable * (1 + increase / 100)
        limits.append(("max", bound))
        words.append(f"<= {bound:g} (stable {stable:g} + {increase:g}%)")
    return limits, " and ".join(words)


def judge(metric: Mapping[str, Any], data: CheckData, too_few_requests: str | None, no_data: Verdict) -> CheckResult:
    """One check over one interval (the table in the module's docstring)."""
    name = metric["name"]
    canary, stable = _no_data(data.canary), _no_data(data.stable)
    value, stable_value = _number(data.canary), None if data.stable is None else _number(data.stable)
    limits, threshold = _thresholds(metric, stable_value)
    base = {
        "name": name,
        "query": data.query,
        "value": value,
        "stable_value": stable_value,
        "threshold": threshold,
        "stable_query": data.stable_query,
    }

    def result(outcome: Outcome, counted: Verdict, message: str) -> CheckResult:
        return CheckResult(outcome=outcome, counted=counted, message=f"{name}: {message}", **base)

    missing = [item for item in (canary, stable) if item is not None]
    for item in missing:
        if item.cause is Missing.REJECTED:
            return result(Outcome.INVALID, Verdict.WAIT, item.detail)
    for item in missing:
        if item.cause is Missing.UNREACHABLE:
            return result(Outcome.NO_DATA, Verdict.WAIT, f"no data, holding: {item.detail}")
    policy = f"(noData: {no_data})"
    if too_few_requests:
        return result(Outcome.NO_DATA, no_data, f"no data {policy}: {too_few_requests}")
    if canary is not None:
        return result(Outcome.NO_DATA, no_data, f"no data {policy}: {canary.detail}")
    if stable is not None:
        return result(Outcome.NO_DATA, no_data, f"no data {policy}: the stable version: {stable.detail}")
    assert value is not None
    broken = [(kind, bound) for kind, bound in limits if (value > bound if kind == "max" else value < bound)]
    if broken:
        return result(Outcome.FAIL, Verdict.FAIL, f"{value:g} is not {threshold}")
    return result(Outcome.PASS, Verdict.PASS, f"{value:g} is {threshold}")


def checks_of(analysis: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """spec.rollout.analysis.metrics. The CRD defaults them with the whole analysis object only: an analysis
    written without metrics has none."""
    metrics: list[Mapping[str, Any]] = analysis.get("metrics", [])
    return metrics


def assess(measurements: Measurements, analysis: Mapping[str, Any]) -> Assessment:
    """The interval's verdict from its measurements and spec.rollout.analysis (defaulted)."""
    no_data = Verdict(analysis["noData"])
    requests = measurements.requests
    min_requests = analysis["minRequests"]
    too_few = None
    # An unreachable Prometheus is no count at all: each check then carries that outcome itself.
    unreachable = isinstance(requests, NoData) and requests.cause is Missing.UNREACHABLE
    if min_requests > 0 and not unreachable:
        count = _number(requests) or 0.0
        if count < min_requests:
            too_few = f"the canary served {count:g} requests in the interval, fewer than minRequests {min_requests}"
    by_name = {data.name: data for data in measurements.checks}
    checks = tuple(
        judge(metric, by_name[metric["name"]], too_few, no_data)
        for metric in checks_of(analysis)
        if metric["name"] in by_name
    )
    counted = {check.counted for check in checks}
    verdict = Verdict.FAIL if Verdict.FAIL in counted else Verdict.WAIT if Verdict.WAIT in counted else Verdict.PASS
    deciding = [check.message for check in checks if check.counted is verdict]
    return Assessment(verdict, checks, "; ".join(deciding))
