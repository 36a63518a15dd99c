"""Leader failover: how long after the leading operator replica dies (SIGKILL) a standby leads, and reconciles.

Two replicas with the Helm chart's command line and environment (tests/support/replicas.py: election on, the
pod name as identity), as processes on this machine, against a control plane of this script's own (no add-ons,
our CRD) with one ModelDeployment on kwok's fake node. Each run: a fresh Lease; replica A leads and reconciles
the ModelDeployment, replica B waits; after a random 0-2 s (so the kill falls anywhere in A's 2 s renewal cycle)
A is killed, and the script measures, on its monotonic clock from the kill:
  - takeover: B logs that it leads (its Lease update succeeded);
  - first reconcile: B's Kopf logs its first finished pass over the ModelDeployment.
The log is polled every 50 ms (the resolution). The lease settings bound the takeover at 13-19 s
(canaria.leader: LEASE_DURATION - RETRY_PERIOD to LEASE_DURATION + 2 RETRY_PERIOD).

Usage: .venv/bin/python bench/bench_failover.py [--runs 5] [--state-dir /tmp/bench-failover]
Prints the result as JSON and a markdown row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

import yaml  # noqa: E402

from canaria.leader import LEASE_DURATION, RETRY_PERIOD  # noqa: E402
from devcluster import Cluster  # noqa: E402
from devcluster.layout import Layout, Settings  # noqa: E402
from tests.support.manifests import example_model_deployment, on_fake_node  # noqa: E402
from tests.support.replicas import chart_container, start_replica  # noqa: E402

LAYOUT = Layout.resolve(ROOT, Settings())
RELEASE, NAMESPACE = "canaria", "canaria-system"
LEADS, RECONCILED = "leads now", "Handler 'model_deployment_changed' succeeded"
POLL = 0.05


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    command = [str(LAYOUT.binary("kubectl")), "--kubeconfig", str(kubeconfig), *args]
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result.stdout


def seen(replica: Any, text: str, timeout: float, after: int = 0) -> float:
    """Monotonic time at which `text` appears in the replica's log beyond character `after`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in replica.log()[after:]:
            return time.monotonic()
        if not replica.alive():
            raise RuntimeError(f"{replica.pod} exited:\n{replica.log()[-2000:]}")
        time.sleep(POLL)
    raise RuntimeError(f"{replica.pod}: no {text!r} after {timeout}s:\n{replica.log()[-2000:]}")


def one_run(container: dict[str, Any], kubeconfig: Path, logs: Path, index: int) -> dict[str, float]:
    lease = f"{RELEASE}-bench-{index}-{uuid.uuid4().hex[:4]}"
    start = lambda pod: start_replica(container, pod, NAMESPACE, kubeconfig, logs, CANARIA_LEASE_NAME=lease)  # noqa: E731
    first = start(f"{lease}-a")
    second = None
    try:
        seen(first, LEADS, 60)
        seen(first, RECONCILED, 60)
        second = start(f"{lease}-b")
        seen(second, "waits", 60)
        time.sleep(random.uniform(0, RETRY_PERIOD))  # anywhere in the leader's renewal cycle
        first.kill()
        killed = time.monotonic()
        took_over = seen(second, LEADS, LEASE_DURATION + 4 * RETRY_PERIOD + 30) - killed
        reconciled = seen(second, RECONCILED, 60) - killed
        return {"takeover_s": round(took_over, 3), "first_reconcile_s": round(reconciled, 3)}
    finally:
        for replica in (first, second):
            if replica is not None:
                replica.stop()


def spread(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--state-dir", type=Path, help="the control plane's state (default: a temporary dir)")
    args = parser.parse_args()
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="bench-failover-"))
    cluster = Cluster.up(ROOT, Settings(state_dir=state, bin_dir=LAYOUT.bin_dir, install_crds=False))
    os.environ.update(cluster.env())  # helm and kubectl on PATH
    load_before = os.getloadavg()
    runs = []
    try:
        kubeconfig = cluster.kubeconfig
        kubectl(
            kubeconfig, "apply", "--server-side", "-f", str(ROOT / "crds" / "serving.canaria.dev_modeldeployments.yaml")
        )
        kubectl(kubeconfig, "wait", "--for=condition=Established", "crd", "--all")
        kubectl(kubeconfig, "create", "namespace", NAMESPACE)
        body = on_fake_node(example_model_deployment())
        kubectl(kubeconfig, "apply", "-n", "default", "-f", "-", stdin=yaml.safe_dump(body))
        container = chart_container(RELEASE, NAMESPACE)
        for index in range(args.runs):
            runs.append(one_run(container, kubeconfig, state / "operator-logs", index))
            print(json.dumps(runs[-1]), file=sys.stderr)
    finally:
        cluster.down()
    takeover = [run["takeover_s"] for run in runs]
    reconcile = [run["first_reconcile_s"] for run in runs]
    result = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores",
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "lease": {"duration_s": LEASE_DURATION, "retry_period_s": RETRY_PERIOD},
        "bound_s": [LEASE_DURATION - RETRY_PERIOD, LEASE_DURATION + 2 * RETRY_PERIOD],
        "resolution_s": POLL,
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    print(
        f"| leader SIGKILLed → standby leads / reconciles, min / median / max of {len(runs)} runs | "
        f"{spread(takeover)} / {spread(reconcile)} | {result['bound_s'][0]:g}-{result['bound_s'][1]:g} s "
        "(from the lease settings) | `bench/bench_failover.py` |"
    )


if __name__ == "__main__":
    main()
