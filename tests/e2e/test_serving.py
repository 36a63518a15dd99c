"""ModelDeployments whose pods really run: packaged by their own init container, served by TorchServe in the pod,
answering through their Service's endpoints inside the pod network."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import Cluster
from devcluster.podnet import PodNetwork
from devcluster.traffic import Load, ServiceEndpoints, admin_api, run
from tests.integration.conftest import Operator, get_json, kubectl, wait_for
from tests.support.fileserver import serving_directory
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, running_s3
from tests.support.torchserve import encoded_image

from .conftest import EXAMPLE, READY_TIMEOUT_S, local_volume, model_tarball, serving_model

sys.path.insert(0, str(EXAMPLE))
import train  # the example's held-out digits

NODE = "canaria-node-0"


def apply_md(namespace: str, body: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))


def wait_ready(namespace: str, name: str, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
    kubectl("wait", "-n", namespace, "--for=condition=Ready", f"--timeout={int(timeout)}s", f"md/{name}")
    md: dict[str, Any] = get_json("-n", namespace, f"md/{name}")
    return md


def serving_pods(namespace: str, name: str) -> list[dict[str, Any]]:
    pods = get_json("-n", namespace, "pods", "-l", f"serving.canaria.dev/model-deployment={name}")["items"]
    return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]


def classify(cluster: Cluster, network: PodNetwork, namespace: str, service: str, count: int) -> list[tuple[int, str]]:
    """(true label, answered label) for the first `count` held-out digits, each sent to one of the Service's
    ready endpoints from inside the pod network."""
    digits = train.held_out_digits()
    answers = []
    with ServiceEndpoints(admin_api(cluster), namespace, service, "http") as endpoints:
        endpoints.wait_for(bool, timeout_s=30)
        for image, label in list(zip(digits.images, digits.labels, strict=True))[:count]:
            load = Load(count=1, duration_s=30, path="/predictions/cifar10", method="POST", body=encoded_image(image))
            result = run(load, endpoints, network).results[0]
            assert result.ok, f"{result.status} {result.error} {result.body[:200]!r}"
            answer = json.loads(result.body)
            answers.append((int(label), max(answer, key=answer.get)))
    return answers


def test_a_model_deployment_serves_through_its_service_from_a_volume_of_this_machine(
    cluster: Cluster, e2e_operator: Operator, e2e_namespace: str, pod_network: PodNetwork, model_source: Path
) -> None:
    local_volume(e2e_namespace, "models", model_source.parent)
    apply_md(e2e_namespace, serving_model(serving={"replicas": 2}))
    md = wait_ready(e2e_namespace, "cifar10")

    pods = serving_pods(e2e_namespace, "cifar10")
    assert len(pods) == 2 and all(pod["spec"]["nodeName"] == NODE for pod in pods)
    assert all(pod["status"]["podIP"].startswith("10.244.1.") for pod in pods)
    # Ready means TorchServe's workers are READY (the readiness probe asks its management API): the very first
    # requests after Ready are answered, correctly.
    answers = classify(cluster, pod_network, e2e_namespace, "cifar10", count=40)
    correct = sum(label == int(answer) for label, answer in answers)
    assert correct >= 36, answers
    assert md["status"]["ready"] == "2/2"
    init = pods[0]["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["exitCode"] == 0


@pytest.mark.parametrize("kind", ["http", "s3", "mar"])
def test_every_remote_source_kind_serves_from_inside_a_pod(
    cluster: Cluster,
    e2e_operator: Operator,
    e2e_namespace: str,
    pod_network: PodNetwork,
    model_source: Path,
    tmp_path: Path,
    kind: str,
) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "cifar10.tar.gz").write_bytes(model_tarball(model_source))
    with serving_directory(tmp_path / "www", pod_network) as base_url, running_s3(pod_network) as s3:
        model: dict[str, Any]
        if kind == "http":
            model = {"storageUri": f"{base_url}/cifar10.tar.gz"}
        elif kind == "s3":
            with pod_network.enter():  # the bucket lives inside the pod network, as the pod sees it
                s3.client().create_bucket(Bucket="models")
                s3.upload_directory("models", "cifar10", model_source)
            kubectl(
                "create", "secret", "generic", "s3-credentials", "-n", e2e_namespace,
                f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS_KEY}", f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET_KEY}",
            )  # fmt: skip
            model = {
                "storageUri": "s3://models/cifar10",
                "s3": {"endpoint": s3.endpoint, "region": "us-east-1", "credentialsSecret": "s3-credentials"},
            }
        else:
            mar = prebuilt_archive(model_source, tmp_path / "store")
            local_volume(e2e_namespace, "archives", mar.parent)
            model = {"storageUri": f"pvc://archives/{mar.name}"}
        body = serving_model(model=model)
        if kind == "mar":  # the archive carries its handler and files
            for key in ("serializedFile", "modelFile", "handler", "extraFiles"):
                del body["spec"]["model"][key]
        apply_md(e2e_namespace, body)
        wait_ready(e2e_namespace, "cifar10")
        answers = classify(cluster, pod_network, e2e_namespace, "cifar10", count=10)
    assert sum(label == int(answer) for label, answer in answers) >= 9, answers


def prebuilt_archive(source: Path, store: Path) -> Path:
    """A .mar built ahead of time by the packager (as a CI pipeline would), served as is."""
    from tests.support.packaging import run_packager_in_process

    run = run_packager_in_process(
        [
            "--name", "cifar10", "--version", "1.0", "--source", str(source), "--serialized-file", "cifar10_net.pt",
            "--model-file", "model.py", "--handler", "image_classifier", "--extra-files", "index_to_name.json",
            "--model-store", str(store), "--archive-format", "zip",
        ],
        store / "termination-log",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    return next(store.glob("*.mar"))


def test_a_bad_checksum_stops_the_init_container_and_says_so_in_both_statuses(
    cluster: Cluster, e2e_operator: Operator, e2e_namespace: str, pod_network: PodNetwork, model_source: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    (tmp_path / "cifar10.tar.gz").write_bytes(model_tarball(model_source))
    with serving_directory(tmp_path, pod_network) as base_url:
        apply_md(e2e_namespace, serving_model(model={"storageUri": f"{base_url}/cifar10.tar.gz", "sha256": "0" * 64}))

        def init_failure() -> str:
            for pod in serving_pods(e2e_namespace, "cifar10"):
                for status in pod["status"].get("initContainerStatuses", []):
                    terminated = status.get("lastState", {}).get("terminated") or status["state"].get("terminated")
                    if terminated and terminated["exitCode"] != 0:
                        return str(terminated.get("message", ""))
            return ""

        message = wait_for(init_failure, timeout=120, what="the init container's failure")
    assert "sha256" in message
    md = wait_for(
        lambda: (
            (found := get_json("-n", e2e_namespace, "md/cifar10")).get("status", {}).get("message", "").count("sha256")
            and found
        ),
        timeout=60,
        what="the termination message in the ModelDeployment's status",
    )
    assert md["status"]["phase"] != "Serving"


def test_a_handler_that_fails_to_import_never_becomes_ready_and_the_status_says_why(
    cluster: Cluster, e2e_operator: Operator, e2e_namespace: str, model_source: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in model_source.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "handler.py").write_text("import a_module_that_is_not_installed\n")
    local_volume(e2e_namespace, "models", tmp_path)
    apply_md(e2e_namespace, serving_model(model={"storageUri": "pvc://models/broken", "handler": "handler.py"}))
    md = wait_for(
        lambda: (
            "a_module_that_is_not_installed"
            in (found := get_json("-n", e2e_namespace, "md/cifar10")).get("status", {}).get("message", "")
            and found
        ),
        timeout=180,
        what="the import error in the ModelDeployment's status",
    )
    ready = next(c for c in md["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    pods = serving_pods(e2e_namespace, "cifar10")
    assert pods and not any(
        c["type"] == "Ready" and c["status"] == "True" for pod in pods for c in pod["status"].get("conditions", [])
    )
