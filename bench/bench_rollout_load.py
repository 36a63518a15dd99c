"""Requests failed during a promotion and during a rollback, under steady load, on the live data plane.

The full loop: the operator on the host, TorchServe pods run by the devcluster's node agent, Prometheus fed by
the ServiceMonitor, load at 5 requests/s through the model's Service from inside the pod network (bounded
runs of 10 s). Version 1.0 serves; 2.0 (the same model) is shipped, goes through a 50 % step and is promoted;
3.0 (a handler that fails every third batch) is shipped and rolled back by ErrorRate. For each rollout, from
the edit until 10 s after it ended, every request is counted: answered by a stable pod, by the canary, or
with no answer at all (a pod removed under a request would show here). The baseline is the same load with no
rollout for the same length, before the first edit.

Usage: `make cluster`, then
    .venv/bin/python bench/bench_rollout_load.py
It starts an operator of its own (namespaces bench-load-*) and prints JSON and a markdown row.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devcluster import Cluster  # noqa: E402
from tests.e2e import rollouts  # noqa: E402
from tests.e2e.conftest import EXAMPLE, MODEL_FILES, local_volume, serving_model  # noqa: E402
from tests.e2e.test_serving import apply_md, wait_ready  # noqa: E402
from tests.integration.conftest import Operator, kubectl  # noqa: E402
from tests.support.clusters import environment_of  # noqa: E402

SETTLE_S = 10  # load kept up after a rollout ends: a pod removed late would fail requests here


def counted(results: list[Any]) -> dict[str, int]:
    def count(keep: Callable[[Any], bool]) -> int:
        return sum(1 for result in results if keep(result))

    return {
        "requests": len(results),
        "failed": count(lambda r: not r.ok),
        "failed_on_stable_pods": count(lambda r: not r.ok and "-stable-" in r.pod),
        "failed_on_canary_pods": count(lambda r: not r.ok and "-canary-" in r.pod),
        "no_answer": count(lambda r: r.status is None),
    }


def under_load(cluster: Cluster, namespace: str, action: Callable[[], None]) -> dict[str, int]:
    network = cluster.pod_network
    with rollouts.service_load(cluster, network, namespace) as load:
        action()
        time.sleep(SETTLE_S)
    return counted(load.results())


def main() -> None:
    cluster = Cluster.attach(ROOT)
    if cluster is None:
        raise SystemExit("no devcluster: run `make cluster` first")
    with environment_of(cluster), tempfile.TemporaryDirectory(prefix="bench-load-") as scratch:
        root = Path(scratch)
        source = root / "trained"
        source.mkdir()
        for name in MODEL_FILES:
            shutil.copy(EXAMPLE / name, source / name)
        subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--out", str(source / "cifar10_net.pt")],
                       check=True, capture_output=True)  # fmt: skip
        rollouts.good_source(source, root)
        rollouts.handler_source(source, root, "flaky", rollouts.FLAKY_HANDLER)
        namespace = f"bench-load-{uuid.uuid4().hex[:6]}"
        kubectl("create", "namespace", namespace)
        operator = Operator(log_name="operator-bench-load.log", namespaces="bench-load-*")
        operator.start()
        try:
            local_volume(namespace, "models", root)
            analysis = {
                "interval": "10s",
                "failureLimit": 2,
                "minRequests": 5,
                "prometheusUrl": rollouts.prometheus_url(cluster),
                "metrics": [{"name": "error-rate", "builtin": "ErrorRate", "max": 5}],
            }
            rollout = {"steps": [{"weight": 50, "pause": "30s"}], "progressDeadline": "5m", "analysis": analysis}
            apply_md(namespace, serving_model(rollout=rollout, monitoring={"serviceMonitor": {"interval": "5s"}}))
            wait_ready(namespace, "cifar10")
            watch = rollouts.StatusWatch(namespace)
            timings: dict[str, float] = {}

            def promote() -> None:
                started = time.monotonic()
                rollouts.replace_model(namespace, {**serving_model()["spec"]["model"], "version": "2.0"})
                watch.until(lambda s: s.get("phase") == "Serving" and s.get("stableVersion") == "2.0", 600, "2.0")
                timings["promotion_s"] = time.monotonic() - started

            def roll_back() -> None:
                started = time.monotonic()
                rollouts.replace_model(namespace, rollouts.handler_model("flaky", "3.0"))
                watch.until(lambda s: s.get("phase") == "RolledBack", 600, "3.0 rolled back")
                timings["rollback_s"] = time.monotonic() - started

            baseline_started = time.monotonic()
            baseline = under_load(cluster, namespace, lambda: time.sleep(60))
            timings["baseline_s"] = time.monotonic() - baseline_started
            promotion = under_load(cluster, namespace, promote)
            rollback = under_load(cluster, namespace, roll_back)
        finally:
            kubectl("delete", "namespace", namespace, "--wait=false")
            operator.stop()
    result = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores",
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "rate_per_s": 5,
        "seconds": {key: round(value, 1) for key, value in timings.items()},
        "baseline_no_rollout": baseline,
        "promotion_of_2.0": promotion,
        "rollback_of_3.0": rollback,
        "phases_seen": watch.seen,
    }
    print(json.dumps(result, indent=2))
    print(
        f"| failed requests under 5/s: no rollout {baseline['failed']} of {baseline['requests']}; promotion "
        f"{promotion['failed']} of {promotion['requests']}; rollback {rollback['failed_on_stable_pods']} on stable "
        f"pods and {rollback['no_answer']} unanswered of {rollback['requests']} (the flaky canary's own 5xx: "
        f"{rollback['failed_on_canary_pods']}) |"
    )


if __name__ == "__main__":
    main()
