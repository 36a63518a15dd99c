"""`make demo`: the operator on the local cluster, serving the example model from pods that really run, then
shipping two new versions the way a user would: one is promoted, one is rolled back by the canary analysis.

Act 1. install the CRD and start the operator for namespace canaria-demo only (recorded like the cluster's
       processes, so `make cluster-down` stops it too; `hack/demo.py --stop-operator` stops just it);
Act 2. train the example (the CIFAR-10 network, on scikit-learn's handwritten digits) three times over, one
       source directory per version, on a PersistentVolume backed by a directory of this machine:
       1.0, 2.0 (retrained with another seed) and 3.0 (2.0 with examples/cifar10/flaky_classifier.py, a
       handler whose every third batch fails);
Act 3. apply examples/cifar10/modeldeployment.yaml: the devcluster's node agent runs the pod, whose init
       container packages the model and whose TorchServe serves it; Ready once its workers are READY;
Act 4. classify held-out digits through the Service's endpoints, from inside the pod network (there is no
       kube-proxy: devcluster.traffic does its job for its own requests);
Act 5. a steady load, and what Prometheus (configured from Canaria's ServiceMonitor) saw;
Act 6. edit the ModelDeployment like a user: 2 replicas, bigger batches; then demo-speed rollout settings;
Act 7. under a background load from inside the pod network: ship 2.0 with one `kubectl patch` and follow it
       through the canary steps on live metrics to its promotion; ship 3.0 the same way and follow the
       analysis rolling it back; each decision is shown with the checks of status.rollout and the counters
       Prometheus held at that instant;
Act 8. what the background load saw: every request to a stable pod answered.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devcluster import Cluster, monitoring, procs
from devcluster.traffic import Load, Result, ServiceEndpoints, admin_api, run
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
PORTS = json.loads(LAYOUT.cluster_file.read_text())["ports"]
PROMETHEUS = monitoring.url(PORTS)  # Prometheus' API on a loopback forward
WORK = LAYOUT.state_dir / "demo"
PV_DIR = WORK / "pv-models"  # what the PersistentVolumeClaim "models" holds
NAMESPACE = "canaria-demo"  # the demo's operator watches this namespace only: tests run operators of their own
NAME = "cifar10"
MODELS_VOLUME = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: canaria-demo-models}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  hostPath: {{path: {PV_DIR}}}
  claimRef: {{namespace: {NAMESPACE}, name: models}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: models, namespace: {NAMESPACE}}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: canaria-demo-models
  resources: {{requests: {{storage: 1Gi}}}}
"""
OPERATOR = procs.RunFiles(LAYOUT.run_dir, "canaria-operator")
MODEL_LABEL = f"serving.canaria.dev/model-deployment={NAME}"
EXAMPLE_FILES = ("model.py", "index_to_name.json", "model-config.yaml")
V3_HANDLER_FILES = ("image_classifier.py", "canaria_base.py")  # the built-in handler flaky_classifier.py extends

# Short steps so the two rollouts take minutes (the example's own: 10 % then 50 %, a minute each, checks
# every 30 s). The ServiceMonitor's 5 s scrapes give each 15 s analysis window three samples per pod.
STEPS = [{"weight": 25}, {"weight": 50}]
ANALYSIS_INTERVAL = "15s"
DEMO_ROLLOUT = {
    "monitoring": {"serviceMonitor": {"interval": "5s"}},
    "rollout": {
        "steps": STEPS,
        "stepInterval": "30s",
        "progressDeadline": "5m",
        "analysis": {
            "interval": ANALYSIS_INTERVAL,
            "minRequests": 5,
            "failureLimit": 2,
            "metrics": [
                {"name": "error-rate", "builtin": "ErrorRate", "max": 1},
                {"name": "latency", "builtin": "MeanLatency", "maxIncreaseOverStablePercent": 50},
            ],
        },
    },
}
UNITS = {"error-rate": "%", "latency": "ms"}
SHIP_V2 = {"spec": {"model": {"version": "2.0", "storageUri": "pvc://models/cifar10-v2"}}}
SHIP_V3 = {
    "spec": {
        "model": {
            "version": "3.0",
            "storageUri": "pvc://models/cifar10-v3",
            "handler": "flaky_classifier.py",
            "extraFiles": ["index_to_name.json", *V3_HANDLER_FILES],
        }
    }
}
LOAD_RATE_PER_S = 5.0
ROLLOUT_TIMEOUT_S = 600
STARTED = time.monotonic()


def step(text: str) -> None:
    elapsed = time.monotonic() - STARTED
    print(f"\n==> [{elapsed // 60:.0f}m{elapsed % 60:02.0f}s] {text}", flush=True)


def kubectl(*args: str, show: bool = True, input: str | None = None) -> str:
    command = [str(LAYOUT.binary("kubectl")), "--kubeconfig", str(LAYOUT.kubeconfig), *args]
    if show:
        print("$ " + shlex.join(["kubectl", *args]), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, input=input)
    if result.returncode != 0:
        sys.exit(f"demo: kubectl {shlex.join(args)} failed:\n{result.stderr}")
    if show:
        print(result.stdout, end="", flush=True)
    return result.stdout


def patch(body: dict[str, Any]) -> None:
    """`kubectl patch --type=merge`, printed so that it can be pasted."""
    kubectl("patch", "md", NAME, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(body, separators=(",", ":")))


def model_deployment() -> dict[str, Any]:
    path = f"/apis/serving.canaria.dev/v1alpha1/namespaces/{NAMESPACE}/modeldeployments/{NAME}"
    code, body = admin_api(CLUSTER).get(path)
    if code != 200:
        sys.exit(f"demo: reading md/{NAME} answered {code}: {body}")
    result: dict[str, Any] = body
    return result


def prometheus_query(promql: str, at: str | None = None) -> list[dict[str, Any]]:
    """An instant query, now or at an RFC 3339 instant (the moment an analysis ran)."""
    params = {"query": promql, **({"time": at} if at else {})}
    with urllib.request.urlopen(f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode(params), timeout=10) as answer:
        result: list[dict[str, Any]] = json.load(answer)["data"]["result"]
    return result


# -- the operator ------------------------------------------------------------------------------------------


def operator_argv() -> list[str]:
    return [sys.executable, "-m", "canaria", "run", "--namespace", NAMESPACE]


def start_operator() -> None:
    """Always a fresh one with this demo's flags: an operator left by an earlier demo may watch every
    namespace (and fight the tests' operators) or lack the Prometheus setting."""
    if procs.recorded_pid(OPERATOR):
        procs.stop([OPERATOR])
        print("stopped the operator an earlier demo left running")
    log = LAYOUT.logs_dir / "canaria-operator.log"
    env = {**os.environ, "KUBECONFIG": str(LAYOUT.kubeconfig), "CANARIA_PROMETHEUS_URL": PROMETHEUS}
    procs.start(operator_argv(), log, OPERATOR, env=env)
    print(f"operator started for namespace {NAMESPACE}, checks against Prometheus at {PROMETHEUS}")
    print(f"  python -m canaria run --namespace {NAMESPACE}, logging to {log.relative_to(ROOT)}")


def stop_operator() -> None:
    pid = procs.recorded_pid(OPERATOR)
    procs.stop([OPERATOR])
    print(f"stopped the demo's operator (pid {pid})" if pid else "the demo's operator is not running")


# -- acts 1-3: the example, served -------------------------------------------------------------------------


def wait_ready() -> None:
    """Ready for the current spec: first the operator must have seen this generation (kstatus's rule),
    else a Ready condition left from before an edit would count."""
    started = time.monotonic()
    generation = kubectl("get", f"md/{NAME}", "-n", NAMESPACE, "-o", "jsonpath={.metadata.generation}", show=False)
    wanted = f"--for=jsonpath={{.status.observedGeneration}}={generation}"
    kubectl("wait", wanted, "--timeout=60s", f"md/{NAME}", "-n", NAMESPACE)
    kubectl("wait", "--for=condition=Ready", "--timeout=300s", f"md/{NAME}", "-n", NAMESPACE)
    print(f"(Ready after {time.monotonic() - started:.1f}s)")


def remove_earlier_run() -> None:
    """Every run tells the same story from version 1.0: an earlier run's ModelDeployment goes first."""
    if not kubectl("get", "md", NAME, "-n", NAMESPACE, "--ignore-not-found", "-o", "name", show=False).strip():
        return
    kubectl("delete", "md", NAME, "-n", NAMESPACE, "--timeout=120s")
    deadline = time.monotonic() + 120
    while kubectl("get", "pods", "-n", NAMESPACE, "-l", MODEL_LABEL, "-o", "name", show=False).strip():
        if time.monotonic() > deadline:
            sys.exit("demo: the earlier run's pods are still there after 120s")
        time.sleep(2)


def train_into(directory: Path, *train_args: str) -> None:
    directory.mkdir(parents=True)
    for name in EXAMPLE_FILES:
        shutil.copy(EXAMPLE_DIR / name, directory / name)
    out = directory / "cifar10_net.pt"
    subprocess.run([sys.executable, str(EXAMPLE_DIR / "train.py"), "--out", str(out), *train_args], check=True)


def prepare_model_files() -> None:
    """The files a user puts on the volume, one directory per version (always retrained: an old state_dict
    from another version of train.py would not match the labels)."""
    shutil.rmtree(PV_DIR, ignore_errors=True)
    print("version 1.0 -> cifar10/")
    train_into(PV_DIR / "cifar10")
    print("version 2.0 -> cifar10-v2/ (retrained with another seed)")
    train_into(PV_DIR / "cifar10-v2", "--seed", "1")
    print("version 3.0 -> cifar10-v3/: 2.0's files with examples/cifar10/flaky_classifier.py as the handler")
    shutil.copytree(PV_DIR / "cifar10-v2", PV_DIR / "cifar10-v3")
    shutil.copy(EXAMPLE_DIR / "flaky_classifier.py", PV_DIR / "cifar10-v3")
    for name in V3_HANDLER_FILES:
        shutil.copy(ROOT / "model_handlers" / name, PV_DIR / "cifar10-v3" / name)


# -- acts 4-5: requests, and what Prometheus saw ------------------------------------------------------------


def endpoints() -> ServiceEndpoints:
    return ServiceEndpoints(admin_api(CLUSTER), NAMESPACE, NAME, "http")


def classify_held_out_digits(count: int) -> None:
    """Each request goes to one of the Service's ready endpoints, from inside the pod network."""
    digits = train.held_out_digits()
    correct = 0
    with endpoints() as service:
        service.wait_for(bool, timeout_s=30)
        for index, (image, label) in enumerate(zip(digits.images[:count], digits.labels[:count], strict=True)):
            load = Load(count=1, duration_s=30, path="/predictions/cifar10", method="POST", body=encoded_image(image))
            result = run(load, service, CLUSTER.pod_network).results[0]
            if not result.ok:
                sys.exit(f"demo: prediction failed: {result.status} {result.error} {result.body[:200]!r}")
            answer: dict[str, float] = json.loads(result.body)
            top = max(answer, key=lambda digit: answer[digit])
            correct += int(top) == int(label)
            if index < 5:
                shown = ", ".join(f"{digit}: {probability:.4f}" for digit, probability in answer.items())
                print(f"  a held-out {label} -> {{{shown}}}  (answered by {result.pod or result.endpoint})")
    print(f"  {correct} of {count} held-out digits classified correctly through the Service")


def steady_load(requests: int, seconds: float) -> int:
    body = encoded_image(train.held_out_digits().images[0])
    load = Load(count=requests, duration_s=seconds, path="/predictions/cifar10", method="POST", body=body,
                rate_per_s=requests / seconds, concurrency=4)  # fmt: skip
    with endpoints() as service:
        service.wait_for(bool, timeout_s=30)
        report = run(load, service, CLUSTER.pod_network)
    summary = report.summary
    print(
        f"  {summary.sent} requests in {summary.elapsed_s:.1f}s: {summary.ok} answered 200, "
        f"p50 {summary.p50_ms:.1f} ms, p99 {summary.p99_ms:.1f} ms"
    )
    by_pod: dict[str, int] = {}
    for result in report.results:
        by_pod[result.pod or result.endpoint] = by_pod.get(result.pod or result.endpoint, 0) + 1
    for pod, count in sorted(by_pod.items()):
        print(f"  {pod}: {count} requests")
    return summary.sent


def show_what_prometheus_saw(sent: int) -> None:
    """Waits for the scrapes that cover the load, then prints the per-pod counters Prometheus holds for the
    pods that serve now (an earlier run's pods may still have series within Prometheus' lookback)."""
    names = kubectl(
        "get", "pods", "-n", NAMESPACE, "-l", MODEL_LABEL, "-o", "jsonpath={.items[*].metadata.name}", show=False
    )
    selector = f'namespace="{NAMESPACE}", pod=~"{"|".join(names.split())}"'
    targets = f'up{{{selector}, service="{NAME}"}}'
    promql = f"sum by (pod, serving_canaria_dev_version) (ts_inference_requests_total{{{selector}}})"
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


# -- act 7: rollouts under load ------------------------------------------------------------------------------


class BackgroundLoad:
    """Steady requests to the Service from inside the pod network, in a thread, in bounded runs (50 requests,
    at most 10 s each) until stopped, and never longer than max_s."""

    RUN_S = 10.0

    def __init__(self, rate_per_s: float, max_s: float) -> None:
        body = encoded_image(train.held_out_digits().images[0])
        count = int(rate_per_s * self.RUN_S)
        self.load = Load(count=count, duration_s=self.RUN_S, path="/predictions/cifar10", method="POST", body=body,
                         rate_per_s=rate_per_s)  # fmt: skip
        self.deadline = time.monotonic() + max_s
        self.service = endpoints()
        self.results: list[tuple[float, Result]] = []  # (when it started, on the monotonic clock; the result)
        self.failure: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="background-load", daemon=True)

    def _loop(self) -> None:
        try:
            while not self.stopping.is_set() and time.monotonic() < self.deadline:
                began = time.monotonic()
                report = run(self.load, self.service, CLUSTER.pod_network)
                self.results.extend((began + result.started_s, result) for result in report.results)
        except BaseException as error:  # told at the end: the demo's numbers would be incomplete
            self.failure = error

    def __enter__(self) -> BackgroundLoad:
        self.service.wait_for(bool, timeout_s=30)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)
        self.service.close()


def progress_line(status: dict[str, Any], steps: int) -> str:
    """One line of where the rollout is: phase, step, weights, canary pods, and the operator's message."""
    rollout = status.get("rollout", {})
    phase = status.get("phase", "?")
    if phase == "Serving" and not status.get("canaryVersion"):
        return f"{phase:<11} version {status.get('stableVersion')} serves all traffic"
    return (
        f"{phase:<11} step {rollout.get('step', 0) + 1}/{steps}: {status.get('requestedWeight', 0)}% requested, "
        f"{status.get('canaryWeight', 0)}% effective; Ready: stable {status.get('ready', '?')}, "
        f"canary {status.get('canaryReadyReplicas', 0)} | {status.get('message', '')}"
    )


def check_line(check: dict[str, Any]) -> str:
    value = check.get("value")
    unit = UNITS.get(check["name"], "")
    shown = f"{value:.3g} {unit}" if isinstance(value, int | float) else "no data"
    if check["outcome"] in ("Pass", "Fail"):
        return f"{check['name']:<10} {shown:>10}  threshold {check.get('threshold', '')}  -> {check['outcome']}"
    return f"{check['name']:<10} {shown:>10}  -> {check['outcome']}, counted {check['counted']}: {check['message']}"


def traffic_at(at: str, window: str) -> str:
    """What Prometheus held at the analysis' instant: each track's inference requests and 5xx answers over
    the analysis window (increase() extrapolates to the window, hence the fractions)."""
    labels = "serving_canaria_dev_track, serving_canaria_dev_version"
    selector = f'namespace="{NAMESPACE}"'
    try:
        requests = prometheus_query(
            f"sum by ({labels}) (increase(ts_inference_requests_total{{{selector}}}[{window}]))", at
        )
        errors = prometheus_query(f"sum by ({labels}) (increase(Requests5XX{{{selector}}}[{window}]))", at)
    except (OSError, http.client.HTTPException) as error:  # the checks then hold too: they say so above
        return f"Prometheus did not answer: {error!r}"

    def track(sample: dict[str, Any]) -> tuple[str, str]:
        labels = sample["metric"]
        return labels.get("serving_canaria_dev_track", "?"), labels.get("serving_canaria_dev_version", "?")

    failed = {track(sample): float(sample["value"][1]) for sample in errors}
    parts = []
    for sample in sorted(requests, key=track, reverse=True):  # stable first
        name, version = track(sample)
        answered = float(sample["value"][1])
        parts.append(f"{name} {version}: {answered:.1f} requests, {failed.get((name, version), 0.0):.1f} 5xx")
    return "; ".join(parts) or "no samples"


def follow_rollout(done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Polls the ModelDeployment's status, printing each change of phase, step or weight, and each analysis
    with its checks and the Prometheus counters behind it, until done(status)."""
    started = time.monotonic()
    steps, window = len(STEPS), ANALYSIS_INTERVAL
    last_line, last_analysis, shown_query = "", None, False
    while True:
        status = model_deployment().get("status", {})
        stamp = f"  +{time.monotonic() - started:4.0f}s "
        line = progress_line(status, steps)
        if line != last_line:
            print(stamp + line, flush=True)
            last_line = line
        rollout = status.get("rollout", {})
        # The analysis that ends a step starts the next one in the same pass, which clears lastAnalysisAt (it
        # is per step) and stamps stepStartedAt with that pass's clock: then the checks are new, and that is
        # when they ran.
        analysed_at = rollout.get("lastAnalysisAt") or rollout.get("stepStartedAt")
        analysis = json.dumps(rollout.get("checks"), sort_keys=True)
        if analysed_at and analysis != last_analysis and rollout.get("checks"):
            last_analysis = analysis
            failures = rollout.get("failures", {})
            verdict = rollout.get("lastVerdict") or "Pass, which ended the step"
            print(f"{stamp}analysis at {analysed_at}: {verdict}  (failures in a row: {failures})")
            for check in rollout["checks"]:
                print(f"{' ' * 10}{check_line(check)}")
            print(f"{' ' * 10}Prometheus then, last {window}: {traffic_at(analysed_at, window)}", flush=True)
            if not shown_query:
                print(f"{' ' * 10}(the operator's error-rate query: {rollout['checks'][0]['query']})")
                shown_query = True
        if done(status):
            print(f"  ({time.monotonic() - started:.0f}s after the patch)", flush=True)
            return status
        if time.monotonic() - started > ROLLOUT_TIMEOUT_S:
            sys.exit(f"demo: no end after {ROLLOUT_TIMEOUT_S}s; status: {json.dumps(status, indent=1)}")
        time.sleep(2)


def ship_good_version() -> None:
    patch(SHIP_V2)
    final = follow_rollout(lambda s: s.get("phase") == "Serving" and s.get("stableVersion") == "2.0")
    if final.get("rollout", {}).get("phase") != "Succeeded":
        sys.exit(f"demo: version 2.0 did not succeed: {final.get('rollout')}")


def ship_failing_version() -> None:
    patch(SHIP_V3)
    final = follow_rollout(lambda s: s.get("phase") in ("RolledBack", "Aborted") or s.get("stableVersion") == "3.0")
    rollout = final.get("rollout", {})
    if final.get("phase") != "RolledBack":
        sys.exit(f"demo: version 3.0 was not rolled back: {rollout}")
    print(f"  rolled back ({rollout.get('reason')}): {rollout.get('message')}")


def report_load(load: BackgroundLoad, v3_shipped_at: float) -> bool:
    """What every background request got, by the track that answered it; True when no stable one failed."""
    if load.failure is not None:
        print(f"  the background load stopped early: {load.failure!r}")
    groups: dict[str, list[Result]] = {}
    for began, result in load.results:
        if "-stable-" in result.pod:
            group = "stable pods (1.0, then 2.0)"
        elif "-canary-" in result.pod:
            group = "canary 3.0" if began >= v3_shipped_at else "canary 2.0"
        else:
            group = "no ready endpoint"
        groups.setdefault(group, []).append(result)
    sent = len(load.results)
    print(f"  {sent} requests at {LOAD_RATE_PER_S:g}/s from inside the pod network, during both rollouts:")
    for group, results in sorted(groups.items(), key=lambda item: item[0] != "stable pods (1.0, then 2.0)"):
        failed = [r for r in results if not r.ok]
        how = f" ({', '.join(sorted({str(r.status or r.error) for r in failed}))})" if failed else ""
        print(f"    {group}: {len(results) - len(failed)} answered 200, {len(failed)} failed{how}")
    stable = groups.get("stable pods (1.0, then 2.0)", [])
    return bool(stable) and all(r.ok for r in stable)


# -- the story ----------------------------------------------------------------------------------------------


def serve_the_example() -> None:
    step(f"Installing the ModelDeployment CRD; namespace {NAMESPACE}; the operator")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/modeldeployments.serving.canaria.dev")
    kubectl("apply", "-f", "-", input=MODELS_VOLUME, show=False)
    start_operator()
    remove_earlier_run()

    step('Training the example on handwritten digits, three versions, on the volume "models"')
    prepare_model_files()

    step("Applying the example: its pod packages the model in an init container and serves it with TorchServe")
    kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
    wait_ready()
    kubectl("get", "md,deployments,services,servicemonitors", "-n", NAMESPACE, "-l", MODEL_LABEL)
    kubectl("get", "pods", "-o", "wide", "-n", NAMESPACE, "-l", MODEL_LABEL)
    conditions = 'jsonpath={range .status.conditions[*]}{.type}={.status} ({.reason}){"\\n"}{end}'
    kubectl("get", "md", NAME, "-n", NAMESPACE, "-o", conditions)


def use_it() -> None:
    step("Classifying held-out digits through the Service's endpoints (from inside the pod network)")
    classify_held_out_digits(count=50)

    step("A steady load, then what Prometheus scraped from the pods (found through Canaria's ServiceMonitor)")
    show_what_prometheus_saw(50 + steady_load(requests=200, seconds=20))

    step("Editing it like a user: 2 replicas, batches of up to 16")
    patch({"spec": {"serving": {"replicas": 2, "batching": {"maxBatchSize": 16}}}})
    wait_ready()
    kubectl("get", "pods", "-o", "wide", "-n", NAMESPACE, "-l", MODEL_LABEL)

    step("Demo-speed rollouts: steps of 25 % and 50 % for 30 s, checks every 15 s, scrapes every 5 s")
    patch({"spec": DEMO_ROLLOUT})


def ship_two_versions() -> None:
    with BackgroundLoad(LOAD_RATE_PER_S, max_s=2 * ROLLOUT_TIMEOUT_S) as load:
        step(f"Background load: {LOAD_RATE_PER_S:g} requests/s to the Service. Shipping version 2.0, retrained")
        began = time.monotonic()
        ship_good_version()
        promoted = time.monotonic() - began
        kubectl("get", "md", NAME, "-n", NAMESPACE)

        step("Shipping version 3.0: its handler fails every third batch")
        v3_shipped_at = time.monotonic()
        ship_failing_version()
        rolled_back = time.monotonic() - v3_shipped_at
        kubectl("get", "md", NAME, "-n", NAMESPACE)
    step("What the background load got")
    stable_never_failed = report_load(load, v3_shipped_at)
    print(f"  2.0 promoted {promoted:.0f}s after its patch; 3.0 rolled back {rolled_back:.0f}s after its patch")
    uid = model_deployment()["metadata"]["uid"]  # not an earlier run's object of the same name
    kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.uid={uid}", "--sort-by=.lastTimestamp"
    )
    if not stable_never_failed:
        sys.exit("demo: a request to a stable pod failed (or none reached one): see above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stop-operator", action="store_true", help="only stop the operator a demo left running")
    if parser.parse_args().stop_operator:
        stop_operator()
        return
    serve_the_example()
    use_it()
    ship_two_versions()
    step("Done")
    retry = json.dumps({"spec": {"rollout": {"retry": "3.0"}}}, separators=(",", ":"))
    print(
        f"The cluster and the demo's operator keep running. Try:\n"
        f"  export KUBECONFIG={LAYOUT.kubeconfig} PATH={LAYOUT.bin_dir}:$PATH\n"
        f"  kubectl describe md {NAME} -n {NAMESPACE}\n"
        f"  kubectl patch md {NAME} -n {NAMESPACE} --type=merge -p '{retry}'   # 3.0 again (and back)\n"
        f"  python -m devcluster.traffic --service {NAMESPACE}/{NAME} --port http --path /ping \\\n"
        f"      --count 10 --duration 5\n"
        f"Stop the demo's operator: make demo-stop; everything: make cluster-down"
    )


if __name__ == "__main__":
    main()
