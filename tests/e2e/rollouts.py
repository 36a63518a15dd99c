"""What the full-loop rollout tests share: model sources whose new version differs in one way (a handler that
fails, is slow, or cannot load; another top-k), steady load from inside the pod network in a background
thread, and reading the ModelDeployment's status as it moves."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devcluster import Cluster, monitoring
from devcluster.podnet import PodNetwork
from devcluster.traffic import (
    GATEWAY,
    Endpoint,
    Load,
    Report,
    Result,
    ServiceEndpoints,
    Targets,
    admin_api,
    choose,
    run,
)
from tests.integration.conftest import get_json, kubectl
from tests.support.torchserve import encoded_image

from .conftest import serving_model
from .test_serving import train

ROOT = Path(__file__).resolve().parents[2]
PREDICT_PATH = "/predictions/cifar10"
RUN_S = 10  # the load runs in bounded runs of this length: a stop is never further away
# Handlers of a new version written over the built-in classifier: they need its files beside them.
CLASSIFIER_FILES = ("image_classifier.py", "canaria_base.py")

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

SLOW_HANDLER = '''
import time

from image_classifier import ImageClassifier


class SlowClassifier(ImageClassifier):
    """The built-in classifier, 300 ms slower per batch: right answers, late."""

    def handle(self, data, context):
        time.sleep(0.3)
        return super().handle(data, context)
'''

UNLOADABLE_HANDLER = '''
from image_classifier import ImageClassifier


class UnloadableClassifier(ImageClassifier):
    """Imports fine (packaging checks that), but the model never loads: every worker fails to start."""

    def initialize(self, context):
        raise RuntimeError("unloadable canary: the model cannot be loaded")
'''


# -- sources -------------------------------------------------------------------------------------------------


def good_source(model_source: Path, root: Path, name: str = "cifar10") -> Path:
    """root/name: the example's files as they are."""
    shutil.copytree(model_source, root / name)
    return root / name


def handler_source(model_source: Path, root: Path, name: str, handler: str) -> Path:
    """root/name: the example's files with handler code of its own in <name>.py, beside the classifier it extends;
    spec.model is `handler_model(name)`."""
    target = good_source(model_source, root, name)
    for file in CLASSIFIER_FILES:
        shutil.copy(ROOT / "model_handlers" / file, target / file)
    (target / f"{name}.py").write_text(handler)
    return target


def handler_model(name: str, version: str) -> dict[str, Any]:
    """spec.model of a source made by handler_source: the example's model, with that handler."""
    return {
        **serving_model()["spec"]["model"],
        "version": version,
        "storageUri": f"pvc://models/{name}",
        "handler": f"{name}.py",
        "extraFiles": ["index_to_name.json", *CLASSIFIER_FILES],
    }


def top_k_source(model_source: Path, root: Path, name: str, k: int) -> Path:
    """root/name: the example, answering with its k most likely labels (the example answers with 3): a good
    version whose answers tell it apart."""
    target = good_source(model_source, root, name)
    config = yaml.safe_load((target / "model-config.yaml").read_text())
    config["handler"]["topk"] = k
    (target / "model-config.yaml").write_text(yaml.safe_dump(config))
    return target


def labels_answered(result: Result) -> int:
    """How many labels a prediction answered with (the model's top-k): 0 for anything but a prediction."""
    try:
        answer = json.loads(result.body)
    except ValueError:
        return 0
    return len(answer) if isinstance(answer, dict) else 0


# -- the ModelDeployment -------------------------------------------------------------------------------------


def prometheus_url(cluster: Cluster) -> str:
    return monitoring.url(json.loads(cluster.layout.cluster_file.read_text())["ports"])


def status(namespace: str, name: str = "cifar10") -> dict[str, Any]:
    result: dict[str, Any] = get_json("-n", namespace, f"md/{name}").get("status", {})
    return result


def replace_model(namespace: str, model: dict[str, Any], name: str = "cifar10") -> None:
    """Ship a new version: spec.model replaced as a whole (a merge patch would keep the old one's fields)."""
    patch = json.dumps([{"op": "replace", "path": "/spec/model", "value": model}])
    kubectl("patch", "-n", namespace, "md", name, "--type=json", "-p", patch)


def events(namespace: str, reason: str, name: str = "cifar10") -> list[dict[str, Any]]:
    selector = f"involvedObject.name={name},reason={reason}"
    found: list[dict[str, Any]] = get_json("-n", namespace, "events", "--field-selector", selector)["items"]
    return found


@dataclass
class StatusWatch:
    """Polls status until a condition holds, keeping every distinct (phase, rollout reason) it passed through."""

    namespace: str
    seen: list[tuple[str, str]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)

    def poll(self) -> dict[str, Any]:
        self.last = status(self.namespace)
        moment = (self.last.get("phase", ""), self.last.get("rollout", {}).get("reason", ""))
        if not self.seen or self.seen[-1] != moment:
            self.seen.append(moment)
        return self.last

    def until(self, condition: Callable[[dict[str, Any]], bool], timeout_s: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition(self.poll()):
                return self.last
            time.sleep(1)
        raise AssertionError(
            f"timed out after {timeout_s:.0f}s waiting for {what}; passed {self.seen}, last {self.last}"
        )


# -- load ------------------------------------------------------------------------------------------------------


def predictions(rate_per_s: float, headers: dict[str, str] | None = None) -> Load:
    """One bounded run of prediction requests (a held-out digit) at rate_per_s."""
    body = encoded_image(train.held_out_digits().images[0])
    return Load(
        count=int(rate_per_s * RUN_S),
        duration_s=RUN_S,
        path=PREDICT_PATH,
        method="POST",
        body=body,
        headers=headers or {},
        rate_per_s=rate_per_s,
    )


@dataclass
class Pinned:
    """A Service's ready endpoints whose pod passes `keep`: clients that never reach the other pods."""

    endpoints: ServiceEndpoints
    keep: Callable[[Endpoint], bool]

    def pick(self, rng: random.Random) -> Endpoint | None:
        return choose([endpoint for endpoint in self.endpoints.current() if self.keep(endpoint)], rng)


def stable_pod(endpoint: Endpoint) -> bool:
    return "-stable-" in endpoint.pod


class Background:
    """Steady load in a thread, from inside the pod network, in bounded runs until stopped."""

    def __init__(self, network: PodNetwork, targets: Targets, load: Load) -> None:
        self.network, self.targets, self.load = network, targets, load
        self.reports: list[Report] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="background-load", daemon=True)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.reports.append(run(self.load, self.targets, self.network))

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=RUN_S * 6)

    def results(self) -> list[Result]:
        return [result for report in self.reports for result in report.results]


@contextlib.contextmanager
def service_load(
    cluster: Cluster,
    network: PodNetwork,
    namespace: str,
    rate_per_s: float = 5,
    keep: Callable[[Endpoint], bool] | None = None,
) -> Iterator[Background]:
    """Load on the model's Service, spread over its ready pods as kube-proxy would (only over the pods `keep`
    accepts, when given)."""
    with ServiceEndpoints(admin_api(cluster), namespace, "cifar10", "http") as endpoints:
        endpoints.wait_for(lambda ready: any(keep is None or keep(e) for e in ready), timeout_s=30)
        targets: Targets = endpoints if keep is None else Pinned(endpoints, keep)
        with Background(network, targets, predictions(rate_per_s)) as load:
            yield load


def gateway_load(network: PodNetwork, host: str, rate_per_s: float = 5) -> Background:
    """Load through the cluster's Gateway (Traefik) for the routes of `host`."""
    return Background(network, GATEWAY, predictions(rate_per_s, {"Host": host}))


def failures(results: list[Result]) -> list[tuple[str, int | None, str]]:
    return [
        (result.pod, result.status, result.error or result.body[:120].decode(errors="replace"))
        for result in results
        if not result.ok
    ]
