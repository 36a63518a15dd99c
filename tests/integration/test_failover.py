"""Two operator replicas with leader election, as the Helm chart runs them (its command line and environment:
election on, the Lease named after the release in its namespace, the pod name as identity), as processes on
this machine: only the leader reconciles; the leader SIGKILLed in the middle of a rollout step is replaced by the
standby within the bounds the lease settings give, and the rollout continues at the same step, neither repeated
nor skipped. A leader whose Lease is taken exits.

The module runs a control plane of its own, like test_rollout.py: these operators watch every namespace. Pods run
on kwok's fake node, so the steps are judged by their pauses alone."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from canaria.leader import LEASE_DURATION, LOST_LEASE_EXIT_CODE, RETRY_PERIOD
from devcluster import Cluster
from tests.integration.conftest import (
    LOGS,
    apply,
    condition,
    get_json,
    kubectl,
    kubectl_binary,
    patch_md,
    wait_for,
)
from tests.support import clusters
from tests.support.manifests import example_model_deployment
from tests.support.replicas import Replica, chart_container, lease_holder, start_replica, wait_for_log

pytestmark = pytest.mark.cluster

RELEASE = "canaria"  # the chart's default release name: the Lease is called so
RECONCILED = "Handler 'model_deployment_changed' succeeded"
LEADS = "leads now"
# How long after the leader's death a standby may take over: its last renewal was up to one retry period before
# the death, the standby saw it up to one retry period after (then waits a lease duration) and looks once per retry
# period. Never earlier than a lease duration after the last renewal: that is what keeps two leaders apart.
EARLIEST_TAKEOVER = LEASE_DURATION - RETRY_PERIOD
LATEST_TAKEOVER = LEASE_DURATION + 2 * RETRY_PERIOD
SLACK = 2.0  # API and process latency on a shared, loaded machine
STEP_PAUSE = 60  # seconds: the step the leader dies in outlasts the failover


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A control plane of this module's own with kwok's fake node and our CRD; KUBECONFIG and PATH point at it."""
    with clusters.private_cluster(tmp_path_factory.mktemp("failover") / "state") as private:
        yield private


class Release:
    """The chart's operator container, its replicas started by hand in the release namespace."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.container = chart_container(RELEASE, namespace)
        self.replicas: list[Replica] = []

    def start(self, pod: str, unset: tuple[str, ...] = ()) -> Replica:
        replica = start_replica(self.container, pod, self.namespace, self.cluster.layout.kubeconfig, LOGS, unset)
        self.replicas.append(replica)
        return replica

    def holder(self, lease: str = RELEASE) -> str | None:
        return lease_holder(kubectl_binary(), self.cluster.layout.kubeconfig, self.namespace, lease)

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        tracebacks = [r.pod for r in self.replicas if "Traceback" in r.log()]
        assert not tracebacks, f"tracebacks in the logs of {tracebacks}: see {LOGS}"


@pytest.fixture
def release(private_cluster: Cluster) -> Iterator[Release]:
    namespace = f"canaria-system-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    made = Release(private_cluster, namespace)
    try:
        yield made
    finally:
        made.stop()
        kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture
def models(private_cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


def rollout_of(namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = get_json("-n", namespace, "md/cifar10").get("status", {})
    return status


def baking(namespace: str, step: int, timeout: float = 60) -> dict[str, Any]:
    result: dict[str, Any] = wait_for(
        lambda: (
            (s := rollout_of(namespace)).get("phase") == "Progressing"
            and s.get("rollout", {}).get("step", 0) == step
            and s.get("rollout", {}).get("bakeStartedAt")
            and s
        ),
        timeout=timeout,
        what=f"step {step + 1} baking",
    )
    return result


def serving(namespace: str, version: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        md = get_json("-n", namespace, "md/cifar10")
        status = md.get("status", {})
        ready = condition(md, "Ready")
        done = (
            status.get("phase") == "Serving"
            and status.get("stableVersion") == version
            and not status.get("canaryVersion")
            and ready.get("status") == "True"
            and ready.get("observedGeneration") == md["metadata"]["generation"]
        )
        return status if done else None

    result: dict[str, Any] = wait_for(check, timeout=90, what=f"version {version} serving alone")
    return result


def step_events(namespace: str) -> list[str]:
    items = get_json("-n", namespace, "events", "--field-selector", "involvedObject.name=cifar10")["items"]
    return [item["message"] for item in items if item["reason"] == "StepStarted"]


def seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp).timestamp()


def test_the_standby_takes_over_a_rollout_step_where_the_killed_leader_left_it(release: Release, models: str) -> None:
    env = {e["name"]: e.get("value") for e in release.container["env"]}
    assert env["CANARIA_LEADER_ELECTION"] == "true" and env["CANARIA_LEASE_NAME"] == RELEASE

    first = release.start(f"{RELEASE}-7d9f-aaaaa")
    wait_for_log(first, LEADS, timeout=60)
    assert release.holder() == first.pod
    second = release.start(f"{RELEASE}-7d9f-bbbbb")
    wait_for_log(second, f"{first.pod} leads; this replica ({second.pod}) waits", timeout=60)
    wait_for(lambda: second.liveness_status() == (200, {"role": "standby", "leader": first.pod}), timeout=10,
             what="the standby's liveness endpoint")  # fmt: skip

    steps = [{"weight": 25, "pause": f"{STEP_PAUSE}s"}, {"weight": 50, "pause": "2s"}]
    rollout = {"strategy": "Canary", "steps": steps, "analysis": {"metrics": []}}
    apply(models, example_model_deployment(rollout=rollout, serving={"replicas": 2}))
    serving(models, "1.0")
    patch_md(models, {"model": {"version": "2.0"}})
    before = baking(models, 0)["rollout"]
    assert RECONCILED in first.log() and RECONCILED not in second.log(), "only the leader reconciles"
    assert second.alive() and release.holder() == first.pod

    first.kill()  # in the middle of step 1's pause
    killed = time.monotonic()
    took_over = wait_for_log(second, LEADS, timeout=LATEST_TAKEOVER + SLACK + 10) - killed
    assert release.holder() == second.pod
    assert EARLIEST_TAKEOVER - 0.5 <= took_over <= LATEST_TAKEOVER + SLACK, (
        f"took over {took_over:.1f}s after the leader died; the lease settings allow "
        f"{EARLIEST_TAKEOVER:g}-{LATEST_TAKEOVER:g}s"
    )
    resumed = wait_for_log(second, RECONCILED, timeout=30) - killed

    # The new leader's first passes find the step where it was: same index, same start and bake start.
    after = rollout_of(models)
    assert after["phase"] == "Progressing" and after["canaryVersion"] == "2.0"
    for field in ("step", "startedAt", "stepStartedAt", "bakeStartedAt"):
        assert after["rollout"].get(field) == before.get(field), (field, before, after["rollout"])
    assert time.monotonic() - killed < STEP_PAUSE - 5, "the failover outlasted the step: make STEP_PAUSE longer"

    # The step ends when its pause ends (not a pause later, not at once), and the next one starts once.
    next_step = baking(models, 1, timeout=STEP_PAUSE + 30)["rollout"]
    assert next_step["startedAt"] == before["startedAt"]
    late = seconds(next_step["stepStartedAt"]) - (seconds(before["bakeStartedAt"]) + STEP_PAUSE)
    assert 0 <= late < 5, (before, next_step)
    done = serving(models, "2.0")
    assert done["rollout"]["phase"] == "Succeeded"
    assert len(step_events(models)) == 2, f"a step started twice or never: {step_events(models)}"
    print(f"takeover {took_over:.2f}s, first reconcile {resumed:.2f}s after SIGKILL")


def test_a_leader_whose_lease_is_taken_exits_to_restart_as_a_standby(release: Release) -> None:
    leader = release.start(f"{RELEASE}-7d9f-ccccc")
    wait_for_log(leader, LEADS, timeout=60)
    kubectl("patch", "lease", "-n", release.namespace, RELEASE, "--type=merge",
            "-p", '{"spec": {"holderIdentity": "intruder"}}')  # fmt: skip
    leader.process.wait(timeout=2 * RETRY_PERIOD + SLACK)
    assert leader.process.returncode == LOST_LEASE_EXIT_CODE
    assert "the Lease is now held by intruder" in leader.log()
    assert release.holder() == "intruder", "the exiting leader wrote nothing more"


def test_without_the_charts_environment_there_is_no_election(release: Release) -> None:
    """`python -m canaria run` on a laptop: no Lease, Kopf starts at once."""
    election = ("CANARIA_LEADER_ELECTION", "CANARIA_LEASE_NAME", "CANARIA_LEASE_NAMESPACE", "POD_NAME")
    solo = release.start(f"{RELEASE}-solo", unset=election)
    wait_for(lambda: solo.liveness_status()[0] == 200, timeout=60, what="Kopf's liveness endpoint")
    assert "leader election" not in solo.log()
    assert release.holder() is None
