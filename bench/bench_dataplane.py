"""Time to serve: from `kubectl apply` of a ModelDeployment to its first correct prediction through the Service,
against TorchServe alone doing the same work on this machine (package the same files, start, first correct
prediction), plus a warm devcluster start until everything is up.

    python bench/bench_dataplane.py [--runs 3]   (needs `make cluster`; results go to docs/benchmarks.md)

Runs alternate (alone, Canaria, alone, Canaria, ...) so that both see the same machine load. The Canaria
figure includes everything a user waits for: the operator's reconcile, scheduling, the node agent starting the
pod, the init container packaging, TorchServe's start, the readiness probe's period (5 s) and the EndpointSlice
update; the baseline has none of the Kubernetes parts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "cifar10"))
import train  # noqa: E402  (examples/cifar10/train.py)

from devcluster import Cluster, Settings  # noqa: E402
from devcluster.traffic import Load, ServiceEndpoints, admin_api, run  # noqa: E402
from tests.e2e.conftest import local_volume, serving_model  # noqa: E402
from tests.integration.conftest import Operator, kubectl  # noqa: E402
from tests.support.torchserve import ModelSettings, encoded_image, running_torchserve  # noqa: E402

EXAMPLE = ROOT / "examples" / "cifar10"
PACKAGE_ARGS = [
    "--name", "cifar10", "--version", "1.0", "--serialized-file", "cifar10_net.pt", "--model-file", "model.py",
    "--handler", "image_classifier", "--extra-files", "index_to_name.json",
]  # fmt: skip


def prepare_source(directory: Path) -> Path:
    source = directory / "cifar10"
    source.mkdir(parents=True)
    for name in ("model.py", "index_to_name.json", "model-config.yaml"):
        shutil.copy(EXAMPLE / name, source / name)
    subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--out", str(source / "cifar10_net.pt")], check=True)
    return source


def probe_image() -> tuple[bytes, str]:
    digits = train.held_out_digits()
    return encoded_image(digits.images[0]), str(int(digits.labels[0]))


def correct(body: bytes, label: str) -> bool:
    answer: dict[str, float] = json.loads(body)
    return max(answer, key=lambda digit: answer[digit]) == label


def torchserve_alone(source: Path, work: Path) -> float:
    """Package with the init container's command, start TorchServe with the operator's config, predict."""
    image, label = probe_image()
    store = work / "store"
    started = time.monotonic()
    package = [sys.executable, "-m", "canaria.package", "--source", str(source), "--model-store", str(store)]
    subprocess.run([*package, *PACKAGE_ARGS], check=True, capture_output=True)
    with running_torchserve(store, ModelSettings("cifar10", "1.0"), work / "ts") as server:
        while True:
            try:
                response = server.predict("cifar10", image)
                if response.status_code == 200 and correct(response.content, label):
                    return time.monotonic() - started
            except requests.ConnectionError:
                pass
            if time.monotonic() - started > 300:
                raise TimeoutError("TorchServe alone did not answer within 300 s")
            time.sleep(0.1)


def canaria(cluster: Cluster, source: Path) -> float:
    """kubectl apply -> the first correct prediction through the Service's endpoints."""
    image, label = probe_image()
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    local_volume(namespace, "models", source.parent)
    body = yaml.safe_dump(serving_model())
    load = Load(count=1, duration_s=10, path="/predictions/cifar10", method="POST", body=image)
    try:
        started = time.monotonic()
        kubectl("apply", "-n", namespace, "-f", "-", input=body)
        while kubectl("get", "-n", namespace, "service", "cifar10", check=False).returncode != 0:
            time.sleep(0.1)  # the operator creates it within a pass
        with ServiceEndpoints(admin_api(cluster), namespace, "cifar10", "http") as endpoints:
            while time.monotonic() - started < 300:
                if endpoints.current():
                    result = run(load, endpoints, cluster.pod_network).results[0]
                    if result.ok and correct(result.body, label):
                        return time.monotonic() - started
                time.sleep(0.1)
        raise TimeoutError("no correct prediction within 300 s of kubectl apply")
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false")
        kubectl("delete", "pv", f"{namespace}-models", "--wait=false")


def warm_cluster_up(work: Path) -> float:
    """A second devcluster, every component included, from nothing to healthy (binaries already built)."""
    started = time.monotonic()
    second = Cluster.up(ROOT, Settings(state_dir=work / "second-cluster", bin_dir=ROOT / ".devcluster" / "bin"))
    took = time.monotonic() - started
    second.down()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cluster = Cluster.attach(ROOT)
    if cluster is None:
        sys.exit("bench_dataplane: start the devcluster first (make cluster)")
    os.environ.update(cluster.env())  # kubectl and the operator talk to it
    operator = Operator(log_name="operator-bench.log", namespaces="bench-*")
    operator.start()
    alone: list[float] = []
    ours: list[float] = []
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        source = prepare_source(work / "source")
        try:
            up = warm_cluster_up(work)
            for run_index in range(args.runs):
                alone.append(torchserve_alone(source, work / f"alone-{run_index}"))
                ours.append(canaria(cluster, source))
                print(f"run {run_index + 1}: TorchServe alone {alone[-1]:.1f}s, Canaria {ours[-1]:.1f}s", flush=True)
        finally:
            operator.stop()
    ratio = statistics.median(ours) / statistics.median(alone)
    print(
        json.dumps(
            {
                "torchserve_alone_s": alone,
                "canaria_apply_to_prediction_s": ours,
                "median_ratio": round(ratio, 2),
                "warm_cluster_up_s": round(up, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
