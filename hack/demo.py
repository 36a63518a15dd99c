"""`make demo`: the operator on the local control plane, serving the CIFAR-10 example.

1. install the CRD and start the operator (recorded like the cluster's processes, so `make cluster-down`
   stops it too);
2. apply examples/cifar10/modeldeployment.yaml and wait for Ready, then show what a user sees;
3. do the serving pod's work for real on this machine (kwok's pods run no containers): train the example,
   run the init container's exact command from the live Deployment (`python -m canaria.package`), start
   TorchServe with the config.properties from the operator's ConfigMap, wait on the pod's own readiness
   probe, classify a few generated images and read TorchServe's metrics;
4. edit the ModelDeployment the way a user would (more replicas, bigger batches) and wait for Ready again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

from devcluster import procs
from devcluster.layout import Layout, Settings
from tests.support.torchserve import Ports, encoded_image, on_loopback, start_with_config

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = Layout.resolve(ROOT, Settings())
EXAMPLE_DIR = ROOT / "examples" / "cifar10"
EXAMPLE = EXAMPLE_DIR / "modeldeployment.yaml"
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


def apply_text(manifest: str) -> None:
    command = [str(LAYOUT.binary("kubectl")), "--kubeconfig", str(LAYOUT.kubeconfig), "apply", "-f", "-"]
    subprocess.run(command, input=manifest, text=True, check=True)


def start_operator() -> None:
    if procs.recorded_pid(OPERATOR):
        print("operator already running")
        return
    log = LAYOUT.state_dir / "logs" / "canaria-operator.log"
    env = {**os.environ, "KUBECONFIG": str(LAYOUT.kubeconfig)}
    procs.start([sys.executable, "-m", "canaria", "run"], log, OPERATOR, env=env)
    print(f"operator started, logging to {log.relative_to(ROOT)}")


def wait_ready(name: str) -> None:
    """Ready for the current spec: first the operator must have seen this generation (kstatus's rule),
    else a Ready condition left from before an edit would count."""
    started = time.monotonic()
    generation = kubectl("get", f"md/{name}", "-o", "jsonpath={.metadata.generation}", show=False)
    kubectl("wait", f"--for=jsonpath={{.status.observedGeneration}}={generation}", "--timeout=60s", f"md/{name}")
    kubectl("wait", "--for=condition=Ready", "--timeout=120s", f"md/{name}")
    print(f"(Ready after {time.monotonic() - started:.1f}s)")


def prepare_model_files() -> None:
    """The files a user puts on the PVC: the example's code and a freshly trained state_dict."""
    source = PV_DIR / "cifar10"
    source.mkdir(parents=True, exist_ok=True)
    for name in ("model.py", "index_to_name.json", "model-config.yaml"):
        shutil.copy(EXAMPLE_DIR / name, source / name)
    if not (source / "cifar10_net.pt").exists():
        subprocess.run(
            [sys.executable, str(EXAMPLE_DIR / "train.py"), "--out", str(source / "cifar10_net.pt")], check=True
        )


def local_path(pod_path: str, store: Path, config: Path) -> str:
    """Where a path of the serving pod lives in this demo."""
    mapping = {
        "/mnt/models": str(PV_DIR),
        "/home/model-server/model-store": str(store),
        "/etc/canaria/config.properties": str(config),
        "/dev/termination-log": str(WORK / "termination-log"),
    }
    for prefix, local in mapping.items():
        if pod_path.startswith(prefix):
            return local + pod_path[len(prefix) :]
    return pod_path


def serve_like_the_pod(ports: Ports) -> None:
    store, config = WORK / "model-store", WORK / "config.properties"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    data = json.loads(kubectl("get", "configmap", "cifar10-stable-config", "-o", "json", show=False))["data"]
    config.write_text(on_loopback(data["config.properties"], ports, store))
    pod = json.loads(kubectl("get", "deployment", "cifar10-stable", "-o", "json", show=False))["spec"]["template"]
    init = pod["spec"]["initContainers"][0]
    args = [local_path(arg, store, config) for arg in init["args"]]
    print("$ python -m canaria.package " + " ".join(args), flush=True)
    started = time.monotonic()
    subprocess.run([sys.executable, *init["command"][1:], *args], check=True)
    print(f"(packaged in {time.monotonic() - started:.1f}s)")

    probe = pod["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]  # python3 model_ready.py ...
    (WORK / "model_ready.py").write_text(data["model_ready.py"])
    probe_command = [sys.executable, str(WORK / "model_ready.py"), *probe[2:], f"http://127.0.0.1:{ports.management}"]
    with start_with_config(store / "config.properties", store, ports, WORK / "torchserve") as server:
        started = time.monotonic()
        while subprocess.run(probe_command, capture_output=True).returncode != 0:
            if time.monotonic() - started > 180:
                sys.exit("demo: the model did not become ready within 3 minutes:\n" + server.log_tail())
            time.sleep(0.5)
        print(f"readiness probe passed after {time.monotonic() - started:.1f}s: {' '.join(probe[:2])} ...")
        classify_generated_images(server.inference_url)
        metrics = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
        for line in metrics.splitlines():
            if line.startswith(("ts_inference_requests_total", "ts_inference_latency_microseconds")):
                print("  " + line)


def classify_generated_images(url: str) -> None:
    sys.path.insert(0, str(EXAMPLE_DIR))
    import train  # the example's trainer and its held-out digits

    labels = json.loads((EXAMPLE_DIR / "index_to_name.json").read_text())
    digits = train.first_of_each_class(train.held_out_digits())
    for digit in range(4):
        body = encoded_image(digits.images[digit])
        answer = requests.post(f"{url}/predictions/cifar10", data=body, timeout=30).json()
        top = ", ".join(f"{label} {probability:.3f}" for label, probability in answer.items())
        print(f"  a held-out handwritten {labels[str(digit)]!r} -> {top}")


def main() -> None:
    step("Installing the ModelDeployment CRD")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/modeldeployments.serving.canaria.dev")

    step("Starting the operator")
    start_operator()

    step('Training the example and putting its files on the PVC "models"')
    prepare_model_files()
    apply_text(MODELS_VOLUME)

    step("Applying the CIFAR-10 example")
    kubectl("apply", "-f", str(EXAMPLE))
    wait_ready("cifar10")
    kubectl("get", "md,deployments,services,servicemonitors,pods", "-l", "serving.canaria.dev/model-deployment=cifar10")
    kubectl("get", "md", "cifar10")
    kubectl(
        "get", "md", "cifar10", "-o", 'jsonpath={range .status.conditions[*]}{.type}={.status} ({.reason}){"\\n"}{end}'
    )

    step("The serving pod's work, for real: package with the init container's command, serve with TorchServe")
    serve_like_the_pod(Ports())

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
