"""The full loop of a rollout: pods that really serve under load, Prometheus scraping them through the
ServiceMonitor Canaria renders, the operator querying it. A version whose handler fails every third batch is
rolled back by ErrorRate; a good version is then promoted; the stable version answers every request meanwhile."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import Cluster
from devcluster.podnet import PodNetwork
from tests.integration.conftest import Operator, fresh_namespace, kubectl, running, wait_for

from .conftest import READY_TIMEOUT_S, local_volume, serving_model
from .rollouts import FLAKY_HANDLER, good_source, handler_model, handler_source, prometheus_url, service_load, status
from .test_serving import apply_md, wait_ready

ERROR_RATE_MAX = 5  # percent; the flaky version fails about 33 %


@pytest.fixture
def rollout_namespace(cluster: Cluster) -> Iterator[tuple[str, Operator]]:
    """A namespace and an operator of this test's own (e2e-* belongs to the session's operator)."""
    with (
        fresh_namespace("e2r") as name,
        running(Operator(log_name="operator-e2e-rollout.log", namespaces="e2r-*")) as op,
    ):
        yield name, op


def test_a_failing_version_is_rolled_back_by_error_rate_and_a_good_one_promoted(
    cluster: Cluster,
    rollout_namespace: tuple[str, Operator],
    pod_network: PodNetwork,
    model_source: Path,
    tmp_path: Path,
) -> None:
    namespace, _operator = rollout_namespace
    good_source(model_source, tmp_path)
    handler_source(model_source, tmp_path, "flaky", FLAKY_HANDLER)
    local_volume(namespace, "models", tmp_path)
    prometheus = prometheus_url(cluster)
    rollout = {
        "steps": [{"weight": 50, "pause": "60s"}],
        "progressDeadline": "5m",
        "analysis": {
            "interval": "20s",
            "failureLimit": 2,
            "minRequests": 5,
            "prometheusUrl": prometheus,
            "metrics": [{"name": "error-rate", "builtin": "ErrorRate", "max": ERROR_RATE_MAX}],
        },
    }
    body = serving_model(rollout=rollout, monitoring={"serviceMonitor": {"interval": "5s"}})
    apply_md(namespace, body)
    wait_ready(namespace, "cifar10")

    with service_load(cluster, pod_network, namespace) as load:
        flaky = handler_model("flaky", "2.0")
        kubectl("patch", "-n", namespace, "md", "cifar10", "--type=merge", "-p", json.dumps({"spec": {"model": flaky}}))
        rolled_back = wait_for(
            lambda: (s := status(namespace)).get("phase") == "RolledBack" and s,
            timeout=READY_TIMEOUT_S + 180,
            interval=2,
            what="version 2.0 rolled back",
        )
        assert rolled_back["rollout"]["reason"] == "AnalysisFailed", rolled_back["rollout"]
        (check,) = rolled_back["rollout"]["checks"]
        assert check["name"] == "error-rate" and check["value"] > ERROR_RATE_MAX, check
        assert rolled_back["stableVersion"] == "1.0" and rolled_back["canaryWeight"] == 0

        good = {**serving_model()["spec"]["model"], "version": "3.0"}
        kubectl(
            "patch",
            "-n",
            namespace,
            "md",
            "cifar10",
            "--type=json",
            "-p",
            json.dumps([{"op": "replace", "path": "/spec/model", "value": good}]),
        )
        promoted = wait_for(
            lambda: (s := status(namespace)).get("phase") == "Serving" and s.get("stableVersion") == "3.0" and s,
            timeout=READY_TIMEOUT_S + 240,
            interval=2,
            what="version 3.0 promoted",
        )
        assert promoted["rollout"]["phase"] == "Succeeded"

    results = load.results()
    stable = [r for r in results if "-stable-" in r.pod]
    canary = [r for r in results if "-canary-" in r.pod]
    assert stable and canary, (len(stable), len(canary))
    failed = [(r.pod, r.status, r.error) for r in stable if not r.ok]
    assert not failed, f"{len(failed)} of {len(stable)} requests to stable pods failed: {failed[:5]}"
    assert any(not r.ok for r in canary), "the flaky canary never failed a request: the test proves nothing"
