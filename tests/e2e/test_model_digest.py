"""status.modelDigest names the archive the serving pods loaded: the digest their init container reported,
the same one packaging the same files anywhere gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from devcluster import Cluster
from tests.integration.conftest import Operator, get_json, wait_for

from .conftest import READY_TIMEOUT_S, local_volume, serving_model
from .test_serving import apply_md, serving_pods, wait_ready


def test_status_names_the_archive_the_pods_serve(
    cluster: Cluster, e2e_operator: Operator, e2e_namespace: str, model_source: Path, tmp_path: Path
) -> None:
    local_volume(e2e_namespace, "models", model_source.parent)
    body = serving_model()
    apply_md(e2e_namespace, body)
    wait_ready(e2e_namespace, "cifar10")
    md = wait_for(
        lambda: (m := get_json("-n", e2e_namespace, "md/cifar10")).get("status", {}).get("modelDigest") and m,
        timeout=READY_TIMEOUT_S,
        what="status.modelDigest",
    )
    (pod,) = serving_pods(e2e_namespace, "cifar10")
    (init,) = pod["status"]["initContainerStatuses"]
    assert md["status"]["modelDigest"] == json.loads(init["state"]["terminated"]["message"])["digest"]
    model = body["spec"]["model"]
    args = [
        "--name", model["name"], "--version", model["version"], "--source", str(model_source),
        "--serialized-file", model["serializedFile"], "--model-file", model["modelFile"],
        "--handler", model["handler"], "--extra-files", ",".join(model["extraFiles"]),
        "--model-store", str(tmp_path / "store"),
    ]  # fmt: skip
    here = subprocess.run([sys.executable, "-m", "canaria.package", *args], capture_output=True, text=True, timeout=300)
    assert here.returncode == 0, here.stderr
    assert json.loads(here.stdout.splitlines()[-1])["digest"] == md["status"]["modelDigest"]
