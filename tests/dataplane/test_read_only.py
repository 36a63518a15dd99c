"""The serving pod as the operator renders it, run here with its own filesystem: a read-only root and
writable only where the pod mounts an emptyDir. The packager and TorchServe must do their whole job that way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from canaria import render, spec, status
from tests.support.podfs import PodFilesystem, in_container_of
from tests.support.processes import start_process_group, stop_process_group
from tests.support.torchserve import Ports, TorchServe, on_loopback

pytestmark = pytest.mark.torchserve

# The images' PATH and home, with this machine's Python (torch, TorchServe, canaria) standing in for theirs.
PATH = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
HOME = "/home/model-server"


def affine_model_deployment() -> dict[str, Any]:
    body = {
        "apiVersion": "serving.canaria.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "affine", "namespace": "models", "uid": "uid-1", "generation": 1},
        "spec": {
            "model": {
                "version": "1.0",
                "storageUri": "pvc://model-files/affine",
                "serializedFile": "affine.pt",
                "modelFile": "affine_model.py",
                "handler": "json_tensor",
            }
        },
    }
    return spec.defaulted(body)


def environment(container: dict[str, Any]) -> dict[str, str]:
    plain = {item["name"]: item["value"] for item in container.get("env") or [] if "value" in item}
    return {"PATH": PATH, "HOME": HOME, **plain}


def local_volumes(pod: dict[str, Any], md: dict[str, Any], base: Path, ports: Ports, source: Path) -> dict[str, Path]:
    """A local directory for each of the pod's volumes, filled as Kubernetes would fill it."""
    volumes = {}
    for volume in pod["volumes"]:
        volumes[volume["name"]] = base / volume["name"]
        volumes[volume["name"]].mkdir(parents=True)
    config_map = render.config_map(md, render.STABLE, md["spec"]["model"])
    for key, text in config_map["data"].items():  # the ConfigMap, on this machine's free loopback ports
        moved = on_loopback(text, ports, Path(render.MODEL_STORE)) if key == "config.properties" else text
        (volumes["config"] / key).write_text(moved)
    _claim, path = spec.pvc_source(md["spec"]["model"]) or ("", "")
    shutil.copytree(source, volumes["model-source"] / path)  # the PersistentVolumeClaim's files
    return volumes


def test_packaging_and_serving_need_no_writable_root_filesystem(affine_source: Path, tmp_path: Path) -> None:
    md = affine_model_deployment()
    pod = render.deployment(md, render.STABLE, md["spec"]["model"], 1, render.Settings())["spec"]["template"]["spec"]
    (packager,), (torchserve,) = pod["initContainers"], pod["containers"]
    assert packager["securityContext"]["readOnlyRootFilesystem"] is True
    assert torchserve["securityContext"]["readOnlyRootFilesystem"] is True
    ports = Ports()
    volumes = local_volumes(pod, md, tmp_path / "volumes", ports, affine_source)
    filesystem = PodFilesystem(tmp_path / "pod", volumes)

    packaging = subprocess.run(
        filesystem.command(packager, environment(packager), HOME), capture_output=True, text=True, timeout=300
    )
    assert packaging.returncode == 0, packaging.stderr
    summary = json.loads(packaging.stdout.splitlines()[-1])
    message = filesystem.termination_log(packager).read_text()
    terminated = {"name": packager["name"], "state": {"terminated": {"exitCode": 0, "message": message}}}
    assert status.archive_digest({"status": {"initContainerStatuses": [terminated]}}) == summary["digest"]

    workdir = tmp_path / "torchserve"
    workdir.mkdir()
    serving = filesystem.command(torchserve, environment(torchserve), HOME)
    process = start_process_group(serving, workdir / "stdout.log", cwd=workdir, env=dict(os.environ))
    server = TorchServe(ports=ports, workdir=workdir, model_store=volumes["model-store"], process_group=process.pid)
    try:
        server.wait_until_ready("affine", timeout_s=120)
        answer = server.predict("affine", json.dumps({"instances": [[1, 0, 0, 0]]}), "application/json")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": [[1.5, -1.25]]}
        # The probe runs where kubelet runs it, in the container; only the management port moved.
        probe = [*torchserve["readinessProbe"]["exec"]["command"], server.management_url]
        readiness = subprocess.run(
            in_container_of(process.pid, probe, {"PATH": PATH}), capture_output=True, text=True, timeout=30
        )
        assert readiness.returncode == 0, readiness.stdout + readiness.stderr
        registering = requests.post(f"{server.management_url}/models", params={"url": "affine.mar"}, timeout=10)
        assert registering.status_code == 405, "the model API must be off in the pod"
    finally:
        stop_process_group(process)
    written = "\n".join(path.read_text(errors="replace") for path in volumes["logs"].rglob("*.log"))
    assert "ts_log.log" in {path.name for path in volumes["logs"].iterdir()}  # TorchServe logged where it may
    assert "Read-only file system" not in written + (workdir / "stdout.log").read_text(errors="replace")
