"""Deleting a serving pod, or its ModelDeployment, leaves no process behind: checked by listing processes, not
by trusting the status."""

from __future__ import annotations

import os
from pathlib import Path

from devcluster import Cluster
from tests.integration.conftest import Operator, kubectl, wait_for

from .conftest import local_volume, serving_model
from .test_serving import apply_md, serving_pods, wait_ready


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _net_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """Running, or stopped, but not a zombie waiting for its parent to read its exit status."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and _alive(int(entry))]


def pod_processes(pod_name: str) -> tuple[int, set[int]]:
    """(the pod's network namespace inode, every process inside it), found through its pause process."""
    pause = next(pid for pid in _pids() if "pause.py" in _cmdline(pid) and _cmdline(pid).split()[-1] == pod_name)
    inode = _net_inode(pause)
    assert inode is not None
    return inode, {pid for pid in _pids() if _net_inode(pid) == inode}


def still_running(inode: int, pids: set[int], pod_name: str) -> set[int]:
    """The pod's recorded processes still alive, and any process still in its network namespace, unless that
    namespace number was freed and now belongs to another pod (the kernel reuses them)."""
    alive = {pid for pid in pids if _alive(pid)}
    in_namespace = {pid for pid in _pids() if _net_inode(pid) == inode}
    holders = {_cmdline(pid).split()[-1] for pid in in_namespace if "pause.py" in _cmdline(pid)}
    return alive | (in_namespace if not holders or pod_name in holders else set())


def test_deleting_a_pod_and_then_its_model_deployment_leaves_no_process(
    cluster: Cluster, e2e_operator: Operator, e2e_namespace: str, model_source: Path
) -> None:
    local_volume(e2e_namespace, "models", model_source.parent)
    apply_md(e2e_namespace, serving_model())
    wait_ready(e2e_namespace, "cifar10")
    first = serving_pods(e2e_namespace, "cifar10")[0]["metadata"]["name"]
    inode, pids = pod_processes(first)
    commands = " | ".join(_cmdline(pid) for pid in pids)
    assert "java" in commands and "model_service_worker" in commands, commands  # TorchServe and its worker

    kubectl("delete", "pod", "-n", e2e_namespace, first, "--wait=true", "--timeout=60s")
    leftovers = still_running(inode, pids, first)
    assert not leftovers, [_cmdline(pid) for pid in leftovers]

    wait_ready(e2e_namespace, "cifar10")  # the ReplicaSet's replacement
    second = serving_pods(e2e_namespace, "cifar10")[0]["metadata"]["name"]
    inode, pids = pod_processes(second)
    kubectl("delete", "md", "-n", e2e_namespace, "cifar10", "--wait=true", "--timeout=60s")
    wait_for(lambda: not serving_pods(e2e_namespace, "cifar10"), timeout=90, what="the pods to be garbage-collected")
    wait_for(lambda: not still_running(inode, pids, second), timeout=30, what="the pod's processes to end")
