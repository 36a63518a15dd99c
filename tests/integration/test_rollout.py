"""Rollouts on the real control plane: a version edit moves through the canary steps to promotion, and every
control edit (abort, promote, pause, a newer version, a revert) does what the README says. Pods run on kwok's
fake node (Ready without serving), so the steps are judged by their pauses alone (no checks): the analysis
against Prometheus is tested in tests/unit (decisions) and tests/e2e (the full loop).

The module runs a control plane of its own (no add-ons) with its own operator: an operator that watches every
namespace of the shared cluster (the demo's) would otherwise act on these objects too."""

from __future__ import annotations

import datetime
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devcluster import Cluster
from tests.integration.conftest import (
    Operator,
    apply,
    condition,
    fresh_namespace,
    get_json,
    kubectl,
    patch_md,
    running,
    wait_for,
)
from tests.support import clusters
from tests.support.manifests import example_model_deployment
from tests.support.processes import free_port

pytestmark = pytest.mark.cluster

NO_CHECKS: dict[str, Any] = {"metrics": []}


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A control plane of this module's own with kwok's fake node, our CRD and the HTTPRoute's (no Gateway
    implementation: the route's weights are checked as written); KUBECONFIG and PATH point at it."""
    state = tmp_path_factory.mktemp("rollout") / "state"
    with clusters.private_cluster(state, ("gateway.networking.k8s.io_httproutes.yaml",)) as private:
        yield private


@pytest.fixture(scope="module")
def operator(private_cluster: Cluster) -> Iterator[Operator]:
    with running(Operator(kubeconfig=private_cluster.layout.kubeconfig, log_name="operator-rollout.log")) as started:
        yield started


@pytest.fixture
def namespace(private_cluster: Cluster) -> Iterator[str]:
    with fresh_namespace("t") as name:
        yield name


def rollout_spec(*pauses: str, weights: tuple[int, ...] = (25, 50)) -> dict[str, Any]:
    steps = [{"weight": weight, "pause": pause} for weight, pause in zip(weights, pauses, strict=True)]
    return {"strategy": "Canary", "steps": steps, "analysis": NO_CHECKS}


def md_status(namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = get_json("-n", namespace, "md/cifar10").get("status", {})
    return status


def serving(namespace: str, version: str) -> dict[str, Any]:
    """The status once `version` serves alone: phase Serving, Ready, no canary."""

    def check() -> dict[str, Any] | None:
        md = get_json("-n", namespace, "md/cifar10")
        status = md.get("status", {})
        done = (
            status.get("phase") == "Serving"
            and status.get("stableVersion") == version
            and not status.get("canaryVersion")
            and condition(md, "Ready").get("status") == "True"
            and condition(md, "Ready").get("observedGeneration") == md["metadata"]["generation"]
        )
        return status if done else None

    result: dict[str, Any] = wait_for(check, timeout=90, what=f"version {version} serving alone")
    return result


def phase(namespace: str, wanted: str, timeout: float = 60) -> dict[str, Any]:
    result: dict[str, Any] = wait_for(
        lambda: (s := md_status(namespace)).get("phase") == wanted and s, timeout=timeout, what=f"phase {wanted}"
    )
    return result


def baking(namespace: str, step: int) -> dict[str, Any]:
    """The status once step `step` (0-based) has its canary pods Ready and its bake (pause) runs."""
    result: dict[str, Any] = wait_for(
        lambda: (
            (s := md_status(namespace)).get("phase") == "Progressing"
            and s.get("rollout", {}).get("step", 0) == step
            and s.get("rollout", {}).get("bakeStartedAt")
            and s
        ),
        what=f"step {step + 1} baking",
    )
    return result


def deployment_exists(namespace: str, name: str) -> bool:
    return kubectl("get", "-n", namespace, "deployment", name, check=False).returncode == 0


def stable_template(namespace: str) -> dict[str, Any]:
    template: dict[str, Any] = get_json("-n", namespace, "deployment", "cifar10-stable")["spec"]["template"]
    return template


def events(namespace: str) -> list[str]:
    items = get_json("-n", namespace, "events", "--field-selector", "involvedObject.name=cifar10")["items"]
    return [item["reason"] for item in sorted(items, key=lambda e: e.get("firstTimestamp") or "")]


def start(namespace: str, rollout: dict[str, Any], replicas: int = 2) -> None:
    apply(namespace, example_model_deployment(rollout=rollout, serving={"replicas": replicas}))
    serving(namespace, "1.0")


def ship(namespace: str, version: str) -> None:
    patch_md(namespace, {"model": {"version": version}})


def test_a_version_edit_moves_through_the_steps_and_is_promoted(operator, namespace):
    start(namespace, rollout_spec("2s", "2s"))
    shipped = time.monotonic()
    ship(namespace, "2.0")
    first = baking(namespace, 0)
    assert (first["canaryVersion"], first["requestedWeight"]) == ("2.0", 25)
    assert first["canaryWeight"] == 33  # Service mode: 1 canary pod beside 2 stable ones
    canary = get_json("-n", namespace, "deployment", "cifar10-canary")
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["template"]["metadata"]["labels"]["serving.canaria.dev/version"] == "2.0"
    assert stable_template(namespace)["metadata"]["labels"]["serving.canaria.dev/version"] == "1.0"
    second = baking(namespace, 1)
    assert (second["requestedWeight"], second["canaryWeight"]) == (50, 50)  # 2 canary pods beside 2
    done = serving(namespace, "2.0")
    took = time.monotonic() - shipped
    assert stable_template(namespace)["metadata"]["labels"]["serving.canaria.dev/version"] == "2.0"
    wait_for(lambda: not deployment_exists(namespace, "cifar10-canary"), what="the canary Deployment removed")
    assert done["rollout"]["phase"] == "Succeeded" and done["canaryWeight"] == 0
    reasons = events(namespace)
    for reason in ("RolloutStarted", "StepStarted", "PromotionStarted", "Promoted"):
        assert reason in reasons, reasons
    assert reasons.count("StepStarted") == 2
    assert 4 <= took < 60, f"two 2 s pauses and a promotion took {took:.1f} s"
    configs = get_json("-n", namespace, "configmap", "-l", "serving.canaria.dev/model-deployment=cifar10")["items"]
    wait_for(
        lambda: (
            len(get_json("-n", namespace, "configmap", "-l", "serving.canaria.dev/model-deployment=cifar10")["items"])
            == 1
        ),
        what=f"unused ConfigMaps deleted (were {[c['metadata']['name'] for c in configs]})",
    )


def test_abort_ends_at_once_with_the_stable_version_untouched(operator, namespace):
    start(namespace, rollout_spec("5m", "5m"))
    before = stable_template(namespace)
    ship(namespace, "2.0")
    baking(namespace, 0)
    patch_md(namespace, {"rollout": {"abort": "2.0"}})
    aborted = phase(namespace, "Aborted")
    assert aborted["canaryWeight"] == 0 and aborted["stableVersion"] == "1.0"
    md = get_json("-n", namespace, "md/cifar10")
    assert condition(md, "Ready")["status"] == "False" and condition(md, "Stalled")["reason"] == "Aborted"
    wait_for(
        lambda: get_json("-n", namespace, "deployment", "cifar10-canary")["spec"]["replicas"] == 0,
        what="the canary scaled to zero",
    )
    assert stable_template(namespace) == before
    assert "Aborted" in events(namespace)
    # A retry of the aborted version starts it again from the first step.
    patch_md(namespace, {"rollout": {"abort": None, "retry": "2.0"}})
    retried = baking(namespace, 0)
    assert retried["canaryVersion"] == "2.0"
    assert "RolloutRetried" in events(namespace)


def test_promote_skips_the_remaining_steps(operator, namespace):
    start(namespace, rollout_spec("5m", "5m"))
    ship(namespace, "2.0")
    baking(namespace, 0)
    patch_md(namespace, {"rollout": {"promote": "2.0"}})
    serving(namespace, "2.0")
    wait_for(lambda: not deployment_exists(namespace, "cifar10-canary"), what="the canary Deployment removed")


def test_pause_holds_the_step_and_resume_continues_it(operator, namespace):
    start(namespace, rollout_spec("4s", "2s"))
    ship(namespace, "2.0")
    baking(namespace, 0)
    patch_md(namespace, {"rollout": {"paused": True}})
    paused = phase(namespace, "Paused")
    time.sleep(6)  # longer than the step's pause: a paused rollout does not move on
    held = md_status(namespace)
    assert held["phase"] == "Paused" and held["rollout"].get("step", 0) == 0
    assert held["canaryWeight"] == paused["canaryWeight"] == 33
    patch_md(namespace, {"rollout": {"paused": False}})
    baking(namespace, 1)
    serving(namespace, "2.0")
    reasons = events(namespace)
    assert "Paused" in reasons and "Resumed" in reasons


def test_a_newer_version_mid_rollout_restarts_from_the_first_step(operator, namespace):
    start(namespace, rollout_spec("2s", "5m"))
    ship(namespace, "2.0")
    baking(namespace, 1)
    ship(namespace, "3.0")
    restarted = wait_for(
        lambda: (
            (s := md_status(namespace)).get("canaryVersion") == "3.0"
            and s.get("rollout", {}).get("bakeStartedAt")
            and s
        ),
        what="version 3.0 baking",
    )
    assert restarted["rollout"].get("step", 0) == 0 and restarted["requestedWeight"] == 25
    wait_for(
        lambda: (
            get_json("-n", namespace, "deployment", "cifar10-canary")["spec"]["template"]["metadata"]["labels"][
                "serving.canaria.dev/version"
            ]
            == "3.0"
        ),
        what="the canary running 3.0",
    )
    assert stable_template(namespace)["metadata"]["labels"]["serving.canaria.dev/version"] == "1.0"


def test_reverting_the_model_ends_the_rollout_at_once(operator, namespace):
    start(namespace, rollout_spec("5m", "5m"))
    before = stable_template(namespace)
    ship(namespace, "2.0")
    baking(namespace, 0)
    ship(namespace, "1.0")
    serving(namespace, "1.0")
    wait_for(lambda: not deployment_exists(namespace, "cifar10-canary"), what="the canary Deployment removed")
    assert stable_template(namespace) == before
    assert "RolloutReverted" in events(namespace)


def test_a_version_whose_volume_is_missing_starts_only_once_the_claim_exists(operator, namespace):
    start(namespace, rollout_spec("2s", "2s"))
    before = stable_template(namespace)
    patch_md(namespace, {"model": {"version": "2.0", "storageUri": "pvc://later/cifar10"}})
    md = wait_for(
        lambda: (
            (m := get_json("-n", namespace, "md/cifar10"))
            and condition(m, "ResolvedRefs").get("reason") == "PVCNotFound"
            and m
        ),
        what="the missing claim reported",
    )
    # Degraded: version 1.0 serves, and the edit cannot be acted on until the claim exists.
    assert md["status"]["phase"] == "Degraded" and md["status"]["stableVersion"] == "1.0", md["status"]
    held = md_status(namespace)  # the pass that reported the claim is the one that would have started it
    assert held["rollout"]["phase"] == "Serving" and not held.get("canaryVersion"), held
    assert "RolloutStarted" not in events(namespace)
    assert not deployment_exists(namespace, "cifar10-canary") and stable_template(namespace) == before
    kubectl("apply", "-f", "-", input=json.dumps(bound_claim(namespace, "later")))
    serving(namespace, "2.0")
    assert "RolloutStarted" in events(namespace)


def bound_claim(namespace: str, name: str) -> dict[str, Any]:
    """A claim with a volume made for it (the scheduler places no pod whose claim is unbound)."""
    volume = f"{namespace}-{name}"
    access = {"accessModes": ["ReadOnlyMany"], "storageClassName": ""}
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": volume},
                "spec": {
                    **access,
                    "capacity": {"storage": "1Gi"},
                    "hostPath": {"path": "/nonexistent"},  # kwok's pods never mount it
                    "claimRef": {"namespace": namespace, "name": name},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {**access, "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}},
            },
        ],
    }


def route_weights(namespace: str) -> dict[str, int]:
    route = get_json("-n", namespace, "httproute", "cifar10")
    return {backend["name"]: backend["weight"] for backend in route["spec"]["rules"][0]["backendRefs"]}


def test_gateway_mode_sets_the_routes_weights_exactly_at_each_step(operator, namespace):
    parents = [{"name": "canaria", "namespace": "default"}]
    traffic = {"mode": "GatewayAPI", "gateway": {"parentRefs": parents}}
    apply(
        namespace, example_model_deployment(rollout=rollout_spec("2s", "2s"), serving={"replicas": 2}, traffic=traffic)
    )
    serving(namespace, "1.0")
    assert route_weights(namespace) == {"cifar10-stable": 100, "cifar10-canary": 0}
    assert get_json("-n", namespace, "httproute", "cifar10")["spec"]["parentRefs"][0]["name"] == "canaria"
    for track in ("stable", "canary"):
        selector = get_json("-n", namespace, "service", f"cifar10-{track}")["spec"]["selector"]
        assert selector["serving.canaria.dev/track"] == track
    ship(namespace, "2.0")
    first = baking(namespace, 0)
    assert first["canaryWeight"] == 25 and route_weights(namespace) == {"cifar10-stable": 75, "cifar10-canary": 25}
    assert get_json("-n", namespace, "deployment", "cifar10-canary")["spec"]["replicas"] == 1  # ceil(25 % of 2)
    second = baking(namespace, 1)
    assert second["canaryWeight"] == 50 and route_weights(namespace) == {"cifar10-stable": 50, "cifar10-canary": 50}
    serving(namespace, "2.0")
    wait_for(
        lambda: route_weights(namespace) == {"cifar10-stable": 100, "cifar10-canary": 0}, what="all traffic to stable"
    )
    patch_md(namespace, {"traffic": {"mode": "Service", "gateway": None}})  # back to one Service over both tracks
    gone = ("httproute/cifar10", "service/cifar10-stable", "service/cifar10-canary")
    wait_for(
        lambda: all(kubectl("get", "-n", namespace, child, check=False).returncode != 0 for child in gone),
        what="the route and the track Services deleted",
    )
    assert kubectl("get", "-n", namespace, "service/cifar10", check=False).returncode == 0


def test_a_hand_edit_of_the_routes_weights_is_repaired_at_once(operator, namespace):
    traffic = {"mode": "GatewayAPI", "gateway": {"parentRefs": [{"name": "canaria", "namespace": "default"}]}}
    apply(namespace, example_model_deployment(rollout=rollout_spec("2s", "2s"), traffic=traffic))
    serving(namespace, "1.0")
    backends = get_json("-n", namespace, "httproute", "cifar10")["spec"]["rules"][0]["backendRefs"]
    edited = [{**backend, "weight": 50} for backend in backends]
    kubectl("patch", "-n", namespace, "httproute", "cifar10", "--type=json", "-p",
            json.dumps([{"op": "replace", "path": "/spec/rules/0/backendRefs", "value": edited}]))  # fmt: skip
    # Well inside the 5-minute resync: only the route's watch can bring the pass this soon.
    wait_for(
        lambda: route_weights(namespace) == {"cifar10-stable": 100, "cifar10-canary": 0},
        timeout=20,
        what="the route's weights repaired",
    )


@pytest.fixture
def own_operator(private_cluster: Cluster) -> Iterator[tuple[Operator, str]]:
    """An operator of this test's own, for a namespace the session's operator does not watch: it gets killed."""
    killed = Operator(private_cluster.layout.kubeconfig, log_name="operator-rollout-kill.log", namespaces="r-*")
    with fresh_namespace("r") as namespace:
        killed.start()
        try:
            yield killed, namespace
        finally:
            killed.stop()


def test_an_operator_killed_during_a_step_continues_at_the_same_step(own_operator):
    running, namespace = own_operator
    start(namespace, rollout_spec("15s", "2s"))
    ship(namespace, "2.0")
    first = baking(namespace, 0)
    assert running.process is not None
    running.process.send_signal(signal.SIGKILL)
    running.process.wait(timeout=10)
    time.sleep(3)
    running.start()
    second = baking(namespace, 1)  # not step 0 again: the restarted operator read where it was from status
    assert second["rollout"]["startedAt"] == first["rollout"]["startedAt"]
    bake_end = _seconds(first["rollout"]["bakeStartedAt"]) + 15
    assert 0 <= _seconds(second["rollout"]["stepStartedAt"]) - bake_end < 5, (first["rollout"], second["rollout"])
    serving(namespace, "2.0")


def _seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp).timestamp()


def unreachable_checks(no_data: str, **analysis: Any) -> dict[str, Any]:
    """Checks against a Prometheus that is not there (a free loopback port): every interval has no data and
    holds (an unreachable Prometheus never fails a check, whatever noData says). No Prometheus in this cluster:
    a failing analysis is tested in the full loop (tests/e2e)."""
    return {
        "interval": "2s",
        "noData": no_data,
        "prometheusUrl": f"http://127.0.0.1:{free_port()}",
        "metrics": [{"name": "errors", "builtin": "ErrorRate", "max": 1}],
        **analysis,
    }


def kill_and_restart(running: Operator) -> None:
    assert running.process is not None
    running.process.send_signal(signal.SIGKILL)
    running.process.wait(timeout=10)
    time.sleep(3)
    running.start()


def test_no_data_waits_and_the_deadline_rolls_back_across_an_operator_killed_during_analysis(own_operator):
    running, namespace = own_operator
    rollout = {**rollout_spec("5s", "5s"), "progressDeadline": "20s", "analysis": unreachable_checks("Wait")}
    start(namespace, rollout)
    before = stable_template(namespace)
    ship(namespace, "2.0")
    waiting = wait_for(
        lambda: (
            (s := md_status(namespace)).get("phase") == "Waiting"
            and s["rollout"].get("reason") == "NoData"
            and len(s["rollout"].get("history", [])) >= 2
            and s
        ),
        what="analyses with no data",
    )
    assert "did not answer" in waiting["rollout"]["message"], waiting["rollout"]
    kill_and_restart(running)  # mid-analysis: the verdicts so far and the deadline's clock live in status
    rolled_back = phase(namespace, "RolledBack", timeout=60)
    assert rolled_back["rollout"]["reason"] == "ProgressDeadlineExceeded", rolled_back["rollout"]
    assert rolled_back["rollout"]["history"][: len(waiting["rollout"]["history"])] == waiting["rollout"]["history"]
    # The deadline ran from the last progress before the kill: the restart did not start it again.
    deadline = _seconds(waiting["rollout"]["progressAt"]) + 20
    ended = next(e for e in get_json("-n", namespace, "events")["items"] if e["reason"] == "RolledBack")
    assert abs(_seconds(ended.get("lastTimestamp") or ended["eventTime"]) - deadline) < 5, (deadline, ended)
    assert stable_template(namespace) == before
    wait_for(lambda: get_json("-n", namespace, "deployment", "cifar10-canary")["spec"]["replicas"] == 0,
             what="the canary scaled to zero")  # fmt: skip


def test_an_operator_killed_while_paused_stays_paused_and_resumes_the_same_step(own_operator):
    running, namespace = own_operator
    start(namespace, rollout_spec("4s", "2s"))
    ship(namespace, "2.0")
    first = baking(namespace, 0)
    patch_md(namespace, {"rollout": {"paused": True}})
    paused = phase(namespace, "Paused")
    kill_and_restart(running)
    time.sleep(6)  # past the step's pause: a paused rollout stays where it was, restart or not
    held = md_status(namespace)
    assert held["phase"] == "Paused" and held["rollout"].get("step", 0) == 0
    assert held["rollout"]["pausedAt"] == paused["rollout"]["pausedAt"]
    patch_md(namespace, {"rollout": {"paused": False}})
    second = baking(namespace, 1)
    assert second["rollout"]["startedAt"] == first["rollout"]["startedAt"]
    serving(namespace, "2.0")
