"""The operator's own Prometheus metrics: their definitions, and how one reconcile pass is recorded.

Everything is registered in this module's own CollectorRegistry (not prometheus-client's global one): the
HTTP endpoint (CANARIA_METRICS_PORT) serves exactly it, tests read it, and a new `OperatorMetrics` starts
from zero as a restarted operator does.

Per-ModelDeployment series live in one table, rendered at each scrape: when a pass finds the object gone,
`forget` drops every series that names it at once.

Rollout counters are derived from the transitions a pass wrote to status, i.e. its plan's Events, which the
rollout state machine emits once per transition and reconcile posts only with a changed status. A pass that
changes nothing counts nothing, and an operator restarted later finds the transition already in status, so
it never counts it again. The gauges are set from the status of every pass, changed or not, so a restarted
operator shows them again after one pass over each object.
"""

from __future__ import annotations

import collections
import datetime
import platform
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from canaria import __version__, schema
from canaria.analysis import Assessment, duration_seconds

Object = dict[str, Any]

RESULTS = ("success", "retry", "error")  # canaria_reconcile_total{result}
# Rollout Event reasons (canaria.rollout) that the counters follow.
STARTED = ("RolloutStarted", "RolloutRetried")
PROMOTED = "Promoted"
ENDED = ("RolledBack", "Aborted")  # the Event's reason is the phase the rollout ended in
# status.rollout.phase values (canaria.rollout.Phase).
UNDER_WAY = ("Progressing", "Waiting", "Paused", "Promoting")
DEADLINE_RUNS = ("Waiting", "Promoting")  # the phases in which rollout.py enforces progressDeadline
DEFAULT_PROGRESS_DEADLINE = "10m"  # the CRD's default (defaulted specs always carry one)
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_END_REASON = re.compile(r"\b(?:rolled back|aborted) \((\w+)\)")  # rollout.py's end(): "... rolled back (Reason): ..."


class RolloutEvent(Protocol):
    """What is read of a canaria.rollout.Event."""

    @property
    def reason(self) -> str: ...

    @property
    def message(self) -> str: ...


# -- pure: what one status and one pass's Events say ---------------------------------------------------------


@dataclass(frozen=True)
class Gauges:
    """The gauges of one ModelDeployment, from its status."""

    phase: str
    ready: bool
    progressing: bool  # a rollout is under way (paused included)
    deadline: float | None  # Unix time at which the rollout's progress deadline runs out, while it runs
    canary_weight: int  # percent of requests the canary takes (status.canaryWeight)
    check_values: tuple[tuple[str, str, float], ...] = ()  # (check, track, last measured value)


def gauges_of(spec: Mapping[str, Any], status: Mapping[str, Any]) -> Gauges:
    rollout = status.get("rollout") or {}
    ready: Mapping[str, Any] = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})
    return Gauges(
        phase=str(status.get("phase", "")),
        ready=ready.get("status") == "True",
        progressing=rollout.get("phase") in UNDER_WAY,
        deadline=deadline_of(spec, rollout),
        canary_weight=int(status.get("canaryWeight") or 0),
        check_values=tuple(check_values(rollout)),
    )


def deadline_of(spec: Mapping[str, Any], rollout: Mapping[str, Any]) -> float | None:
    """When the progress deadline runs out (Unix seconds): last progress + spec.rollout.progressDeadline, in
    the phases where it runs; None otherwise (no rollout, Progressing on schedule, Paused: frozen)."""
    progress_at = rollout.get("progressAt")
    if rollout.get("phase") not in DEADLINE_RUNS or not progress_at:
        return None
    limit = duration_seconds((spec.get("rollout") or {}).get("progressDeadline") or DEFAULT_PROGRESS_DEADLINE)
    return datetime.datetime.fromisoformat(progress_at).timestamp() + limit


def check_values(rollout: Mapping[str, Any]) -> Iterator[tuple[str, str, float]]:
    """(check, track, value) of the last analysis in status.rollout.checks: the canary's value and, for a
    check relative to the stable version, the stable value it was compared to. Status writes NaN and
    infinities as strings."""
    for check in rollout.get("checks") or []:
        for key, track in (("value", "canary"), ("stableValue", "stable")):
            if check.get(key) is not None:
                yield check["name"], track, float(check[key])


@dataclass(frozen=True)
class Transitions:
    """What one pass's rollout Events count."""

    started: int = 0
    promoted: int = 0
    rolled_back: tuple[str, ...] = ()  # the reason of each rollback or abort


def transitions(status: Mapping[str, Any], events: Iterable[RolloutEvent]) -> Transitions:
    """The rollouts a pass started, promoted and rolled back, from its plan's Events; `status` is the new
    status, whose status.rollout.reason says why the rollout ended."""
    rollout = status.get("rollout") or {}
    started = promoted = 0
    rolled_back = []
    for event in events:
        if event.reason in STARTED:
            started += 1
        elif event.reason == PROMOTED:
            promoted += 1
        elif event.reason in ENDED:
            rolled_back.append(end_reason(event, rollout))
    return Transitions(started, promoted, tuple(rolled_back))


def end_reason(event: RolloutEvent, rollout: Mapping[str, Any]) -> str:
    """Why a rollout ended: status.rollout.reason while status shows that end; when a newer version started
    in the same pass (status shows the new rollout), the reason the Event's message gives."""
    if rollout.get("phase") == event.reason and rollout.get("reason"):
        return str(rollout["reason"])
    match = _END_REASON.search(event.message)
    return match.group(1) if match else "Unknown"


# -- the table of per-object series ------------------------------------------------------------------------


@dataclass
class _Series:
    gauges: Gauges | None = None
    started: int = 0
    promoted: int = 0
    rolled_back: collections.Counter[str] = field(default_factory=collections.Counter)  # reason -> count
    checks: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)  # (check, verdict)


class ModelDeploymentSeries(Collector):
    """Every series labelled with a ModelDeployment, kept per object and rendered at each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], _Series] = {}

    def update(self, namespace: str, name: str, change: Callable[[_Series], None]) -> None:
        with self._lock:
            change(self._objects.setdefault((namespace, name), _Series()))

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((namespace, name), None)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            objects = {
                key: (s.gauges, s.started, s.promoted, dict(s.rolled_back), dict(s.checks))
                for key, s in self._objects.items()
            }
        ref = ["namespace", "name"]
        phases = GaugeMetricFamily(
            "canaria_model_deployments", "ModelDeployments in each phase (status.phase).", labels=["phase"]
        )
        ready = GaugeMetricFamily(
            "canaria_model_deployment_ready", "1 if the ModelDeployment's Ready condition is True, else 0.", labels=ref
        )
        progressing = GaugeMetricFamily(
            "canaria_rollout_progressing",
            "1 while a rollout is under way (Progressing, Waiting, Paused or Promoting), else 0.",
            labels=ref,
        )
        deadline = GaugeMetricFamily(
            "canaria_rollout_deadline_timestamp_seconds",
            "When the current rollout's progress deadline runs out (Unix time), while it runs (Waiting, Promoting).",
            labels=ref,
        )
        weight = GaugeMetricFamily(
            "canaria_canary_weight", "Percent of requests the canary takes (status.canaryWeight).", labels=ref
        )
        values = GaugeMetricFamily(
            "canaria_analysis_check_value",
            "Last value an analysis check measured (status.rollout.checks): the canary's, and the stable "
            "version's for a check relative to it.",
            labels=[*ref, "check", "track"],
        )
        started = CounterMetricFamily(
            "canaria_rollouts_started", "Rollouts started (a new version, or a retry of a failed one).", labels=ref
        )
        promoted = CounterMetricFamily("canaria_rollouts_promoted", "Rollouts that promoted their version.", labels=ref)
        rolled_back = CounterMetricFamily(
            "canaria_rollouts_rolled_back",
            "Rollouts rolled back or aborted, by status.rollout.reason.",
            labels=[*ref, "reason"],
        )
        checks = CounterMetricFamily(
            "canaria_analysis_checks",
            "Analysis checks evaluated, by outcome (Pass, Fail, NoData, Invalid).",
            labels=[*ref, "check", "verdict"],
        )
        by_phase = collections.Counter({phase: 0 for phase in schema.PHASES})
        for (namespace, name), (gauges, n_started, n_promoted, reasons, verdicts) in sorted(objects.items()):
            labels = [namespace, name]
            if gauges is not None:
                by_phase[gauges.phase] += 1
                ready.add_metric(labels, float(gauges.ready))
                progressing.add_metric(labels, float(gauges.progressing))
                if gauges.deadline is not None:
                    deadline.add_metric(labels, gauges.deadline)
                weight.add_metric(labels, gauges.canary_weight)
                for check, track, value in gauges.check_values:
                    values.add_metric([*labels, check, track], value)
            started.add_metric(labels, n_started)
            promoted.add_metric(labels, n_promoted)
            for reason, count in sorted(reasons.items()):
                rolled_back.add_metric([*labels, reason], count)
            for (check, verdict), count in sorted(verdicts.items()):
                checks.add_metric([*labels, check, verdict], count)
        for phase, count in sorted(by_phase.items()):
            phases.add_metric([phase], count)
        yield from (phases, ready, progressing, deadline, weight, values, started, promoted, rolled_back, checks)


# -- the operator's metrics -------------------------------------------------------------------------------------


class OperatorMetrics:
    """The operator's registry and what records into it. The module's METRICS is the operator's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        build = Gauge(
            "canaria_build_info",
            "Always 1: the operator's version and Python.",
            ["version", "python"],
            registry=self.registry,
        )
        build.labels(version=__version__, python=platform.python_version()).set(1)
        self.reconciles = Counter(
            "canaria_reconcile_total",
            "Reconcile passes by result: success; retry (the API did not answer, retried with back-off); "
            "error (anything else raised).",
            ["result"],
            registry=self.registry,
        )
        for result in RESULTS:
            self.reconciles.labels(result=result)  # present at 0, so rate() and alerts see them from the start
        self.durations = Histogram(
            "canaria_reconcile_duration_seconds",
            "Duration of one reconcile pass.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.api_errors = Counter(
            "canaria_api_request_errors_total",
            "Kubernetes API requests that failed, by HTTP method and status code (or unreachable).",
            ["verb", "code"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "canaria_queue_depth",
            "ModelDeployments with a reconcile pass running or waiting (a retry after a temporary failure included).",
            registry=self.registry,
        )
        self.objects = ModelDeploymentSeries()
        self._serving = threading.Lock()
        self._server: WSGIServer | None = None
        self.registry.register(self.objects)

    # -- operator-wide --

    def record_pass(self, result: str, seconds: float) -> None:
        self.reconciles.labels(result=result).inc()
        self.durations.observe(seconds)

    def record_api_error(self, verb: str, code: int | str) -> None:
        self.api_errors.labels(verb=verb, code=str(code)).inc()

    def watch_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    # -- per ModelDeployment --

    def record_transitions(
        self, namespace: str, name: str, status: Mapping[str, Any], events: Sequence[RolloutEvent]
    ) -> None:
        """Count a pass's rollout transitions; call once its new status is written."""
        counted = transitions(status, events)

        def add(series: _Series) -> None:
            series.started += counted.started
            series.promoted += counted.promoted
            series.rolled_back.update(counted.rolled_back)

        self.objects.update(namespace, name, add)

    def record_state(self, namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Set the object's gauges from the status a pass ended with (written or unchanged)."""
        gauges = gauges_of(spec, status)

        def put(series: _Series) -> None:
            series.gauges = gauges

        self.objects.update(namespace, name, put)

    def record_analysis(self, namespace: str, name: str, assessment: Assessment) -> None:
        """Count each check of an analysis the operator ran, by its outcome."""

        def add(series: _Series) -> None:
            series.checks.update((check.name, str(check.outcome)) for check in assessment.checks)

        self.objects.update(namespace, name, add)

    def forget(self, namespace: str, name: str) -> None:
        """The ModelDeployment is gone: drop every series that names it."""
        self.objects.forget(namespace, name)

    # -- reading and serving --

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's value as a scrape would show it (None: no such series)."""
        return self.registry.get_sample_value(name, dict(labels or {}))

    def serve(self, address: str, port: int) -> WSGIServer:
        """Serve /metrics from a daemon thread, once: a second call returns the server already running."""
        with self._serving:
            if self._server is None:
                self._server, _thread = start_http_server(port, addr=address, registry=self.registry)
            return self._server

    def stop(self) -> None:
        with self._serving:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None


METRICS = OperatorMetrics()
record_pass = METRICS.record_pass
record_api_error = METRICS.record_api_error
watch_queue = METRICS.watch_queue
record_transitions = METRICS.record_transitions
record_state = METRICS.record_state
record_analysis = METRICS.record_analysis
forget = METRICS.forget
