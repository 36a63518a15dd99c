"""`make demo`: the operator on the local control plane, serving the CIFAR-10 example.

1. install the CRD and start the operator (recorded like the cluster's processes, so `make cluster-down`
   stops it too);
2. apply examples/cifar10/modeldeployment.yaml and wait for Ready, then show what a user sees;
3. edit it the way a user would (more replicas, bigger batches) and wait for Ready again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from devcluster import procs
from devcluster.layout import Layout, Settings

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = Layout.resolve(ROOT, Settings())
EXAMPLE = ROOT / "examples" / "cifar10" / "modeldeployment.yaml"
OPERATOR = procs.RunFiles(LAYOUT.run_dir, "canaria-operator")


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def kubectl(*args: str, show: bool = True) -> str:
    command = [str(LAYOUT.binary("kubectl")), "--kubeconfig", str(LAYOUT.kubeconfig), *args]
    if show:
        print("$ kubectl " + " ".join(args), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"demo: kubectl {' '.join(args)} failed:\n{result.stderr}")
    if show:
        print(result.stdout, end="", flush=True)
    return result.stdout


def start_operator() -> None:
    if procs.recorded_pid(OPERATOR):
        print("operator already running")
        return
    log = LAYOUT.state_dir / "logs" / "canaria-operator.log"
    env = {**os.environ, "KUBECONFIG": str(LAYOUT.kubeconfig)}
    procs.start([sys.executable, "-m", "canaria", "run"], log, OPERATOR, env=env)
    print(f"operator started, logging to {log.relative_to(ROOT)}")


def wait_ready(name: str) -> None:
    started = time.monotonic()
    kubectl("wait", "--for=condition=Ready", "--timeout=120s", f"md/{name}")
    print(f"(Ready after {time.monotonic() - started:.1f}s)")


def main() -> None:
    step("Installing the ModelDeployment CRD")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/modeldeployments.serving.canaria.dev")

    step("Starting the operator")
    start_operator()

    step("Applying the CIFAR-10 example")
    kubectl("apply", "-f", str(EXAMPLE))
    wait_ready("cifar10")
    kubectl("get", "md,deployments,services,servicemonitors,pods", "-l", "serving.canaria.dev/model-deployment=cifar10")
    kubectl("get", "md", "cifar10")
    kubectl(
        "get", "md", "cifar10", "-o", 'jsonpath={range .status.conditions[*]}{.type}={.status} ({.reason}){"\\n"}{end}'
    )

    step("Editing it like a user: 2 replicas, batches of 8")
    kubectl(
        "patch",
        "md",
        "cifar10",
        "--type=merge",
        "-p",
        '{"spec":{"serving":{"replicas":2,"batching":{"maxBatchSize":8}}}}',
    )
    time.sleep(1)  # let the operator see the new generation before waiting
    wait_ready("cifar10")
    kubectl("get", "md", "cifar10")
    kubectl("get", "events", "--field-selector", "involvedObject.name=cifar10", "--sort-by=.lastTimestamp")

    step("Done")
    print(
        f"The cluster and the operator keep running. Try:\n"
        f"  export KUBECONFIG={LAYOUT.kubeconfig} PATH={LAYOUT.bin_dir}:$PATH\n"
        f"  kubectl explain md.spec.rollout\n"
        f"  kubectl describe md cifar10\n"
        f"Stop everything with: make cluster-down"
    )


if __name__ == "__main__":
    main()
