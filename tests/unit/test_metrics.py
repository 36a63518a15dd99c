"""The operator's metrics, recorded from the statuses and Events real passes produce (rollout.decide, then
status.derive over reconcile.facts_of), and read back from the registry the endpoint serves."""

from __future__ import annotations

import copy
import datetime
import http.server
import threading
import urllib.request
from typing import Any

import pytest
from kubernetes import client

from canaria import analysis, metrics, reconcile, render, rollout, schema, status
from canaria.kube import Kube, Unavailable
from canaria.metrics import OperatorMetrics
from canaria.reconcile import Observation
from canaria.render import STABLE, Settings
from canaria.rollout import TrackStatus
from tests.support.processes import free_port
from tests.unit.conftest import model_deployment

NS, NAME = "models", "cifar10"
REF = {"namespace": NS, "name": NAME}
T0 = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
SETTINGS = Settings()


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


class Prometheus:
    """The analysis' numbers for a pure test: 100 canary requests, the canary's error rate as given, mean
    latency 11 ms on the canary and 10 ms on the stable track."""

    def __init__(self, error_rate: float) -> None:
        self.error_rate = error_rate

    def query(self, promql: str) -> float:
        canary = f'{analysis.TRACK_LABEL}="canary"' in promql
        if "increase(ts_inference_requests_total" in promql:
            return 100.0
        if "Requests5XX" in promql:
            return self.error_rate if canary else 0.0
        return 11.0 if canary else 10.0


def observed_world(md: dict[str, Any], plan: rollout.Plan) -> Observation:
    """The stable Deployment of the plan, rolled out with every pod ready."""
    children = reconcile.desired_children(md, plan, SETTINGS, True)
    name = render.deployment_name(md, STABLE)
    (deployment,) = [c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"] == name]
    replicas = plan.stable.replicas
    live = copy.deepcopy(deployment)
    live["metadata"]["generation"] = 1
    live["status"] = {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
    }
    return Observation(children={("Deployment", name): live}, service_monitor_api=True)


class Passes:
    """Reconcile passes over one ModelDeployment, recorded as reconcile records them (into `metrics`)."""

    def __init__(self, md: dict[str, Any], recorder: OperatorMetrics | None = None) -> None:
        self.md = md
        self.status: dict[str, Any] = {}
        self.metrics = recorder or OperatorMetrics()
        self.events: list[str] = []

    def stable_serving(self, state: dict[str, Any]) -> TrackStatus:
        stable_model = state.get("stableModel") or self.md["spec"]["model"]
        return TrackStatus(rollout.model_hash(stable_model), self.md["spec"]["serving"]["replicas"])

    def run(
        self,
        seconds: float,
        canary_ready: int = 0,
        stable_ready: tuple[str, int] | None = None,
        error_rate: float = 0.0,
    ) -> rollout.Plan:
        """One pass; by default the stable model runs on all its pods, Ready."""
        spec, old = self.md["spec"], self.status
        state = old.get("rollout") or {}
        now = at(seconds)
        assessment = None
        if rollout.analysis_due(spec, state, now):
            canary_model = state.get("canaryModel") or {}
            stable_model = state.get("stableModel") or {}
            interval = analysis.duration_seconds(spec["rollout"]["analysis"]["interval"])

            def target(track: str, model: dict[str, Any]) -> analysis.Target:
                return analysis.Target(NS, NAME, "cifar10", track, model["version"], interval)

            checks = spec["rollout"]["analysis"]
            measured = analysis.measure(
                Prometheus(error_rate),
                analysis.checks_of(checks),
                target("canary", canary_model),
                target("stable", stable_model),
            )
            assessment = analysis.assess(measured, checks)
            self.metrics.record_analysis(NS, NAME, assessment)
        canary_hash = rollout.model_hash(state.get("canaryModel") or spec["model"])
        observation = rollout.Observation(
            stable=TrackStatus(*stable_ready) if stable_ready else self.stable_serving(state),
            canary=TrackStatus(canary_hash, canary_ready),
            analysis=assessment,
        )
        plan = rollout.decide(spec, state, observation, now)
        facts = reconcile.facts_of(self.md, observed_world(self.md, plan), plan, [], [], SETTINGS)
        new = status.derive(old, facts, now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        # Every pass, not only one that changed status (as reconcile does): a pass without transitions must
        # count nothing by itself.
        self.metrics.record_transitions(NS, NAME, new, plan.events)
        self.metrics.record_state(NS, NAME, self.md["spec"], new)
        self.status = new
        self.events += [event.reason for event in plan.events]
        return plan

    def edit(self, **spec: Any) -> None:
        for section, values in spec.items():
            self.md["spec"][section].update(values)

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.metrics.value(metric, labels)


def serving_two_pods() -> Passes:
    passes = Passes(model_deployment(serving={"replicas": 2}))
    passes.run(0)
    assert passes.status["phase"] == "Serving"
    return passes


V2 = {"version": "2.0", "storageUri": "https://models.example/cifar10-2.tar.gz"}


def test_a_serving_model_is_ready_with_no_rollout():
    passes = serving_two_pods()
    assert passes.value("canaria_model_deployments", phase="Serving") == 1
    assert passes.value("canaria_model_deployments", phase="Progressing") == 0
    assert passes.value("canaria_model_deployment_ready", **REF) == 1
    assert passes.value("canaria_rollout_progressing", **REF) == 0
    assert passes.value("canaria_canary_weight", **REF) == 0
    assert passes.value("canaria_rollout_deadline_timestamp_seconds", **REF) is None
    assert passes.value("canaria_rollouts_started_total", **REF) == 0


def test_a_rollout_that_fails_its_analysis_counts_once_started_and_once_rolled_back():
    passes = serving_two_pods()
    passes.edit(model=V2)
    passes.run(1)  # started; the canary pod is not ready yet
    assert passes.status["phase"] == "Waiting"
    assert passes.value("canaria_rollouts_started_total", **REF) == 1
    assert passes.value("canaria_rollout_progressing", **REF) == 1
    assert passes.value("canaria_model_deployment_ready", **REF) == 0  # a rollout under way is not Ready
    assert passes.value("canaria_model_deployments", phase="Waiting") == 1
    assert passes.value("canaria_model_deployments", phase="Serving") == 0
    progress_at = datetime.datetime.fromisoformat(passes.status["rollout"]["progressAt"])
    deadline = passes.value("canaria_rollout_deadline_timestamp_seconds", **REF)
    assert deadline == progress_at.timestamp() + 600  # the CRD's default progressDeadline, 10m
    for seconds in (2, 3):  # passes that see the same world change nothing, and count nothing
        assert passes.run(seconds).events == ()
    assert passes.value("canaria_rollouts_started_total", **REF) == 1

    passes.run(10, canary_ready=1)  # the step's pod is ready: its bake starts, 1 canary pod beside 2 stable
    assert passes.status["phase"] == "Progressing"
    assert passes.value("canaria_canary_weight", **REF) == 33 == passes.status["canaryWeight"]
    assert passes.value("canaria_rollout_deadline_timestamp_seconds", **REF) is None  # not enforced on schedule

    passes.run(40, canary_ready=1, error_rate=5.0)  # the first analysis: ErrorRate fails once (limit 2)
    assert passes.status["phase"] == "Progressing"
    pairs = [("error-rate", "canary"), ("error-rate", "stable"), ("latency", "canary"), ("latency", "stable")]
    values = {(c, t): passes.value("canaria_analysis_check_value", **REF, check=c, track=t) for c, t in pairs}
    assert values == {
        ("error-rate", "canary"): 5.0,
        ("error-rate", "stable"): None,  # an absolute threshold compares with no stable value
        ("latency", "canary"): 11.0,
        ("latency", "stable"): 10.0,
    }
    assert passes.value("canaria_rollouts_rolled_back_total", **REF, reason="AnalysisFailed") is None

    passes.run(70, canary_ready=1, error_rate=4.0)  # the second failure in a row rolls it back
    assert passes.status["phase"] == "RolledBack"
    assert passes.status["rollout"]["reason"] == "AnalysisFailed"
    assert passes.value("canaria_rollouts_rolled_back_total", **REF, reason="AnalysisFailed") == 1
    assert passes.value("canaria_analysis_checks_total", **REF, check="error-rate", verdict="Fail") == 2
    assert passes.value("canaria_analysis_checks_total", **REF, check="latency", verdict="Pass") == 2
    assert passes.value("canaria_analysis_checks_total", **REF, check="error-rate", verdict="Pass") is None
    assert passes.value("canaria_analysis_check_value", **REF, check="error-rate", track="canary") == 4.0
    assert passes.value("canaria_rollout_progressing", **REF) == 0
    assert passes.value("canaria_model_deployment_ready", **REF) == 0  # Stalled: the user must act
    assert passes.value("canaria_model_deployments", phase="RolledBack") == 1
    assert passes.value("canaria_canary_weight", **REF) == 0
    passes.run(100)
    assert passes.value("canaria_rollouts_rolled_back_total", **REF, reason="AnalysisFailed") == 1
    assert passes.value("canaria_rollouts_started_total", **REF) == 1
    assert passes.value("canaria_rollouts_promoted_total", **REF) == 0


def test_a_restarted_operator_shows_the_gauges_again_and_recounts_nothing():
    passes = serving_two_pods()
    passes.edit(model=V2)
    passes.run(1)
    passes.run(602)  # no ready canary pod within the progress deadline
    assert passes.status["rollout"]["reason"] == "ProgressDeadlineExceeded"
    assert passes.value("canaria_rollouts_rolled_back_total", **REF, reason="ProgressDeadlineExceeded") == 1

    restarted = Passes(passes.md, OperatorMetrics())
    restarted.status = passes.status
    restarted.run(700)
    assert restarted.status == passes.status
    assert restarted.value("canaria_rollouts_rolled_back_total", **REF, reason="ProgressDeadlineExceeded") is None
    assert restarted.value("canaria_rollouts_started_total", **REF) == 0
    assert restarted.value("canaria_model_deployments", phase="RolledBack") == 1
    assert restarted.value("canaria_model_deployment_ready", **REF) == 0


def test_a_promotion_is_counted_and_its_deadline_shown_while_the_stable_track_rolls():
    passes = serving_two_pods()
    passes.edit(model=V2)
    passes.run(1)
    passes.run(10, canary_ready=1)
    passes.edit(rollout={"promote": "2.0"})
    passes.run(20, canary_ready=1)
    assert passes.status["phase"] == "Promoting"
    deadline = passes.value("canaria_rollout_deadline_timestamp_seconds", **REF)
    assert deadline == at(20).timestamp() + 600
    v2 = rollout.model_hash(passes.md["spec"]["model"])
    passes.run(30, canary_ready=1, stable_ready=(v2, 2))
    assert passes.status["phase"] == "Serving" and passes.status["stableVersion"] == "2.0"
    assert passes.value("canaria_rollouts_promoted_total", **REF) == 1
    assert passes.value("canaria_rollouts_started_total", **REF) == 1
    assert passes.value("canaria_rollout_progressing", **REF) == 0
    assert passes.value("canaria_rollout_deadline_timestamp_seconds", **REF) is None
    assert passes.value("canaria_model_deployment_ready", **REF) == 1


def test_an_abort_counts_as_a_rollback_with_reason_aborted_and_a_retry_as_a_start():
    passes = serving_two_pods()
    passes.edit(model=V2)
    passes.run(1)
    passes.edit(rollout={"abort": "2.0"})
    passes.run(5)
    assert passes.status["phase"] == "Aborted"
    assert passes.value("canaria_rollouts_rolled_back_total", **REF, reason="Aborted") == 1
    passes.edit(rollout={"abort": None, "retry": "2.0"})
    passes.run(10)
    assert "RolloutRetried" in passes.events
    assert passes.value("canaria_rollouts_started_total", **REF) == 2


def test_a_rollout_that_ends_in_the_pass_a_newer_version_starts_is_counted_with_its_own_reason():
    passes = serving_two_pods()
    passes.edit(model=V2)
    passes.run(1)
    passes.run(10, canary_ready=1)
    passes.edit(rollout={"promote": "2.0"})
    passes.run(20, canary_ready=1)  # Promoting: the stable track never gets a pod of 2.0 ready
    passes.edit(model={"version": "3.0"})
    plan = passes.run(700, canary_ready=1)
    assert [event.reason for event in plan.events][:2] == ["RolledBack", "RolloutStarted"]
    assert passes.status["rollout"]["phase"] != "RolledBack"  # status shows 3.0's rollout
    assert passes.value("canaria_rollouts_rolled_back_total", **REF, reason="ProgressDeadlineExceeded") == 1
    assert passes.value("canaria_rollouts_started_total", **REF) == 2


def test_a_deleted_model_deployment_leaves_no_series_behind():
    passes = serving_two_pods()
    passes.edit(model=V2)
    passes.run(1)
    passes.metrics.record_state("other", "kept", passes.md["spec"], passes.status)
    passes.metrics.forget(NS, NAME)
    named = [
        sample
        for family in passes.metrics.registry.collect()
        for sample in family.samples
        if sample.labels.get("name") == NAME
    ]
    assert named == []
    assert passes.value("canaria_model_deployments", phase="Waiting") == 1  # only the other one
    assert passes.value("canaria_model_deployment_ready", namespace="other", name="kept") == 0


def test_status_and_rollout_vocabulary_matches_the_state_machine():
    assert set(metrics.UNDER_WAY) == {str(phase) for phase in rollout.UNDER_WAY}
    assert metrics.DEFAULT_PROGRESS_DEADLINE == rollout.DEFAULT_PROGRESS_DEADLINE
    assert set(metrics.ENDED) == {str(phase) for phase in rollout.ENDED_BADLY}
    assert {str(phase) for phase in rollout.Phase} - {"Succeeded"} <= set(schema.PHASES)


def test_build_info_and_the_endpoint_serve_this_registry():
    recorder = OperatorMetrics()
    port = free_port()
    server = recorder.serve("127.0.0.1", port)
    try:
        assert recorder.serve("127.0.0.1", port) is server  # started before the election, and again by Kopf
        recorder.record_pass("success", 0.2)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        recorder.stop()
    assert 'canaria_build_info{python="' in text and 'version="0.1.0"' in text
    assert 'canaria_reconcile_total{result="success"} 1.0' in text
    assert 'canaria_reconcile_duration_seconds_bucket{le="0.25"} 1.0' in text
    assert 'canaria_reconcile_duration_seconds_bucket{le="0.1"} 0.0' in text


# -- hooks in reconcile and kube (the module's own METRICS) --------------------------------------------------


def value(metric: str, /, **labels: str) -> float:
    return metrics.METRICS.value(metric, labels) or 0.0


def test_reconcile_counts_each_pass_by_result_and_the_queue_holds_a_waiting_retry(monkeypatch):
    before = {result: value("canaria_reconcile_total", result=result) for result in metrics.RESULTS}
    passes_before = value("canaria_reconcile_duration_seconds_count")
    monkeypatch.setattr(reconcile, "RETRY_FIRST_SECONDS", 30)
    outcomes = iter([Unavailable("GET /x: 503"), {"phase": "Serving"}, KeyError("a bug")])

    def one_pass(kube, namespace, name, settings):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(reconcile, "_reconcile", one_pass)
    reconcile.reconcile(None, "ns", "m", SETTINGS)  # fails temporarily: a retry waits
    assert value("canaria_queue_depth") == 1
    reconcile.reconcile(None, "ns", "m", SETTINGS)  # runs now, replacing the retry
    assert value("canaria_queue_depth") == 0
    with pytest.raises(KeyError):
        reconcile.reconcile(None, "ns", "m", SETTINGS)
    counted = {result: value("canaria_reconcile_total", result=result) - before[result] for result in metrics.RESULTS}
    assert counted == {"success": 1, "retry": 1, "error": 1}
    assert value("canaria_reconcile_duration_seconds_count") - passes_before == 3


class Answers(http.server.BaseHTTPRequestHandler):
    """An API server that answers every request with the status its namespace names."""

    def do_GET(self) -> None:
        code = int(self.path.split("/")[4])  # /api/v1/namespaces/<code>/pods
        body = b'{"message": "m"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def api(port: int) -> Kube:
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = 0
    return Kube(client.ApiClient(configuration))


def test_api_errors_are_counted_by_verb_and_code_where_they_are_mapped():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    labels = [("GET", "503"), ("GET", "404"), ("GET", "unreachable")]
    before = {label: value("canaria_api_request_errors_total", verb=label[0], code=label[1]) for label in labels}
    try:
        kube = api(server.server_address[1])
        with pytest.raises(Unavailable):
            kube.list("v1", "Pod", "503", {})
        assert kube.get("v1", "Pod", "404", "gone") is None  # a read of what is gone is an answer, not an error
        with pytest.raises(Unavailable):
            api(free_port()).get("v1", "Pod", "ns", "p")
    finally:
        server.shutdown()
        server.server_close()
    counted = {label: value("canaria_api_request_errors_total", verb=label[0], code=label[1]) - before[label]
               for label in labels}  # fmt: skip
    assert counted == {("GET", "503"): 1, ("GET", "404"): 0, ("GET", "unreachable"): 1}
