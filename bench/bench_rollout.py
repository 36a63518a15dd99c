"""Rollout benchmarks on the devcluster: the operator on the host, its pods on kwok's fake node (Ready without
serving), its checks answered by the devcluster's real Prometheus.

Measures, against a baseline in the same run:
  - step timing: a 4-step canary (20/40/60/80 %) with 10 s pauses and a check that always passes (`vector(1)`,
    min 1, every 5 s): the time from the first step's bake start to the start of the promotion, over the
    sum of the pauses (the least it can take). GatewayAPI mode (2 stable pods: the route moves, the next
    step's pods start during the bake) and Service mode (1 stable pod: each step's canary pods are a share of
    the requests, so they can only start when the step does, and the step waits for them to be Ready);
  - decision latency: a check whose data crosses its threshold at a known instant T (`vector(time())`,
    max T: Prometheus' own clock) and failureLimit 1; the latency is T to the HTTPRoute's canary weight 0
    arriving on a watch. A check polled every `interval` seconds decides interval / 2 after T on average:
    that is the baseline.

Times are stamped on watch streams (the ModelDeployment's status, the route) as events arrive, never by polling.

Usage: `make cluster`, then
    .venv/bin/python bench/bench_rollout.py [--runs 3] [--decisions 12]
It starts an operator of its own that watches only its namespaces (bench-rollout-*), and prints the result as
JSON and as markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import percentile  # noqa: E402
from devcluster import Layout, Settings  # noqa: E402
from devcluster.monitoring import url as prometheus_url  # noqa: E402
from tests.support.manifests import example_model_deployment, on_fake_node  # noqa: E402

PAUSE_S = 10
WEIGHTS = (20, 40, 60, 80)
INTERVAL_S = 5
PREFIX = "bench-rollout"
GATEWAY = {"mode": "GatewayAPI", "gateway": {"parentRefs": [{"name": "canaria", "namespace": "default"}]}}


def kubectl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=120)
    if result.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result.stdout


class Stamps:
    """Every event of a watch, stamped with wall-clock time as it arrives, for `wait` to search."""

    def __init__(self, list_call: Callable[..., Any], **kwargs: Any) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.changed = threading.Condition()
        self.stream = watch.Watch()
        self.thread = threading.Thread(target=self._run, args=(list_call, kwargs), daemon=True)
        self.thread.start()

    def _run(self, list_call: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        try:
            for event in self.stream.stream(list_call, **kwargs):
                arrived = time.time()
                with self.changed:
                    self.events.append((arrived, event["object"]))
                    self.changed.notify_all()
        except Exception:  # the stream closes when the namespace goes; a wait then times out with the events seen
            pass

    def wait(self, matches: Callable[[dict[str, Any]], bool], after: float, timeout: float = 300) -> float:
        """Arrival time of the first event after `after` whose object matches."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for arrived, obj in self.events:
                    if arrived >= after and matches(obj):
                        return arrived
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching event within {timeout}s; last: {self.events[-1:]}")
                self.changed.wait(left)

    def stop(self) -> None:
        self.stream.stop()


def status_of(obj: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = obj.get("status") or {}
    return result


def model_deployments(namespace: str) -> Stamps:
    api = client.CustomObjectsApi()
    return Stamps(api.list_namespaced_custom_object, group="serving.canaria.dev", version="v1alpha1",
                  namespace=namespace, plural="modeldeployments")  # fmt: skip


def routes(namespace: str) -> Stamps:
    api = client.CustomObjectsApi()
    return Stamps(api.list_namespaced_custom_object, group="gateway.networking.k8s.io", version="v1",
                  namespace=namespace, plural="httproutes")  # fmt: skip


def canary_weight(route: dict[str, Any]) -> int | None:
    for backend in route["spec"]["rules"][0]["backendRefs"]:
        if backend["name"].endswith("-canary"):
            return int(backend["weight"])
    return None


def apply(namespace: str, body: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(on_fake_node(body)))


def ship(namespace: str, version: str) -> float:
    shipped = time.time()
    kubectl("patch", "-n", namespace, "md", "cifar10", "--type=merge", "-p",
            json.dumps({"spec": {"model": {"version": version}}}))  # fmt: skip
    return shipped


def serving(stamps: Stamps, version: str, after: float) -> float:
    return stamps.wait(
        lambda md: (
            status_of(md).get("phase") == "Serving"
            and status_of(md).get("stableVersion") == version
            and not status_of(md).get("canaryVersion")
        ),
        after,
    )


@contextmanager
def namespace() -> Iterator[str]:
    name = f"{PREFIX}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false")


@contextmanager
def operator(kubeconfig: Path, log: Path) -> Iterator[None]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "CANARIA_LOG_LEVEL": "WARNING", "CANARIA_METRICS_PORT": "0"}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "canaria", "run", "--namespace", f"{PREFIX}-*"],
                                   env=env, stdout=out, stderr=out, cwd=ROOT)  # fmt: skip
        try:
            yield
        finally:
            process.terminate()
            process.wait(timeout=30)


# -- step timing --------------------------------------------------------------------------------------------------


def step_timing(mode: str, prometheus: str) -> dict[str, float]:
    steps = [{"weight": weight, "pause": f"{PAUSE_S}s"} for weight in WEIGHTS]
    analysis = {
        "interval": f"{INTERVAL_S}s",
        "minRequests": 0,  # kwok's pods serve nothing: the check alone decides
        "prometheusUrl": prometheus,
        "metrics": [{"name": "always-passes", "query": "vector(1)", "min": 1}],
    }
    replicas = 2 if mode == "GatewayAPI" else 1
    sections: dict[str, Any] = {"rollout": {"steps": steps, "analysis": analysis}, "serving": {"replicas": replicas}}
    if mode == "GatewayAPI":
        sections["traffic"] = GATEWAY
    with namespace() as ns:
        stamps = model_deployments(ns)
        try:
            start = time.time()
            apply(ns, example_model_deployment(**sections))
            serving(stamps, "1.0", start)
            shipped = ship(ns, "2.0")
            first_bake = stamps.wait(
                lambda md: (
                    (r := status_of(md).get("rollout") or {}).get("step", 0) == 0
                    and bool(r.get("bakeStartedAt"))
                    and r.get("phase") == "Progressing"
                ),
                shipped,
            )
            promoting = stamps.wait(lambda md: status_of(md).get("phase") == "Promoting", shipped)
            done = serving(stamps, "2.0", shipped)
        finally:
            stamps.stop()
    steps_s = promoting - first_bake
    return {
        "steps_s": round(steps_s, 2),
        "pauses_s": PAUSE_S * len(WEIGHTS),
        "ratio": round(steps_s / (PAUSE_S * len(WEIGHTS)), 3),
        "first_canary_ready_s": round(first_bake - shipped, 2),
        "promotion_s": round(done - promoting, 2),
        "shipped_to_promoted_s": round(done - shipped, 2),
    }


# -- decision latency ---------------------------------------------------------------------------------------------


def decision_latencies(samples: int, prometheus: str) -> list[float]:
    latencies = []
    with namespace() as ns:
        mds, route = model_deployments(ns), routes(ns)
        try:
            start = time.time()
            apply(ns, example_model_deployment(traffic=GATEWAY))
            serving(mds, "1.0", start)
            for sample in range(samples):
                crossing = time.time() + 15 + (sample % 5)  # the canary bakes well before: T falls mid-interval
                analysis = {
                    "interval": f"{INTERVAL_S}s",
                    "failureLimit": 1,
                    "minRequests": 0,
                    "prometheusUrl": prometheus,
                    "metrics": [{"name": "crosses", "query": "vector(time())", "max": round(crossing, 3)}],
                }
                rollout = {"steps": [{"weight": 50, "pause": "10m"}], "analysis": analysis}
                shipped = time.time()
                version = {"version": f"{sample + 2}.0"}
                apply(ns, example_model_deployment(model=version, rollout=rollout, traffic=GATEWAY))
                route.wait(lambda r: canary_weight(r) == 50, shipped)
                if time.time() > crossing:
                    raise RuntimeError("the canary was not baking before the crossing: raise the 15 s lead")
                rolled_back = route.wait(lambda r: canary_weight(r) == 0, crossing)
                latencies.append(round(rolled_back - crossing, 3))
                mds.wait(lambda md: status_of(md).get("phase") == "RolledBack", shipped)
                reverted = ship(ns, "1.0")  # back to the stable version: the rolled-back rollout ends
                serving(mds, "1.0", reverted)
        finally:
            mds.stop()
            route.stop()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="step-timing runs per traffic mode")
    parser.add_argument("--decisions", type=int, default=12, help="decision-latency samples")
    args = parser.parse_args()
    layout = Layout.resolve(ROOT, Settings())
    ports = json.loads(layout.cluster_file.read_text())["ports"]
    prometheus = prometheus_url(ports)
    config.load_kube_config(str(layout.kubeconfig))
    os.environ["KUBECONFIG"] = str(layout.kubeconfig)
    os.environ["PATH"] = f"{layout.bin_dir}{os.pathsep}{os.environ['PATH']}"
    load_before = os.getloadavg()
    with operator(layout.kubeconfig, layout.logs_dir / "operator-bench-rollout.log"):
        timing = {mode: [step_timing(mode, prometheus) for _ in range(args.runs)] for mode in ("GatewayAPI", "Service")}
        latencies = decision_latencies(args.decisions, prometheus)
    ordered = sorted(latencies)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores",
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "step_timing": timing,
        "decision_latency_s": {
            "samples": ordered,
            "p50": percentile(ordered, 0.5),
            "p99": percentile(ordered, 0.99),
            "interval_s": INTERVAL_S,
            "p50_over_half_interval": round(percentile(ordered, 0.5) / (INTERVAL_S / 2), 3),
        },
    }
    print(json.dumps(result, indent=2))
    for mode, runs in timing.items():
        ratios = ", ".join(f"{run['ratio']:.3f}" for run in runs)
        print(f"| step timing, {mode} | {ratios} | first canary Ready {runs[0]['first_canary_ready_s']} s |")
    print(f"| decision latency (interval {INTERVAL_S} s) | p50 {result['decision_latency_s']['p50']:.2f} s, "
          f"p99 {result['decision_latency_s']['p99']:.2f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
