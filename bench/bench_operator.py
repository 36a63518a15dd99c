"""Operator benchmarks on the local control plane.

Measures, in one run against one cluster with one operator running (`python -m canaria run`):
  - latency: one ModelDeployment applied with kubectl -> its four children exist (ConfigMap, Deployment,
    Service, ServiceMonitor), against two floors sampled in turn with it: `kubectl apply --server-side` of the
    same four children, and the same four server-side applies sent straight to the API from this process;
  - burst: N ModelDeployments in one `kubectl apply` -> all 4N children exist, against the 4N children in one
    `kubectl apply --server-side`;
  - the operator's RSS after the burst, and the write requests the API server saw during --idle seconds with
    nothing changing (from its /metrics).

Completion is seen on watch streams, one per child kind, opened before the samples: each event is stamped
with this process's monotonic clock when it arrives, so a sample ends when its last child's ADDED event
arrives, not at the next poll. How late an event arrives is measured on the direct floor (event arrival
minus the API's response to the request that created the object) and reported as the resolution. The
floors' objects carry the operator's labels with another value (`app.kubernetes.io/managed-by:
bench-floor`), so the operator's watches ignore them.

Usage, on a control plane of its own (no add-ons, our CRD and the ServiceMonitor's), with an operator this
script starts and stops (how docs/benchmarks.md was measured):
    .venv/bin/python bench/bench_operator.py --own-cluster /tmp/bench-cluster [--objects 200] [--samples 30]
or against a running cluster and operator: `make cluster`, start the operator, then
    .venv/bin/python bench/bench_operator.py [--kubeconfig FILE] [--operator-pid PID] [--idle 300]
Prints the result as JSON and as markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import config
from kubernetes.client import ApiClient
from kubernetes.watch.watch import iter_resp_lines

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stats import bootstrap_ratio_ci, mann_whitney, percentile, spread  # noqa: E402

from canaria import kube, reconcile, render, rollout, spec  # noqa: E402
from devcluster import Cluster  # noqa: E402
from devcluster.layout import Layout, Settings  # noqa: E402
from tests.support.manifests import example_model_deployment, on_fake_node  # noqa: E402

LAYOUT = Layout.resolve(ROOT, Settings())
KUBECONFIG = [LAYOUT.kubeconfig]  # the cluster under test; --kubeconfig replaces it
WRITE_RESOURCES = {"modeldeployments", "deployments", "services", "configmaps", "servicemonitors", "events"}
CHILD_KINDS = {
    "Deployment": "/apis/apps/v1/namespaces/{}/deployments",
    "Service": "/api/v1/namespaces/{}/services",
    "ConfigMap": "/api/v1/namespaces/{}/configmaps",
    "ServiceMonitor": "/apis/monitoring.coreos.com/v1/namespaces/{}/servicemonitors",
}
FLOOR_MANAGER = "bench-floor"
Key = tuple[str, str]  # (kind, name)


def kubectl(*args: str, stdin: str | None = None) -> str:
    command = [str(LAYOUT.binary("kubectl")), "--kubeconfig", str(KUBECONFIG[0]), *args]
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result.stdout


def api_client() -> ApiClient:
    return config.new_client_from_config(config_file=str(KUBECONFIG[0]))


def model_deployment(name: str) -> dict[str, Any]:
    # On kwok's fake node, with small requests, so that hundreds of pods fit it.
    body = example_model_deployment(name, serving={"resources": {"requests": {"cpu": "10m", "memory": "64Mi"}}})
    return on_fake_node(body)


def rendered_children(namespace: str, name: str) -> list[dict[str, Any]]:
    """The children the operator's first pass renders for model_deployment(name) (the first version stable)."""
    md = spec.defaulted(
        {
            **model_deployment(name),
            "metadata": {"name": name, "namespace": namespace, "uid": "00000000-0000-0000-0000-000000000000"},
        }
    )
    first_plan = rollout.decide(md["spec"], {}, rollout.Observation(), datetime.datetime.now(datetime.UTC))
    return reconcile.desired_children(md, first_plan, render.Settings(), service_monitor_api=True)


def relabelled(value: Any) -> Any:
    """The object with the operator's managed-by label (metadata, pod template, selectors) set to another value,
    so that no handler of the operator fires for it; sizes and shapes stay the same."""
    if isinstance(value, dict):
        return {
            key: FLOOR_MANAGER if key == render.MANAGED_BY and item == "canaria" else relabelled(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [relabelled(item) for item in value]
    return value


def floor_children(namespace: str, name: str) -> list[dict[str, Any]]:
    children = []
    for child in rendered_children(namespace, name):
        child = relabelled(child)
        child["metadata"].pop("ownerReferences")  # no owner exists for the floor
        children.append(child)
    return children


def keys_of(children: list[dict[str, Any]]) -> set[Key]:
    return {(child["kind"], child["metadata"]["name"]) for child in children}


# -- watching ----------------------------------------------------------------------------------------------------


@dataclass
class ChildWatch:
    """Watch streams of the child kinds in one namespace, recording when each object's ADDED event arrived."""

    namespace: str
    seen: dict[Key, float] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)
    ready: threading.Barrier = field(init=False)
    failure: str | None = None

    def __post_init__(self) -> None:
        self.ready = threading.Barrier(len(CHILD_KINDS) + 1)
        for kind, path in CHILD_KINDS.items():
            threading.Thread(target=self._follow, args=(kind, path.format(self.namespace)), daemon=True).start()
        self.ready.wait(timeout=30)

    def _follow(self, kind: str, path: str) -> None:
        client = api_client()
        version = self._list(client, path)
        self.ready.wait()
        try:
            while True:  # the API server ends a watch after a while: resume from the last version seen
                for line in self._stream(client, path, version):
                    arrived = time.monotonic()
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":  # e.g. 410 Gone: events may have been missed
                        raise RuntimeError(obj.get("message"))
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "ADDED":
                        with self.changed:
                            self.seen.setdefault((kind, obj["metadata"]["name"]), arrived)
                            self.changed.notify_all()
        except Exception as error:  # a broken stream, or the cluster stopping at the end of the run
            with self.changed:
                self.failure = f"{path}: the watch failed: {error}"
                self.changed.notify_all()

    @staticmethod
    def _list(client: ApiClient, path: str) -> str:
        """The collection's current version: the watch reports only what is created after it."""
        version: str = kube.Kube(client).request("GET", path)["metadata"]["resourceVersion"]
        return version

    @staticmethod
    def _stream(client: ApiClient, path: str, version: str) -> Iterator[str]:
        query = f"watch=1&allowWatchBookmarks=false&resourceVersion={version}&timeoutSeconds=1800"
        method, url, headers, _, _ = client.param_serialize(
            "GET", f"{path}?{query}", header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
        )
        response = client.call_api(method, url, header_params=headers)
        yield from iter_resp_lines(response.response)

    def wait(self, keys: set[Key], timeout: float = 900) -> float:
        """The arrival time of the last of keys, once all arrived."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.failure or keys <= self.seen.keys(), timeout=timeout):
                raise RuntimeError(f"{self.namespace}: {len(keys - self.seen.keys())} of {len(keys)} never appeared")
            if self.failure:
                raise RuntimeError(self.failure)
            return max(self.seen[key] for key in keys)


# -- samples -----------------------------------------------------------------------------------------------------


@dataclass
class Latency:
    operator: list[float] = field(default_factory=list)
    kubectl_floor: list[float] = field(default_factory=list)
    api_floor: list[float] = field(default_factory=list)
    watch_lag: list[float] = field(default_factory=list)  # event arrival - API response, direct floor


def apply_with_kubectl(documents: list[dict[str, Any]], namespace: str, *flags: str) -> float:
    """Runs one `kubectl apply`; returns when it started."""
    # JSON, not YAML: PyYAML leaves a string such as a content hash "12e45" unquoted, and kubectl reads a number.
    text = json.dumps({"apiVersion": "v1", "kind": "List", "items": documents})
    started = time.monotonic()
    kubectl("apply", "-n", namespace, *flags, "-f", "-", stdin=text)
    return started


def operator_sample(watch: ChildWatch, name: str) -> float:
    started = apply_with_kubectl([model_deployment(name)], watch.namespace)
    return watch.wait(keys_of(rendered_children(watch.namespace, name))) - started


def kubectl_floor_sample(watch: ChildWatch, name: str) -> float:
    children = floor_children(watch.namespace, name)
    started = apply_with_kubectl(children, watch.namespace, "--server-side", f"--field-manager={FLOOR_MANAGER}")
    return watch.wait(keys_of(children)) - started


def api_floor_sample(watch: ChildWatch, name: str, client: kube.Kube, lags: list[float]) -> float:
    children = floor_children(watch.namespace, name)
    responded: dict[Key, float] = {}
    started = time.monotonic()
    for child in children:
        client.request(
            "PATCH", kube.object_path(child), body=child, query={"fieldManager": FLOOR_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )  # fmt: skip
        responded[(child["kind"], child["metadata"]["name"])] = time.monotonic()
    finished = watch.wait(keys_of(children))
    lags.extend(watch.seen[key] - at for key, at in responded.items())
    return finished - started


def wait_ready(client: kube.Kube, namespace: str, name: str, timeout: float = 120) -> None:
    """Until the operator has reported the object Ready: its trailing work (status, pod events) is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = client.get("serving.canaria.dev/v1alpha1", "ModelDeployment", namespace, name) or {}
        if any(c["type"] == "Ready" and c["status"] == "True" for c in md.get("status", {}).get("conditions", [])):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{namespace}/{name} did not become Ready")


def bench_latency(samples: int, gap: float) -> Latency:
    """Operator and both floors in turn, the order rotating each round so that none always goes first."""
    namespace = fresh_namespace("bench-latency")
    watch = ChildWatch(namespace)
    client = kube.Kube(api_client())
    result = Latency()
    runs: list[tuple[list[float], Callable[[int], float]]] = [
        (result.operator, lambda i: operator_sample(watch, f"op{i}")),
        (result.kubectl_floor, lambda i: kubectl_floor_sample(watch, f"kf{i}")),
        (result.api_floor, lambda i: api_floor_sample(watch, f"af{i}", client, result.watch_lag)),
    ]
    for i in range(samples):
        for offset in range(len(runs)):
            timings, sample = runs[(i + offset) % len(runs)]
            timings.append(sample(i))
            if timings is result.operator:
                wait_ready(client, namespace, f"op{i}")
            time.sleep(gap)  # the controllers' trailing work (ReplicaSets, pods) settles before the next sample
    delete_namespace(namespace)
    return result


def bench_burst(objects: int) -> tuple[float, float]:
    """(operator, floor) seconds: N ModelDeployments in one kubectl apply, and their 4N children in one."""
    floor_watch = ChildWatch(fresh_namespace("bench-burst-floor"))
    children = [c for i in range(objects) for c in floor_children(floor_watch.namespace, f"b{i}")]
    started = apply_with_kubectl(children, floor_watch.namespace, "--server-side", f"--field-manager={FLOOR_MANAGER}")
    floor = floor_watch.wait(keys_of(children)) - started
    wait_settled()
    watch = ChildWatch(fresh_namespace("bench-burst"))
    expected = {key for i in range(objects) for key in keys_of(rendered_children(watch.namespace, f"m{i}"))}
    started = apply_with_kubectl([model_deployment(f"m{i}") for i in range(objects)], watch.namespace)
    return watch.wait(expected) - started, floor


# -- the cluster and the operator --------------------------------------------------------------------------------


def fresh_namespace(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    return name


def delete_namespace(name: str) -> None:
    kubectl("delete", "namespace", name, "--wait=true", "--timeout=300s")


def operator_pid() -> int:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == [b"-m", b"canaria", b"run"]:
            found.append(int(entry.name))
    if len(found) != 1:
        sys.exit(f"bench: expected one operator (python -m canaria run), found pids {found}; pass --operator-pid")
    return found[0]


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def write_requests() -> Counter[str]:
    """Write requests the API server has answered so far, by "VERB resource[/subresource]"."""
    metrics = kubectl("get", "--raw", "/metrics")
    counts: Counter[str] = Counter()
    pattern = re.compile(r"^apiserver_request_total\{(.*)\} (\d+(?:\.\d+)?(?:e\+\d+)?)$")
    for line in metrics.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("verb") in {"POST", "PUT", "PATCH", "DELETE", "APPLY"} and (
            labels.get("resource") in WRITE_RESOURCES
        ):
            subresource = f"/{labels['subresource']}" if labels.get("subresource") else ""
            counts[f"{labels['verb']} {labels['resource']}{subresource}"] += int(float(match.group(2)))
    return counts


def wait_settled(quiet_seconds: float = 15, timeout: float = 900) -> None:
    """Until every ModelDeployment is Serving and no write has reached the API server for quiet_seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phases = kubectl("get", "md", "-A", "-o", "jsonpath={.items[*].status.phase}").split()
        if all(phase == "Serving" for phase in phases):
            break
        time.sleep(2)
    last, quiet_since = write_requests(), time.monotonic()
    while time.monotonic() - quiet_since < quiet_seconds and time.monotonic() < deadline:
        time.sleep(1)
        now = write_requests()
        if now != last:
            last, quiet_since = now, time.monotonic()


@contextlib.contextmanager
def own_cluster(state_dir: Path) -> Iterator[tuple[Path, int]]:
    """(kubeconfig, operator pid): a control plane without add-ons, with the ModelDeployment and ServiceMonitor
    CRDs, and the operator running against it; both stopped afterwards."""
    cluster = Cluster.up(ROOT, Settings(state_dir=state_dir, bin_dir=LAYOUT.bin_dir, install_crds=False))
    operator = None
    try:
        KUBECONFIG[0] = cluster.kubeconfig
        monitors = [f for f in cluster.layout.crd_files if f.name == "monitoring.coreos.com_servicemonitors.yaml"]
        for crd in [ROOT / "crds" / "serving.canaria.dev_modeldeployments.yaml", *monitors]:
            kubectl("apply", "--server-side", "-f", str(crd))
        kubectl("wait", "--for=condition=Established", "crd", "--all")
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "CANARIA_LOG_LEVEL": "WARNING"}
        log = (state_dir / "operator.log").open("wb")
        operator = subprocess.Popen([sys.executable, "-m", "canaria", "run"], env=env, stdout=log, stderr=log)
        yield cluster.kubeconfig, operator.pid
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        cluster.down()


# -- report ------------------------------------------------------------------------------------------------------


def comparison(name: str, operator: list[float], floor: list[float], resolution: float) -> dict[str, Any]:
    low, high = bootstrap_ratio_ci(operator, floor)
    test = mann_whitney(operator, floor)
    return {
        "floor": name,
        "operator_p50": round(statistics.median(operator), 4),
        "operator_p99": round(percentile(operator, 0.99), 4),
        "floor_p50": round(statistics.median(floor), 4),
        "floor_p99": round(percentile(floor, 0.99), 4),
        "ratio_p50": round(statistics.median(operator) / statistics.median(floor), 2),
        "ratio_p50_ci95": [round(low, 2), round(high, 2)],
        "mann_whitney_p": float(f"{test.p_value:.2g}"),
        "resolution_s": round(resolution, 4),
        "operator_spread": spread(operator),
        "floor_spread": spread(floor),
    }


def markdown(result: dict[str, Any]) -> str:
    rows = [
        "| measurement | operator | floor | ratio (95% CI) | resolution |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c in result["latency"]:
        low, high = c["ratio_p50_ci95"]
        rows.append(
            f"| one object, p50, floor = {c['floor']} | {c['operator_p50']:.3f} s | {c['floor_p50']:.3f} s | "
            f"{c['ratio_p50']:.2f} ({low:.2f} to {high:.2f}), Mann-Whitney p = {c['mann_whitney_p']:.2g} | "
            f"{1000 * c['resolution_s']:.1f} ms |"
        )
        rows.append(
            f"| one object, p99, floor = {c['floor']} | {c['operator_p99']:.3f} s | {c['floor_p99']:.3f} s | "
            f"{c['operator_p99'] / c['floor_p99']:.2f} | |"
        )
    burst = result["burst"]
    rows.append(
        f"| {burst['objects']} objects at once -> all {4 * burst['objects']} children exist | "
        f"{burst['operator_s']:.1f} s | {burst['floor_s']:.1f} s | {burst['ratio']:.2f} | "
        f"{1000 * result['resolution_s']:.1f} ms |"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds of rest after each latency sample")
    parser.add_argument("--operator-pid", type=int)
    parser.add_argument("--kubeconfig", type=Path, default=LAYOUT.kubeconfig, help="default: the devcluster's")
    parser.add_argument("--own-cluster", type=Path, metavar="STATE_DIR", help="start (and stop) a cluster there")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.own_cluster:
            args.kubeconfig, args.operator_pid = stack.enter_context(own_cluster(args.own_cluster))
        KUBECONFIG[0] = args.kubeconfig
        result = run(args, args.operator_pid or operator_pid())
    print(json.dumps(result, indent=2))
    print(markdown(result))


def run(args: argparse.Namespace, pid: int) -> dict[str, Any]:
    load_before = os.getloadavg()
    wait_settled()
    latency = bench_latency(args.samples, args.gap)
    wait_settled()
    burst, burst_floor = bench_burst(args.objects)
    wait_settled()
    rss = rss_mb(pid)
    before = write_requests()
    time.sleep(args.idle)
    idle_writes = write_requests() - before  # Counter subtraction keeps the positive counts only
    lags = sorted(abs(lag) for lag in latency.watch_lag)
    resolution = percentile(lags, 0.99)  # how late (or early) an event may be against the response it follows
    result = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores",
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "samples": args.samples,
        "watch_lag_ms": {
            "p50": round(1000 * statistics.median(latency.watch_lag), 2),
            "p99_abs": round(1000 * resolution, 2),
            "max_abs": round(1000 * lags[-1], 2),
        },
        "resolution_s": resolution,
        "latency": [
            comparison("kubectl apply --server-side", latency.operator, latency.kubectl_floor, resolution),
            comparison("direct server-side applies", latency.operator, latency.api_floor, resolution),
        ],
        "burst": {"objects": args.objects, "operator_s": burst, "floor_s": burst_floor, "ratio": burst / burst_floor},
        "rss_mb_after_burst": round(rss, 1),
        "idle_seconds": args.idle,
        "idle_writes": idle_writes.total(),
        "idle_writes_by_request": dict(idle_writes.most_common()),
    }
    return result


if __name__ == "__main__":
    main()
