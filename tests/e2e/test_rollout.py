"""The full loop of a rollout: pods that really serve under load, Prometheus scraping them through the
ServiceMonitor Canaria renders, the operator querying it. A version whose handler fails every third batch is
rolled back by ErrorRate; a good version is then promoted; the stable version answers every request meanwhile."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import Cluster, monitoring
from devcluster.podnet import PodNetwork
from devcluster.traffic import Load, Report, ServiceEndpoints, admin_api, run
from tests.integration.conftest import Operator, get_json, kubectl, wait_for
from tests.support.torchserve import encoded_image

from .conftest import READY_TIMEOUT_S, local_volume, serving_model
from .test_serving import apply_md, train, wait_ready

ROOT = Path(__file__).resolve().parents[2]
FLAKY_HANDLER = '''
from image_classifier import ImageClassifier


class FlakyClassifier(ImageClassifier):
    """The built-in classifier, except that every third batch fails (a 5xx answer)."""

    batches = 0

    def handle(self, data, context):
        FlakyClassifier.batches += 1
        if FlakyClassifier.batches % 3 == 0:
            raise RuntimeError("flaky canary: every third batch fails")
        return super().handle(data, context)
'''
ERROR_RATE_MAX = 5  # percent; the flaky version fails about 33 %


@pytest.fixture
def rollout_namespace(cluster: Cluster) -> Iterator[tuple[str, Operator]]:
    """A namespace and an operator of this test's own (e2e-* belongs to the session's operator)."""
    name = f"e2r-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    running = Operator(log_name="operator-e2e-rollout.log", namespaces="e2r-*")
    running.start()
    try:
        yield name, running
    finally:
        running.stop()
        kubectl("delete", "namespace", name, "--wait=false")
    assert "Traceback" not in running.log(), "the operator logged a traceback: see " + str(running.log_path)


def sources(model_source: Path, root: Path) -> None:
    """root/cifar10: the good model; root/flaky: the same files with a handler that fails every third batch."""
    shutil.copytree(model_source, root / "cifar10")
    flaky = root / "flaky"
    shutil.copytree(model_source, flaky)
    for name in ("image_classifier.py", "canaria_base.py"):
        shutil.copy(ROOT / "model_handlers" / name, flaky / name)
    (flaky / "flaky.py").write_text(FLAKY_HANDLER)


def status(namespace: str) -> dict[str, Any]:
    result: dict[str, Any] = get_json("-n", namespace, "md/cifar10").get("status", {})
    return result


class Background:
    """Steady load on the Service in a thread, from inside the pod network, until stopped."""

    def __init__(self, cluster: Cluster, network: PodNetwork, namespace: str) -> None:
        body = encoded_image(train.held_out_digits().images[0])
        # 50 requests over 10 s per run: 5 per second, and a stop is never more than 10 s away.
        self.load = Load(count=50, duration_s=10, path="/predictions/cifar10", method="POST", body=body, rate_per_s=5)
        self.endpoints = ServiceEndpoints(admin_api(cluster), namespace, "cifar10", "http")
        self.network = network
        self.reports: list[Report] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.reports.append(run(self.load, self.endpoints, self.network))

    def __enter__(self) -> Background:
        self.endpoints.__enter__()
        self.endpoints.wait_for(bool, timeout_s=30)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)
        self.endpoints.__exit__(*exc)

    def results(self) -> list[Any]:
        return [result for report in self.reports for result in report.results]


def test_a_failing_version_is_rolled_back_by_error_rate_and_a_good_one_promoted(
    cluster: Cluster,
    rollout_namespace: tuple[str, Operator],
    pod_network: PodNetwork,
    model_source: Path,
    tmp_path: Path,
) -> None:
    namespace, _operator = rollout_namespace
    sources(model_source, tmp_path)
    local_volume(namespace, "models", tmp_path)
    prometheus = monitoring.url(json.loads(cluster.layout.cluster_file.read_text())["ports"])
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

    with Background(cluster, pod_network, namespace) as load:
        flaky = {
            "version": "2.0",
            "storageUri": "pvc://models/flaky",
            "handler": "flaky.py",
            "extraFiles": ["index_to_name.json", "image_classifier.py", "canaria_base.py"],
        }
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
