"""The local control plane behaves like a real cluster: a Ready node, Deployments whose pods become Ready,
garbage collection, namespace deletion; and `up` is idempotent and fails cleanly."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devcluster import Cluster, DevclusterError, Settings
from devcluster.cluster import FAKE_NODE_TAINT, NODE_NAME
from devcluster.layout import BINARIES, COMPONENTS
from tests.support.manifests import FAKE_NODE_SELECTOR, FAKE_NODE_TOLERATION

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Polls condition; returns the seconds it took, fails the test with `what` on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        time.sleep(0.25)
    pytest.fail(f"{what} not reached within {timeout_s}s")


def get_json(cluster: Cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", "-o", "json", *args).stdout)


def deployment_manifest(name: str, namespace: str, replicas: int) -> str:
    labels = {"app": name}
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [{"name": "app", "image": "example.invalid/app:1"}],
                        # kwok's fake node: pods that only need to exist (the real node would run them).
                        "nodeSelector": FAKE_NODE_SELECTOR,
                        "tolerations": [FAKE_NODE_TOLERATION],
                    },
                },
            },
        }
    )


def apply(cluster: Cluster, manifest: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=manifest)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"dc-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains text (a state dir: ours and nobody else's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_the_fake_node_is_ready_tainted_and_sized(cluster: Cluster) -> None:
    node = get_json(cluster, "node", NODE_NAME)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert node["metadata"]["labels"]["type"] == "kwok"
    # Only pods that tolerate it land here; the rest go to the node agent's node, where pods really run.
    assert node["spec"]["taints"] == [FAKE_NODE_TAINT]
    assert node["status"]["allocatable"] == {"cpu": "256", "memory": "2Ti", "pods": "500"}
    table = cluster.kubectl("get", "nodes").stdout
    assert NODE_NAME in table and " Ready " in table


def test_server_reports_the_pinned_version(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.37.2"
    assert version["clientVersion"]["gitVersion"] == "v1.37.2"


def test_deployment_pods_become_ready_within_30s(cluster: Cluster, namespace: str) -> None:
    apply(cluster, deployment_manifest("web", namespace, replicas=2))

    def two_ready() -> bool:
        status = get_json(cluster, "-n", namespace, "deployment", "web").get("status", {})
        return status.get("readyReplicas") == 2

    wait_for(two_ready, 30, "2 ready replicas")
    pods = get_json(cluster, "-n", namespace, "pods", "-l", "app=web")["items"]
    assert [pod["status"]["phase"] for pod in pods] == ["Running", "Running"]
    assert all(pod["spec"]["nodeName"] == NODE_NAME for pod in pods)


@pytest.mark.parametrize("cascade", ["background", "foreground"])
def test_deleting_a_deployment_collects_its_replicasets_and_pods(
    cluster: Cluster, namespace: str, cascade: str
) -> None:
    apply(cluster, deployment_manifest("gc", namespace, replicas=2))
    wait_for(lambda: len(get_json(cluster, "-n", namespace, "pods", "-l", "app=gc")["items"]) == 2, 30, "2 pods")

    cluster.kubectl("delete", "-n", namespace, "deployment", "gc", f"--cascade={cascade}", "--wait=false")

    def collected() -> bool:
        leftovers = get_json(cluster, "-n", namespace, "replicasets,pods,deployments", "-l", "app=gc")
        return not leftovers["items"]

    wait_for(collected, 60, "ReplicaSet and Pods garbage-collected")


def test_namespace_deletion_completes(cluster: Cluster) -> None:
    name = f"dc-gone-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    apply(cluster, deployment_manifest("doomed", name, replicas=1))
    cluster.kubectl("create", "configmap", "settings", "-n", name, "--from-literal=a=b")

    cluster.kubectl("delete", "namespace", name, "--wait=false")

    def gone() -> bool:
        return cluster.kubectl("get", "namespace", name, check=False).returncode != 0

    wait_for(gone, 90, f"namespace {name} deleted")


def test_third_party_crds_are_established(cluster: Cluster) -> None:
    crds = {item["metadata"]["name"] for item in get_json(cluster, "crd")["items"]}
    assert {"servicemonitors.monitoring.coreos.com", "httproutes.gateway.networking.k8s.io"} <= crds


def test_second_up_is_a_no_op(cluster: Cluster) -> None:
    pids_before = sorted(processes_mentioning(str(cluster.layout.state_dir)))

    again = Cluster.up(cluster.layout.root)

    assert not again.started_here
    assert again.server == cluster.server
    assert sorted(processes_mentioning(str(cluster.layout.state_dir))) == pids_before


# --- failure paths: a separate, deliberately broken cluster in a temporary state dir ---


def isolated_settings(tmp_path: Path, bin_dir: Path, ports: dict[str, int] | None = None) -> Settings:
    """A second cluster beside the session's: its own state dir and ports; no CRDs, to stay quick."""
    return Settings(state_dir=tmp_path / "state", bin_dir=bin_dir, ports=ports or {}, install_crds=False)


def bin_dir_with(tmp_path: Path, cluster: Cluster, replace: dict[str, str | None]) -> Path:
    """A bin dir linking the real binaries, where each name in replace is a script body (None: missing)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kwok-stages.yaml").symlink_to(cluster.bin_dir / "kwok-stages.yaml")
    for name in BINARIES:
        if name not in replace:
            (bin_dir / name).symlink_to(cluster.bin_dir / name)
        elif (script := replace[name]) is not None:
            (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
            (bin_dir / name).chmod(0o755)
    return bin_dir


def assert_nothing_left(settings: Settings) -> None:
    assert settings.state_dir is not None
    assert processes_mentioning(str(settings.state_dir)) == []
    assert not (settings.state_dir / "run").exists() or not any((settings.state_dir / "run").iterdir())


def test_up_with_a_port_in_use_names_it_and_leaves_nothing(cluster: Cluster, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = isolated_settings(tmp_path, cluster.bin_dir, ports={"kube-apiserver": port})

        with pytest.raises(DevclusterError) as failure:
            Cluster.up(REPO_ROOT, settings)

    message = str(failure.value)
    assert failure.value.component == "kube-apiserver"
    assert f"port 127.0.0.1:{port} is already in use" in message
    assert "kube-apiserver.log" in message
    assert_nothing_left(settings)  # etcd had started before the apiserver's turn


def test_up_with_a_missing_binary_says_how_to_build_it(cluster: Cluster, tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path, bin_dir_with(tmp_path, cluster, {"kube-scheduler": None}))

    with pytest.raises(DevclusterError) as failure:
        Cluster.up(REPO_ROOT, settings)

    assert failure.value.component == "kube-scheduler"
    assert "binary not found" in str(failure.value) and "make tools" in str(failure.value)
    assert_nothing_left(settings)


def test_up_with_a_crashing_component_stops_what_it_started(cluster: Cluster, tmp_path: Path) -> None:
    crash = "echo 'scheduler exploded on purpose' >&2; exit 3"
    settings = isolated_settings(tmp_path, bin_dir_with(tmp_path, cluster, {"kube-scheduler": crash}))

    with pytest.raises(DevclusterError) as failure:
        Cluster.up(REPO_ROOT, settings)

    message = str(failure.value)
    assert failure.value.component == "kube-scheduler"
    assert "exited with code 3" in message and "exploded on purpose" in message
    assert "kube-scheduler.log" in message
    assert_nothing_left(settings)  # etcd, kube-apiserver and kube-controller-manager were running


def test_down_stops_every_process_and_removes_the_state(cluster: Cluster, tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path, cluster.bin_dir)
    second = Cluster.up(REPO_ROOT, settings)
    assert second.started_here
    assert len(processes_mentioning(str(settings.state_dir))) == len(COMPONENTS)
    assert settings.state_dir is not None
    (settings.state_dir / "not-ours.txt").write_text("down must leave files it did not create")

    second.down()

    assert_nothing_left(settings)
    assert sorted(p.name for p in settings.state_dir.iterdir()) == [".lock", "not-ours.txt"]
