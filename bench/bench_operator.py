"""Operator benchmarks on the local control plane (issue: the reconcile core).

Measures, in one run against one cluster:
  - burst: N ModelDeployments applied at once -> seconds until every one has all its children;
  - latency: one ModelDeployment applied -> its children exist (p50, p99 over --samples);
  - floor: `kubectl apply` of the same rendered children -> they exist (p50, p99), and the ratio;
  - the operator's RSS after the burst;
  - write requests the API server saw during --idle seconds with nothing changing (read from its
    /metrics: verbs POST/PUT/PATCH/DELETE/APPLY on the resources the operator writes).

Usage: make cluster && .venv/bin/python bench/bench_operator.py [--objects 200] [--samples 30] [--idle 300]
Prints a markdown block for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from canaria import reconcile, render, spec  # noqa: E402
from devcluster.layout import Layout, Settings  # noqa: E402
from tests.support.manifests import example_model_deployment  # noqa: E402

LAYOUT = Layout.resolve(ROOT, Settings())
KUBECTL = [str(LAYOUT.binary("kubectl")), "--kubeconfig", str(LAYOUT.kubeconfig)]
WRITE_RESOURCES = {"modeldeployments", "deployments", "services", "configmaps", "servicemonitors", "events"}
CHILD_KINDS = "deployments,services,configmaps,servicemonitors"


def kubectl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run([*KUBECTL, *args], input=stdin, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result.stdout


def model_deployment(name: str) -> dict:
    # Small requests, so that hundreds of pods fit the fake node.
    return example_model_deployment(name, serving={"resources": {"requests": {"cpu": "10m", "memory": "64Mi"}}})


def children_count(namespace: str) -> int:
    out = kubectl("get", CHILD_KINDS, "-n", namespace, "-l", f"{render.MANAGED_BY}=canaria", "-o", "name")
    return len(out.split())


def wait_children(namespace: str, expected: int, timeout: float = 600) -> float:
    started = time.monotonic()
    while children_count(namespace) < expected:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timeout waiting for {expected} children in {namespace}")
        time.sleep(0.05)
    return time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def operator_pid() -> int:
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"canaria" in argv and b"run" in argv:
            return int(entry.name)
    sys.exit("bench: no operator running (start one: python -m canaria run)")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def write_requests() -> int:
    metrics = kubectl("get", "--raw", "/metrics")
    total = 0
    pattern = re.compile(r"^apiserver_request_total\{(.*)\} (\d+(?:\.\d+)?(?:e\+\d+)?)$")
    for line in metrics.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("verb") in {"POST", "PUT", "PATCH", "DELETE", "APPLY"} and (
            labels.get("resource") in WRITE_RESOURCES
        ):
            total += int(float(match.group(2)))
    return total


def wait_settled(quiet_seconds: float = 15, timeout: float = 900) -> None:
    """Until every ModelDeployment is Serving and no write has reached the API server for quiet_seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phases = kubectl("get", "md", "-A", "-o", "jsonpath={.items[*].status.phase}").split()
        if phases and all(phase == "Serving" for phase in phases):
            break
        time.sleep(2)
    last, quiet_since = write_requests(), time.monotonic()
    while time.monotonic() - quiet_since < quiet_seconds and time.monotonic() < deadline:
        time.sleep(1)
        now = write_requests()
        if now != last:
            last, quiet_since = now, time.monotonic()


def fresh_namespace(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    return name


def rendered_children(namespace: str, name: str) -> list[dict]:
    md = spec.defaulted(
        {
            **model_deployment(name),
            "metadata": {"name": name, "namespace": namespace, "uid": "00000000-0000-0000-0000-000000000000"},
        }
    )
    children = reconcile.desired_children(md, render.Settings(), service_monitor_api=True)
    for child in children:
        child["metadata"].pop("ownerReferences")  # no owner exists for the floor
    return children


def bench_burst(objects: int) -> float:
    namespace = fresh_namespace("burst")
    docs = "---\n".join(yaml.safe_dump(model_deployment(f"m{i}")) for i in range(objects))
    started = time.monotonic()
    kubectl("apply", "-n", namespace, "-f", "-", stdin=docs)
    wait_children(namespace, 4 * objects)
    return time.monotonic() - started


def bench_burst_floor(objects: int) -> float:
    """The same children for `objects` ModelDeployments, applied at once by kubectl: the floor of the burst."""
    namespace = fresh_namespace("burst-floor")
    docs = "---\n".join(yaml.safe_dump(c) for i in range(objects) for c in rendered_children(namespace, f"b{i}"))
    started = time.monotonic()
    kubectl("apply", "--server-side", "--field-manager=floor", "-n", namespace, "-f", "-", stdin=docs)
    wait_children(namespace, 4 * objects)
    return time.monotonic() - started


def bench_latency(samples: int) -> list[float]:
    namespace = fresh_namespace("latency")
    timings = []
    for i in range(samples):
        started = time.monotonic()
        kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(model_deployment(f"l{i}")))
        wait_children(namespace, 4 * (i + 1))
        timings.append(time.monotonic() - started)
    return timings


def bench_floor(samples: int) -> list[float]:
    namespace = fresh_namespace("floor")
    timings = []
    for i in range(samples):
        docs = "---\n".join(yaml.safe_dump(c) for c in rendered_children(namespace, f"f{i}"))
        started = time.monotonic()
        kubectl("apply", "--server-side", "--field-manager=floor", "-n", namespace, "-f", "-", stdin=docs)
        wait_children(namespace, 4 * (i + 1))
        timings.append(time.monotonic() - started)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--idle", type=int, default=300)
    args = parser.parse_args()
    pid = operator_pid()
    floor = bench_floor(args.samples)
    latency = bench_latency(args.samples)
    burst_floor = bench_burst_floor(args.objects)
    burst = bench_burst(args.objects)
    wait_settled()
    rss = rss_mb(pid)
    before = write_requests()
    time.sleep(args.idle)
    idle_writes = write_requests() - before
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    p50, p99 = statistics.median(latency), percentile(latency, 0.99)
    f50, f99 = statistics.median(floor), percentile(floor, 0.99)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {cpu}",
        "burst_objects": args.objects,
        "burst_seconds": round(burst, 2),
        "burst_floor_seconds": round(burst_floor, 2),
        "burst_ratio": round(burst / burst_floor, 2),
        "latency_p50": round(p50, 3),
        "latency_p99": round(p99, 3),
        "floor_p50": round(f50, 3),
        "floor_p99": round(f99, 3),
        "ratio_p50": round(p50 / f50, 2),
        "rss_mb_after_burst": round(rss, 1),
        "idle_seconds": args.idle,
        "idle_writes": idle_writes,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
