"""`make demo`: the operator on the local cluster, serving the example model from pods that really run.

1. install the CRD and start the operator (recorded like the cluster's processes, so `make cluster-down`
   stops it too);
2. train the example (the CIFAR-10 network, on scikit-learn's handwritten digits) and put its files on a
   PersistentVolume backed by a directory of this machine;
3. apply examples/cifar10/modeldeployment.yaml: the devcluster's node agent runs the pod, whose init container
   packages the model and whose TorchServe serves it; the operator reports Ready once the readiness probe sees
   the model's workers READY;
4. classify held-out digits through the Service's endpoints, from inside the pod network (there is no
   kube-proxy: devcluster.traffic does its job for its own requests);
5. send a steady load and ask Prometheus, which the Prometheus Operator configured from Canaria's
   ServiceMonitor, what it saw;
6. edit the ModelDeployment the way a user would (2 replicas, bigger batches) and watch the load spread.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from devcluster import Cluster, monitoring, procs
from devcluster.traffic import Load, ServiceEndpoints, admin_api, run
from tests.support.torchserve import encoded_image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = ROOT / "examples" / "cifar10"
EXAMPLE = EXAMPLE_DIR / "modeldeployment.yaml"
sys.path.insert(0, str(EXAMPLE_DIR))
import train  # noqa: E402  the example's training script: its held-out digits are the demo's requests

CLUSTER = Cluster.attach(ROOT)
if CLUSTER is None:
    sys.exit("demo: no running devcluster; run `make demo` (it starts one) or `make cluster`")
LAYOUT = CLUSTER.layout
WORK = LAYOUT.state_dir / "demo"
PV_DIR = WORK / "pv-models"  # what the PersistentVolumeClaim "models" holds
MODELS_VOLUME = f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: canaria-demo-models}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  hostPath: {{path: {PV_DIR}}}
  claimRef: {{namespace: default, name: models}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: models, namespace: default}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: canaria-demo-models
  resources: {{requests: {{storage: 1Gi}}}}
"""
OPERATOR = procs.RunFiles(LAYOUT.run_dir, "canaria-operator")
MODEL_LABEL = "serving.canaria.dev/model-deployment=cifar10"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def kubectl(*args: str, show: bool = True, input: str | None = None) -> str:
    command = [str(LAYOUT.binary("kubectl")), "--kubeconfig", str(LAYOUT.kubeconfig), *args]
    if show:
        print("$ kubectl " + " ".join(args), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, input=input)
    if result.returncode != 0:
        sys.exit(f"demo: kubectl {' '.join(args)} failed:\n{result.stderr}")
    if show:
        print(result.stdout, end="", flush=True)
    return result.stdout


def start_operator() -> None:
    if procs.recorded_pid(OPERATOR):
        print("operator already running")
        return
    log = LAYOUT.logs_dir / "canaria-operator.log"
    env = {**os.environ, "KUBECONFIG": str(LAYOUT.kubeconfig)}
    procs.start([sys.executable, "-m", "canaria", "run"], log, OPERATOR, env=env)
    print(f"operator started, logging to {log.relative_to(ROOT)}")


def wait_ready(name: str) -> None:
    """Ready for the current spec: first the operator must have seen this generation (kstatus's rule),
    else a Ready condition left from before an edit would count."""
    started = time.monotonic()
    generation = kubectl("get", f"md/{name}", "-o", "jsonpath={.metadata.generation}", show=False)
    kubectl("wait", f"--for=jsonpath={{.status.observedGeneration}}={generation}", "--timeout=60s", f"md/{name}")
    kubectl("wait", "--for=condition=Ready", "--timeout=300s", f"md/{name}")
    print(f"(Ready after {time.monotonic() - started:.1f}s)")


def prepare_model_files() -> None:
    """The files a user puts on the volume: the example's code and a freshly trained state_dict (always
    retrained: an old one from another version of train.py would not match the labels)."""
    source = PV_DIR / "cifar10"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    for name in ("model.py", "index_to_name.json", "model-config.yaml"):
        shutil.copy(EXAMPLE_DIR / name, source / name)
    subprocess.run([sys.executable, str(EXAMPLE_DIR / "train.py"), "--out", str(source / "cifar10_net.pt")], check=True)


def classify_held_out_digits(count: int) -> None:
    """Each request goes to one of the Service's ready endpoints, from inside the pod network."""
    digits = train.held_out_digits()
    correct = 0
    with ServiceEndpoints(admin_api(CLUSTER), "default", "cifar10", "http") as endpoints:
        endpoints.wait_for(bool, timeout_s=30)
        for index, (image, label) in enumerate(zip(digits.images[:count], digits.labels[:count], strict=True)):
            load = Load(count=1, duration_s=30, path="/predictions/cifar10", method="POST", body=encoded_image(image))
            result = run(load, endpoints, CLUSTER.pod_network).results[0]
            if not result.ok:
                sys.exit(f"demo: prediction failed: {result.status} {result.error} {result.body[:200]!r}")
            answer: dict[str, float] = json.loads(result.body)
            top = max(answer, key=lambda digit: answer[digit])
            correct += int(top) == int(label)
            if index < 5:
                shown = ", ".join(f"{digit}: {probability:.4f}" for digit, probability in answer.items())
                print(f"  a held-out {label} -> {{{shown}}}  (answered by {result.pod or result.endpoint})")
    print(f"  {correct} of {count} held-out digits classified correctly through the Service")


def steady_load(requests: int, seconds: float) -> dict[str, int]:
    body = encoded_image(train.held_out_digits().images[0])
    load = Load(count=requests, duration_s=seconds, path="/predictions/cifar10", method="POST", body=body,
                rate_per_s=requests / seconds, concurrency=4)  # fmt: skip
    with ServiceEndpoints(admin_api(CLUSTER), "default", "cifar10", "http") as endpoints:
        endpoints.wait_for(bool, timeout_s=30)
        summary = run(load, endpoints, CLUSTER.pod_network).summary
    print(
        f"  {summary.sent} requests in {summary.elapsed_s:.1f}s: {summary.ok} answered 200, "
        f"p50 {summary.p50_ms:.1f} ms, p99 {summary.p99_ms:.1f} ms"
    )
    by_pod: dict[str, int] = summary.by_endpoint
    for endpoint, count in sorted(by_pod.items()):
        print(f"  {endpoint}: {count} requests")
    return by_pod


def prometheus_query(promql: str) -> list[dict[str, Any]]:
    ports = json.loads(LAYOUT.cluster_file.read_text())["ports"]
    url = f"{monitoring.url(ports)}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        result: list[dict[str, Any]] = json.load(response)["data"]["result"]
    return result


def show_what_prometheus_saw(sent: int) -> None:
    """Waits for the scrapes that cover the load, then prints the per-pod counters Prometheus holds."""
    targets = 'up{namespace="default", service="cifar10"}'
    promql = 'sum by (pod, serving_canaria_dev_version) (ts_inference_requests_total{namespace="default"})'
    print(f"  PromQL: {targets}")
    for sample in prometheus_query(targets):
        print(f"    {sample['metric'].get('pod')} up={sample['value'][1]}")
    deadline = time.monotonic() + 90
    samples: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        samples = prometheus_query(promql)
        if sum(float(s["value"][1]) for s in samples) >= sent:
            break
        time.sleep(3)
    print(f"  PromQL: {promql}")
    for sample in samples:
        labels = sample["metric"]
        print(f"    pod {labels.get('pod')}, version {labels.get('serving_canaria_dev_version')}: {sample['value'][1]}")


def main() -> None:
    step("Installing the ModelDeployment CRD")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/modeldeployments.serving.canaria.dev")

    step("Starting the operator")
    start_operator()

    step('Training the example on handwritten digits and putting its files on the volume "models"')
    prepare_model_files()
    kubectl("apply", "-f", "-", input=MODELS_VOLUME, show=False)

    step("Applying the example: its pod packages the model in an init container and serves it with TorchServe")
    kubectl("apply", "-f", str(EXAMPLE))
    wait_ready("cifar10")
    kubectl("get", "md,deployments,services,servicemonitors", "-l", MODEL_LABEL)
    kubectl("get", "pods", "-o", "wide", "-l", MODEL_LABEL)
    kubectl(
        "get", "md", "cifar10", "-o", 'jsonpath={range .status.conditions[*]}{.type}={.status} ({.reason}){"\\n"}{end}'
    )

    step("Classifying held-out digits through the Service's endpoints (from inside the pod network)")
    classify_held_out_digits(count=50)

    step("A steady load, then what Prometheus scraped from the pods (found through Canaria's ServiceMonitor)")
    sent = 50 + sum(steady_load(requests=200, seconds=20).values())
    show_what_prometheus_saw(sent)

    step("Editing it like a user: 2 replicas, batches of up to 16")
    kubectl(
        "patch",
        "md",
        "cifar10",
        "--type=merge",
        "-p",
        '{"spec":{"serving":{"replicas":2,"batching":{"maxBatchSize":16}}}}',
    )
    wait_ready("cifar10")
    kubectl("get", "md", "cifar10")
    kubectl("get", "pods", "-o", "wide", "-l", MODEL_LABEL)
    steady_load(requests=200, seconds=20)
    kubectl("get", "events", "--field-selector", "involvedObject.name=cifar10", "--sort-by=.lastTimestamp")

    step("Done")
    print(
        f"The cluster and the operator keep running. Try:\n"
        f"  export KUBECONFIG={LAYOUT.kubeconfig} PATH={LAYOUT.bin_dir}:$PATH\n"
        f"  kubectl describe md cifar10\n"
        f"  python -m devcluster.traffic --service default/cifar10 --port http --path /ping --count 10 --duration 5\n"
        f"Stop everything with: make cluster-down"
    )


if __name__ == "__main__":
    main()
