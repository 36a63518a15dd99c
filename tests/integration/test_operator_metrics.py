"""The operator's /metrics endpoint and JSON logs, with the real operator against the real control plane.

The operator runs with CANARIA_LOG_FORMAT=json and serves its metrics on a free loopback port; it watches
only the `m-*` namespaces, so no other operator's objects (or other test's) change what it counts.
"""

from __future__ import annotations

import datetime
import json
import platform
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from canaria import __version__
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
from tests.support.manifests import example_model_deployment

pytestmark = pytest.mark.cluster
NAME = "cifar10"


@pytest.fixture(scope="module")
def json_operator(crd_installed: None) -> Iterator[Operator]:
    json_logs = Operator(log_name="operator-metrics.log", namespaces="m-*", env={"CANARIA_LOG_FORMAT": "json"})
    with running(json_logs) as started:
        wait_for(lambda: scrape(started), timeout=60, what="the operator's /metrics endpoint")
        yield started


@pytest.fixture
def namespace(cluster: object) -> Iterator[str]:
    with fresh_namespace("m") as name:
        yield name


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(operator: Operator) -> Samples:
    """Every sample of one scrape of http://127.0.0.1:<port>/metrics, by (name, labels); {} if no answer."""
    try:
        text = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()
    except OSError:
        return {}
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, /, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def md_status(namespace: str) -> dict:
    status: dict = get_json("-n", namespace, f"md/{NAME}").get("status") or {}
    return status


def test_metrics_follow_a_model_deployment_from_creation_to_deletion(json_operator, namespace):
    ref = {"namespace": namespace, "name": NAME}
    samples = scrape(json_operator)
    build = [(dict(labels), value) for (name, labels), value in samples.items() if name == "canaria_build_info"]
    assert [(labels["version"], value) for labels, value in build] == [(__version__, 1.0)]

    rollout = {"analysis": {"interval": "5s"}}  # no Prometheus: its analyses have no data, so it waits
    apply(namespace, example_model_deployment(serving={"replicas": 2}, rollout=rollout))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "--timeout=90s", f"md/{NAME}")
    serving = wait_for(
        lambda: (s := scrape(json_operator)) and sample(s, "canaria_model_deployment_ready", **ref) == 1 and s,
        what="the Ready gauge",
    )
    assert sample(serving, "canaria_model_deployments", phase="Serving") == 1
    assert sample(serving, "canaria_model_deployments", phase="Pending") == 0
    assert sample(serving, "canaria_rollout_progressing", **ref) == 0
    assert sample(serving, "canaria_canary_weight", **ref) == 0
    assert sample(serving, "canaria_rollouts_started_total", **ref) == 0
    successes = sample(serving, "canaria_reconcile_total", result="success")
    assert successes is not None and successes >= 2  # at least the pass that applied and the one that saw Ready
    assert sample(serving, "canaria_reconcile_total", result="error") == 0
    passes = sum(sample(serving, "canaria_reconcile_total", result=r) or 0 for r in ("success", "retry", "error"))
    assert sample(serving, "canaria_reconcile_duration_seconds_count") == passes

    patch_md(namespace, {"model": {"version": "2.0"}})

    def deadline_shown() -> bool:
        """The deadline gauge says what status says, read before and after one scrape (passes run meanwhile)."""
        before = md_status(namespace).get("rollout") or {}
        scraped = scrape(json_operator)
        after = md_status(namespace).get("rollout") or {}
        if before != after or before.get("phase") not in ("Waiting", "Promoting"):
            return False
        progress = datetime.datetime.fromisoformat(before["progressAt"]).timestamp()
        assert sample(scraped, "canaria_rollout_deadline_timestamp_seconds", **ref) == progress + 600
        assert sample(scraped, "canaria_rollout_progressing", **ref) == 1
        return True

    wait_for(deadline_shown, timeout=90, what="a waiting rollout and its deadline")
    patch_md(namespace, {"rollout": {"abort": "2.0"}})
    aborted = wait_for(
        lambda: (s := scrape(json_operator)) and sample(s, "canaria_model_deployments", phase="Aborted") == 1 and s,
        what="the abort",
    )
    assert sample(aborted, "canaria_rollouts_started_total", **ref) == 1  # however many passes saw it
    assert sample(aborted, "canaria_rollouts_rolled_back_total", **ref, reason="Aborted") == 1
    assert sample(aborted, "canaria_rollout_progressing", **ref) == 0
    assert sample(aborted, "canaria_rollout_deadline_timestamp_seconds", **ref) is None
    assert sample(aborted, "canaria_model_deployment_ready", **ref) == 0
    assert condition(get_json("-n", namespace, f"md/{NAME}"), "Stalled")["status"] == "True"

    kubectl("delete", "-n", namespace, f"md/{NAME}", "--wait=true", "--timeout=60s")
    gone = wait_for(
        lambda: (s := scrape(json_operator)) and not [key for key in s if ("name", NAME) in key[1]] and s,
        timeout=60,
        what="the deleted object's series to go",
    )
    assert sample(gone, "canaria_model_deployments", phase="Aborted") == 0
    # Child deletions still run passes for a moment; once they end, no request stays in the table.
    wait_for(lambda: sample(scrape(json_operator), "canaria_queue_depth") == 0, what="an empty queue")


def test_json_logs_parse_and_name_the_object(json_operator, namespace):
    apply(namespace, example_model_deployment())
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "--timeout=90s", f"md/{NAME}")
    lines = [line for line in json_operator.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    about = [entry for entry in entries if (entry.get("namespace"), entry.get("name")) == (namespace, NAME)]
    assert about, "no log line names the ModelDeployment"
    assert any(entry["logger"].startswith("kopf") for entry in about)


def test_a_standby_replica_serves_metrics_and_only_the_leader_counts(crd_installed):
    """Two replicas with leader election (as the chart runs them): both answer a scrape, so neither looks down,
    and only the one that leads has series about the ModelDeployment."""
    namespace = f"h-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    election = {
        "CANARIA_LEADER_ELECTION": "true",
        "CANARIA_LEASE_NAMESPACE": namespace,
        "CANARIA_LEASE_NAME": "canaria",
    }
    replicas = [
        Operator(log_name=f"operator-metrics-{index}.log", namespaces="h-*", env={**election, "POD_NAME": f"r{index}"})
        for index in range(2)
    ]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            wait_for(lambda r=replica: scrape(r), timeout=60, what=f"{replica.log_path.name}: /metrics")
        apply(namespace, example_model_deployment())
        kubectl("wait", "-n", namespace, "--for=condition=Ready", "--timeout=90s", f"md/{NAME}")
        ref = {"namespace": namespace, "name": NAME}

        def ready_gauges() -> list[float | None]:
            return [sample(scrape(replica), "canaria_model_deployment_ready", **ref) for replica in replicas]

        gauges = wait_for(lambda: sorted(ready_gauges(), key=str) == [1.0, None] and ready_gauges(), what="one leader")
        leader, standby = (replicas[0], replicas[1]) if gauges[0] == 1 else (replicas[1], replicas[0])
        assert sample(scrape(standby), "canaria_reconcile_total", result="success") == 0
        assert sample(scrape(standby), "canaria_build_info", python=platform.python_version(), version=__version__) == 1
        assert (sample(scrape(leader), "canaria_reconcile_total", result="success") or 0) > 0
    finally:
        for replica in replicas:
            replica.stop()
        kubectl("delete", "namespace", namespace, "--wait=false")
    for replica in replicas:
        assert "Traceback" not in replica.log(), f"a traceback in {replica.log_path}"
