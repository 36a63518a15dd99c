"""Rollouts on the live data plane, one outcome each: the operator, TorchServe pods run by the node agent,
Prometheus configured by the Prometheus Operator from Canaria's ServiceMonitor, Traefik for GatewayAPI mode,
and steady load from inside the pod network. In every case the stable version answers every request sent to
it while the rollout runs.

1. a good version promoted through every step of an HTTPRoute, the split following the route's weights;
2. a version 300 ms slower rolled back by MeanLatency relative to the stable version;
3. a version whose model cannot load rolled back at the progress deadline;
4. a canary that gets no traffic: the analysis waits and says so, then the deadline rolls it back;
5. Prometheus stopped mid-analysis: the rollout holds, says Prometheus is unreachable, and continues once it
   is back.
"""

from __future__ import annotations

import datetime
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import Cluster, gateway
from devcluster.podnet import PodNetwork
from devcluster.traffic import GATEWAY, Load, run
from tests.integration.conftest import Operator, fresh_namespace, get_json, running, wait_for
from tests.support.stats import binomial_within

from .conftest import READY_TIMEOUT_S, local_volume, serving_model
from .rollouts import (
    PREDICT_PATH,
    SLOW_HANDLER,
    UNLOADABLE_HANDLER,
    StatusWatch,
    events,
    failures,
    gateway_load,
    good_source,
    handler_model,
    handler_source,
    labels_answered,
    predictions,
    prometheus_url,
    replace_model,
    service_load,
    stable_pod,
    top_k_source,
)
from .test_serving import apply_md, serving_pods, wait_ready

PREFIX = "e2s"  # this module's operator watches e2s-*: other full-loop operators watch e2e-* and e2r-*
ERROR_RATE = {"name": "error-rate", "builtin": "ErrorRate", "max": 1}
SCRAPE_EVERY_5S = {"serviceMonitor": {"interval": "5s"}}
ANALYSIS_INTERVAL = "15s"  # three scrapes: rate() always has two samples in the window
GOOD_MODEL = serving_model()["spec"]["model"]
SPLIT_REQUESTS = 400
CANARY_STARTS_S = READY_TIMEOUT_S  # packaging and TorchServe's start, on a machine shared with other tests


@pytest.fixture(scope="module")
def scenario_operator(crd_installed: None) -> Iterator[Operator]:
    with running(Operator(log_name="operator-e2e-scenarios.log", namespaces=f"{PREFIX}-*")) as started:
        yield started


@pytest.fixture
def scenario_namespace(cluster: Cluster, scenario_operator: Operator) -> Iterator[str]:
    with fresh_namespace(PREFIX) as name:
        yield name


def analysis(cluster: Cluster, metrics: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """spec.rollout.analysis against the devcluster's Prometheus, short intervals."""
    return {
        "interval": ANALYSIS_INTERVAL,
        "failureLimit": 2,
        "minRequests": 3,
        "prometheusUrl": prometheus_url(cluster),
        "metrics": metrics,
        **settings,
    }


def serve_stable(namespace: str, models: Path, rollout: dict[str, Any], **sections: Any) -> None:
    """Version 1.0 from models/cifar10 (a volume of this machine), Ready, scraped every 5 s."""
    local_volume(namespace, "models", models)
    apply_md(namespace, serving_model(rollout=rollout, monitoring=SCRAPE_EVERY_5S, **sections))
    wait_ready(namespace, "cifar10")


def moment(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp)


def event_time(event: dict[str, Any]) -> datetime.datetime:
    return moment(event.get("lastTimestamp") or event["eventTime"])


def assert_stable_answered_everything(results: list[Any]) -> list[Any]:
    """Every request that reached a stable pod succeeded; returns them (Service mode: the pod is known)."""
    stable = [result for result in results if "-stable-" in result.pod]
    assert stable, "no request reached a stable pod: the test proves nothing"
    failed = failures(stable)
    assert not failed, f"{len(failed)} of {len(stable)} requests to stable pods failed: {failed[:5]}"
    return stable


# -- 1. GatewayAPI: a good version promoted through every step ---------------------------------------------------


def route_weights(namespace: str) -> dict[str, int]:
    route = get_json("-n", namespace, "httproute", "cifar10")
    return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}


def through_gateway(network: PodNetwork, host: str, count: int) -> list[Any]:
    load = Load(count=count, duration_s=60, path=PREDICT_PATH, method="POST", body=predictions(1).body,
                headers={"Host": host})  # fmt: skip
    return run(load, GATEWAY, network).results


def test_a_good_version_is_promoted_through_every_step_of_an_httproute(
    cluster: Cluster, scenario_namespace: str, pod_network: PodNetwork, model_source: Path, tmp_path: Path
) -> None:
    namespace = scenario_namespace
    good_source(model_source, tmp_path)
    top_k_source(model_source, tmp_path, "top4", k=4)  # version 2.0: four labels per answer where 1.0 gives three
    host = f"cifar10.{namespace}.test"
    latency = {"name": "latency", "builtin": "MeanLatency", "maxIncreaseOverStablePercent": 100}
    rollout = {
        "steps": [{"weight": 25, "pause": "40s"}, {"weight": 75, "pause": "20s"}],
        "progressDeadline": "3m",
        "analysis": analysis(cluster, [ERROR_RATE, latency]),
    }
    parent = {"name": gateway.GATEWAY_NAME, "namespace": gateway.GATEWAY_NAMESPACE}
    traffic = {"mode": "GatewayAPI", "gateway": {"parentRefs": [parent], "hostnames": [host]}}
    serve_stable(namespace, tmp_path, rollout, traffic=traffic)
    wait_for(lambda: all(r.ok for r in through_gateway(pod_network, host, 5)), timeout=60, what="1.0 through Traefik")
    watch = StatusWatch(namespace)
    started = time.monotonic()

    with gateway_load(pod_network, host) as load:
        replace_model(namespace, {**GOOD_MODEL, "version": "2.0", "storageUri": "pvc://models/top4"})
        watch.until(lambda s: s.get("canaryWeight") == 25, CANARY_STARTS_S + 60, "step 1 at 25%")
        stable, canary = "cifar10-stable", "cifar10-canary"
        assert route_weights(namespace) == {stable: 75, canary: 25}
        # Traefik applies a route some moments after the operator wrote it: on once 2.0 answers through it.
        wait_for(
            lambda: 4 in {labels_answered(r) for r in through_gateway(pod_network, host, 8)},
            timeout=30,
            what="Traefik to send 2.0 its share",
        )
        split = through_gateway(pod_network, host, SPLIT_REQUESTS)
        after = watch.poll()
        assert route_weights(namespace) == {stable: 75, canary: 25} and after.get("canaryWeight") == 25, after

        promoted = watch.until(
            lambda s: s.get("phase") == "Serving" and s.get("stableVersion") == "2.0", 300, "2.0 promoted"
        )
        assert route_weights(namespace) == {stable: 100, canary: 0}
        # The last 1.0 pod drains as the stable Deployment's rolling update ends: soon only 2.0 answers.
        promoted_at = time.monotonic()
        wait_for(
            lambda: {labels_answered(r) for r in through_gateway(pod_network, host, 20)} == {4},
            timeout=60,
            what="only 2.0 to answer",
        )
        drained_s = time.monotonic() - promoted_at
    elapsed = time.monotonic() - started

    assert not failures(split), failures(split)[:5]
    by_labels = [labels_answered(result) for result in split]
    assert set(by_labels) == {3, 4}, by_labels
    assert binomial_within(by_labels.count(4), SPLIT_REQUESTS, 0.25), f"{by_labels.count(4)} of {SPLIT_REQUESTS} to 2.0"
    assert promoted["rollout"]["phase"] == "Succeeded", promoted["rollout"]
    steps = sorted(event["message"].split(":")[0] for event in events(namespace, "StepStarted"))
    assert steps == ["step 1 of 2", "step 2 of 2"], steps
    # Through the Gateway a failed request names no pod: none may fail at all.
    results = load.results()
    assert not failures(results), f"{len(failures(results))} of {len(results)} requests failed: {failures(results)[:5]}"
    answered = {labels_answered(result) for result in results}
    assert answered == {3, 4}, answered
    print(
        f"\n{len(results)} requests through Traefik, all answered; step 1 split {by_labels.count(4)}/{SPLIT_REQUESTS} "
        f"to 2.0 at weight 25; promoted {elapsed:.0f}s after the edit, only 2.0 answered {drained_s:.1f}s later; "
        f"statuses {watch.seen}"
    )


# -- 2. MeanLatency relative to stable ---------------------------------------------------------------------------


def test_a_version_300ms_slower_is_rolled_back_by_mean_latency_relative_to_stable(
    cluster: Cluster, scenario_namespace: str, pod_network: PodNetwork, model_source: Path, tmp_path: Path
) -> None:
    namespace = scenario_namespace
    good_source(model_source, tmp_path)
    handler_source(model_source, tmp_path, "slow", SLOW_HANDLER)
    latency = {"name": "latency", "builtin": "MeanLatency", "maxIncreaseOverStablePercent": 50}
    rollout = {
        "steps": [{"weight": 50, "pause": "3m"}],  # longer than the test: only the analysis can end the step
        "progressDeadline": "3m",
        "analysis": analysis(cluster, [latency]),
    }
    serve_stable(namespace, tmp_path, rollout)
    watch = StatusWatch(namespace)

    with service_load(cluster, pod_network, namespace, rate_per_s=4) as load:
        replace_model(namespace, handler_model("slow", "2.0"))
        rolled_back = watch.until(lambda s: s.get("phase") == "RolledBack", CANARY_STARTS_S + 120, "2.0 rolled back")
        time.sleep(10)  # the stable version keeps answering while the canary's pod goes

    assert rolled_back["rollout"]["reason"] == "AnalysisFailed", rolled_back["rollout"]
    (check,) = rolled_back["rollout"]["checks"]
    assert check["name"] == "latency" and check["outcome"] == "Fail", check
    assert check["value"] >= 300 and check["value"] > 1.5 * check["stableValue"], check
    assert rolled_back["stableVersion"] == "1.0" and rolled_back["canaryWeight"] == 0
    results = load.results()
    assert_stable_answered_everything(results)
    canary = [result for result in results if "-canary-" in result.pod and result.ok]
    assert canary, "no request reached the canary: the test proves nothing"
    stable_median = statistics.median(r.latency_s for r in results if "-stable-" in r.pod)
    assert statistics.median(r.latency_s for r in canary) >= 0.3 > stable_median
    print(f"\nlatency check: canary {check['value']:.1f} ms, stable {check['stableValue']:.1f} ms; {watch.seen}")


# -- 3. a model that never loads ----------------------------------------------------------------------------------


def canary_pods(namespace: str) -> list[dict[str, Any]]:
    pods = serving_pods(namespace, "cifar10")
    return [pod for pod in pods if pod["metadata"]["labels"].get("serving.canaria.dev/track") == "canary"]


def packaged_but_not_ready(namespace: str) -> bool:
    """The canary's pod packaged its model (the init container exited 0) and TorchServe runs, not Ready."""
    for pod in canary_pods(namespace):
        inits = pod["status"].get("initContainerStatuses") or []
        packaged = inits and (inits[0]["state"].get("terminated") or {}).get("exitCode") == 0
        running = any("running" in c.get("state", {}) for c in pod["status"].get("containerStatuses") or [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
        if packaged and running and not ready:
            return True
    return False


DEADLINE_S = 60  # time enough to package the canary and start TorchServe, so the pod is seen failing to load


def test_a_version_whose_model_cannot_load_is_rolled_back_at_the_progress_deadline(
    cluster: Cluster, scenario_namespace: str, pod_network: PodNetwork, model_source: Path, tmp_path: Path
) -> None:
    namespace = scenario_namespace
    good_source(model_source, tmp_path)
    handler_source(model_source, tmp_path, "unloadable", UNLOADABLE_HANDLER)
    rollout = {"steps": [{"weight": 50, "pause": "30s"}], "progressDeadline": f"{DEADLINE_S}s",
               "analysis": analysis(cluster, [ERROR_RATE])}  # fmt: skip
    serve_stable(namespace, tmp_path, rollout)
    watch = StatusWatch(namespace)

    with service_load(cluster, pod_network, namespace) as load:
        replace_model(namespace, handler_model("unloadable", "2.0"))
        waiting = watch.until(
            lambda s: s.get("rollout", {}).get("reason") == "CanaryNotReady", 60, "Waiting for the canary's pod"
        )
        assert waiting["phase"] == "Waiting", waiting
        seen_loading: list[bool] = []  # whether the canary's pod was ever packaged, running and not Ready

        def rolled_back_yet(found: dict[str, Any]) -> bool:
            seen_loading.append(packaged_but_not_ready(namespace))
            return found.get("phase") == "RolledBack"

        rolled_back = watch.until(rolled_back_yet, DEADLINE_S + 60, "2.0 rolled back")
        time.sleep(5)

    state = rolled_back["rollout"]
    assert state["reason"] == "ProgressDeadlineExceeded", state
    assert "0 of 1 pods of canary version 2.0 Ready" in state["message"], state
    (event,) = events(namespace, "RolledBack")
    waited = (event_time(event) - moment(state["startedAt"])).total_seconds()
    assert any(seen_loading), "the canary's pod was never seen packaged and running: why was it not Ready?"
    assert waited >= DEADLINE_S - 1, f"rolled back {waited:.0f}s after the rollout began, before its deadline"
    assert rolled_back["stableVersion"] == "1.0" and rolled_back["canaryWeight"] == 0
    deployment = get_json("-n", namespace, "deployment", "cifar10-canary")
    assert deployment["spec"]["replicas"] == 0
    results = load.results()
    stable = assert_stable_answered_everything(results)
    assert len(stable) == len(results), "a request went to the canary, which never became Ready"
    print(f"\nrolled back {waited:.0f}s after the edit; {len(results)} requests, all to stable; {watch.seen}")


# -- 4. no traffic to the canary ----------------------------------------------------------------------------------


def test_a_canary_without_traffic_waits_for_data_then_the_deadline_rolls_it_back(
    cluster: Cluster, scenario_namespace: str, pod_network: PodNetwork, model_source: Path, tmp_path: Path
) -> None:
    namespace = scenario_namespace
    good_source(model_source, tmp_path)
    rollout = {"steps": [{"weight": 50, "pause": "20s"}], "progressDeadline": "60s",
               "analysis": analysis(cluster, [ERROR_RATE], minRequests=5)}  # fmt: skip
    serve_stable(namespace, tmp_path, rollout)
    watch = StatusWatch(namespace)

    # Clients pinned to the stable pods: the stable version serves throughout, the canary gets no request.
    with service_load(cluster, pod_network, namespace, keep=stable_pod) as load:
        replace_model(namespace, {**GOOD_MODEL, "version": "2.0"})
        waiting = watch.until(
            lambda s: s.get("rollout", {}).get("reason") == "NoData", CANARY_STARTS_S + 60, "Waiting for data"
        )
        rolled_back = watch.until(lambda s: s.get("phase") == "RolledBack", 120, "2.0 rolled back")

    assert waiting["phase"] == "Waiting" and waiting["canaryReadyReplicas"] == 1, waiting
    (check,) = waiting["rollout"]["checks"]
    assert check["outcome"] == "NoData" and check["counted"] == "Wait", check
    assert "served 0 requests in the interval, fewer than minRequests 5" in waiting["rollout"]["message"], waiting
    assert "fewer than minRequests 5" in waiting["message"], waiting["message"]  # status.message says so too
    state = rolled_back["rollout"]
    assert state["reason"] == "ProgressDeadlineExceeded" and "no progress for 60s" in state["message"], state
    assert "minRequests" in state["message"], state
    (event,) = events(namespace, "RolledBack")
    waited = (event_time(event) - moment(waiting["rollout"]["bakeStartedAt"])).total_seconds()
    assert waited >= 60 - 1, f"rolled back {waited:.0f}s after the step began, before its 60s deadline"
    assert rolled_back["stableVersion"] == "1.0" and rolled_back["canaryWeight"] == 0
    results = load.results()
    assert len(assert_stable_answered_everything(results)) == len(results)
    print(f"\nrolled back {waited:.0f}s after the canary's step began; {len(results)} requests to stable; {watch.seen}")


# -- 5. Prometheus stopped mid-analysis -----------------------------------------------------------------------------


def test_the_rollout_holds_while_prometheus_is_down_and_continues_when_it_returns(
    cluster: Cluster, scenario_namespace: str, pod_network: PodNetwork, model_source: Path, tmp_path: Path
) -> None:
    namespace = scenario_namespace
    good_source(model_source, tmp_path)
    pause_s = 60
    rollout = {"steps": [{"weight": 50, "pause": f"{pause_s}s"}], "progressDeadline": "3m",
               "analysis": analysis(cluster, [ERROR_RATE])}  # fmt: skip
    serve_stable(namespace, tmp_path, rollout)
    watch = StatusWatch(namespace)

    with service_load(cluster, pod_network, namespace) as load:
        replace_model(namespace, {**GOOD_MODEL, "version": "2.0"})
        passed = watch.until(
            lambda s: s.get("rollout", {}).get("lastVerdict") == "Pass", CANARY_STARTS_S + 60, "a passing analysis"
        )
        bake_end = moment(passed["rollout"]["bakeStartedAt"]) + datetime.timedelta(seconds=pause_s)
        assert datetime.datetime.now(datetime.UTC) < bake_end, "the step's bake was over before Prometheus stopped"
        outage_began, stopped_at = len(watch.seen), time.monotonic()
        into_bake_s = pause_s - (bake_end - datetime.datetime.now(datetime.UTC)).total_seconds()
        with cluster.stopped("prometheus"):
            held = watch.until(
                lambda s: s.get("rollout", {}).get("reason") == "NoData", 60, "the rollout to hold without data"
            )
            # Hold until the analysis at the bake's end: with Prometheus up, it would have ended the step.
            still = watch.until(
                lambda s: moment(s.get("rollout", {}).get("lastAnalysisAt", "1970-01-01T00:00:00Z")) >= bake_end,
                pause_s + 30,
                "the analysis at the end of the bake",
            )
        during_outage, outage_s = watch.seen[outage_began:], time.monotonic() - stopped_at
        promoted = watch.until(
            lambda s: s.get("phase") == "Serving" and s.get("stableVersion") == "2.0", 300, "2.0 promoted"
        )

    assert held["phase"] == "Waiting", held
    assert "no data, holding: Prometheus at" in held["rollout"]["message"], held["rollout"]
    assert "did not answer" in held["rollout"]["message"], held["rollout"]
    assert still["phase"] == "Waiting" and still["rollout"].get("step", 0) == 0, still
    assert still["rollout"]["lastVerdict"] == "Wait", still["rollout"]
    assert {phase for phase, _ in during_outage} <= {"Progressing", "Waiting"}, during_outage
    assert promoted["rollout"]["phase"] == "Succeeded", promoted["rollout"]
    assert Cluster.attach(cluster.layout.root) is not None, "the cluster is not whole again: Prometheus?"
    results = load.results()
    assert_stable_answered_everything(results)
    canary = [result for result in results if "-canary-" in result.pod]
    assert canary and not failures(canary), failures(canary)[:5]
    print(
        f"\nPrometheus down {outage_s:.0f}s from {into_bake_s:.0f}s into the {pause_s}s bake: held {during_outage}, "
        f"then {watch.seen[-3:]}"
    )
