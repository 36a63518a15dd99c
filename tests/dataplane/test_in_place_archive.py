"""A pvc:// source served in place: the serving pod as the operator renders it, with the claim mounted at the
same path in both containers. The packager links the claim's files into the archive instead of copying
them; TorchServe 0.12 must load that archive through the links (and through its per-model temp directory),
serve the right answers, and never copy the weights itself."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from canaria import render, spec

# The rendered pod's environment and volumes, as the read-only filesystem test builds them.
from tests.dataplane.test_read_only import HOME, affine_model_deployment, environment, local_volumes
from tests.support.podfs import PodFilesystem
from tests.support.processes import start_process_group, stop_process_group
from tests.support.torchserve import Ports, TorchServe

pytestmark = pytest.mark.torchserve


def regular_files(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file() and not path.is_symlink()]


def test_torchserve_serves_an_archive_that_links_to_the_claim(affine_source: Path, tmp_path: Path) -> None:
    md = affine_model_deployment()
    pod = render.deployment(md, render.STABLE, md["spec"]["model"], 1, render.Settings())["spec"]["template"]["spec"]
    (packager,), (torchserve,) = pod["initContainers"], pod["containers"]
    ports = Ports()
    volumes = local_volumes(pod, md, tmp_path / "volumes", ports, affine_source)
    filesystem = PodFilesystem(tmp_path / "pod", volumes)

    packaging = subprocess.run(
        filesystem.command(packager, environment(packager), HOME), capture_output=True, text=True, timeout=300
    )
    assert packaging.returncode == 0, packaging.stderr
    archive = volumes["model-store"] / "affine.mar"
    _claim, path = spec.pvc_source(md["spec"]["model"]) or ("", "")
    weights = archive / "affine.pt"
    # The link names the file where both containers mount the claim; on this machine that path does not exist.
    assert weights.is_symlink() and os.readlink(weights) == f"{render.PVC_MOUNT}/{path}/affine.pt"
    assert not weights.exists(), "outside the pod the link dangles: only the torchserve container's mount serves it"
    assert {p.name for p in regular_files(archive)} == {"MANIFEST.json", "json_tensor.py", "canaria_base.py"}

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
        weight_bytes = (affine_source / "affine.pt").read_bytes()
        copies = [p for p in regular_files(volumes["tmp"]) if p.read_bytes() == weight_bytes]
        assert copies == [], "TorchServe copied the weights into its temp directory"
        # TorchServe's per-model temp step links the archive too; its files still resolve through the mount.
        per_model = [os.readlink(model / "affine.mar") for model in (volumes["tmp"] / "models").iterdir()]
        assert per_model == [f"{render.MODEL_STORE}/affine.mar"]
    finally:
        stop_process_group(process)
