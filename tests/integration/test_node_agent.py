"""The node agent (devcluster/node) against the real control plane: a node of its own, started inside the
devcluster's pod network, whose pods run as local processes on their own addresses. Pods are bound to it by
spec.nodeName; every request to a pod address is sent from inside the pod network namespace."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import Cluster
from devcluster.node import healthy, network
from devcluster.podnet import PodNetwork, guard_dial
from tests.integration.conftest import ROOT, get_json, kubectl, wait_for

pytestmark = pytest.mark.cluster
TEST_NODE_TAINT = "canaria.dev/node-agent-test=true:NoSchedule"


@dataclass
class AgentNode:
    name: str
    pod_cidr: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    pod_network: PodNetwork

    @property
    def log(self) -> str:
        return (self.state_dir / "agent.log").read_text(errors="replace")


def start_agent(cluster: Cluster, name: str, pod_cidr: str, state_dir: Path) -> AgentNode:
    """`python -m devcluster.node` inside the pod network, as devcluster's `up` starts canaria-node-0."""
    argv = [
        sys.executable,
        "-m",
        "devcluster.node",
        f"--kubeconfig={cluster.kubeconfig}",
        f"--node-name={name}",
        f"--state-dir={state_dir}",
        f"--pod-cidr={pod_cidr}",
        # Pods bound by nodeName only: the scheduler must not send other tests' pods here.
        f"--register-with-taints={TEST_NODE_TAINT}",
    ]
    pod_network = cluster.pod_network
    with open(state_dir / "agent.log", "ab") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pod_network.preexec()
        )
    return AgentNode(name, pod_cidr, state_dir, process, pod_network)


def stop_agent(node: AgentNode) -> None:
    """SIGTERM, as devcluster's `down` stops it: it must exit 0 within its 10 s and leave no process behind."""
    descendants = _descendants(node.process.pid)
    node.process.send_signal(signal.SIGTERM)
    try:
        code = node.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        node.process.kill()
        code = node.process.wait()
    left = [pid for pid in descendants if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert code == 0, node.log
    assert not left, f"the agent left processes behind: {left}"
    assert "Traceback" not in node.log, node.log


def unique_node() -> tuple[str, str]:
    """A node name and a podCIDR nobody else uses (canaria-node-0 has 10.244.1.0/24, kwok 10.244.128.0/17)."""
    return f"canaria-node-test-{uuid.uuid4().hex[:6]}", f"10.244.{random.randrange(2, 120)}.0/24"


@pytest.fixture(scope="module")
def node(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentNode]:
    """An agent of this module's own (the cluster's canaria-node-0 may be running too)."""
    name, pod_cidr = unique_node()
    test_node = start_agent(cluster, name, pod_cidr, tmp_path_factory.mktemp("node"))
    try:
        wait_for(lambda: _node_ready(name) or test_node.process.poll() is not None, 30, what=f"node {name} Ready")
        assert test_node.process.poll() is None, test_node.log
        yield test_node
    finally:
        try:
            stop_agent(test_node)
        finally:
            kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")


def _node_ready(name: str) -> bool:
    result = kubectl("get", "node", name, "-o", "json", check=False)
    if result.returncode != 0:
        return False
    conditions = json.loads(result.stdout)["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def run_pod(node: AgentNode, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"nodeName": node.name, **spec}}
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))


def pod(namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = get_json("-n", namespace, "pod", name)
    return result


def is_ready(body: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in body["status"].get("conditions", []))


def fetch(pod_network: PodNetwork, address: str, port: int, path: str = "/") -> tuple[int, str]:
    """GET from inside the pod network namespace (a pod address is never dialled from the host)."""
    with pod_network.enter():
        guard_dial(address, pod_network)
        with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()


SERVE_OWN_NAME = {
    "name": "web",
    "image": "python:3.11",
    # Each container has its own /tmp: the file it serves names the pod it runs in.
    "command": ["sh", "-c", "hostname > /tmp/who && cd /tmp && exec python -m http.server 8080"],
    "ports": [{"name": "http", "containerPort": 8080}],
    "readinessProbe": {"httpGet": {"path": "/who", "port": "http"}, "periodSeconds": 1},
}


def test_the_agent_refuses_to_run_in_the_hosts_network_namespace(cluster: Cluster, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "devcluster.node", f"--kubeconfig={cluster.kubeconfig}", f"--state-dir={tmp_path}"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "host's network namespace" in result.stderr
    assert not (tmp_path / "pods").exists()


def test_the_launcher_mounts_privately_and_drops_to_the_container_user() -> None:
    """launch.py alone (the cluster is not needed): a bind mount seen only by the container, a user of its own.
    It joins the test's own network and UTS namespaces, which changes nothing."""
    work = Path(tempfile.mkdtemp(prefix="canaria-launch-", dir="/tmp"))  # searchable by the container's user
    try:
        work.chmod(0o755)
        (work / "source").mkdir()
        (work / "source" / "file").write_text("inside\n")
        (work / "target").mkdir()
        read_end, write_end = os.pipe()
        plan = {
            "netns": "/proc/thread-self/ns/net",
            "utsns": "/proc/thread-self/ns/uts",
            "mounts": [{"source": str(work / "source"), "target": str(work / "target"), "read_only": False}],
            "workdir": str(work),
            "read_only_root": False,
            "run_as": {"uid": 65534, "gid": 65534, "groups": []},
            "argv": ["sh", "-c", "id -u; id -g; cat target/file; touch target/new 2>/dev/null || echo denied"],
            "env": {"PATH": "/usr/bin:/bin"},
            "status_fd": write_end,
        }
        (work / "launch.json").write_text(json.dumps(plan))
        launcher = Path(network.__file__).with_name("launch.py")
        result = subprocess.run(
            [sys.executable, str(launcher), str(work / "launch.json")],
            capture_output=True,
            text=True,
            timeout=30,
            pass_fds=(write_end,),
        )
        os.close(write_end)
        with os.fdopen(read_end) as status:
            assert status.read() == ""  # exec'd: nothing written to the status pipe
        assert (result.returncode, result.stdout) == (0, "65534\n65534\ninside\ndenied\n"), result.stderr
        assert os.listdir(work / "target") == []  # the host never saw the mount
    finally:
        shutil.rmtree(work)


def test_the_node_is_registered_like_a_kubelet_registers_it(node: AgentNode) -> None:
    body = get_json("node", node.name)
    assert body["spec"]["podCIDR"] == node.pod_cidr
    assert body["metadata"]["labels"]["canaria.dev/node"] == "local"
    assert body["metadata"]["labels"]["kubernetes.io/hostname"] == node.name
    assert body["status"]["capacity"] == {"cpu": "32", "memory": "64Gi", "pods": "64"}
    # The API server may only ever dial this node on loopback (kubectl logs): no pod address, no host name.
    assert body["status"]["addresses"] == [{"type": "InternalIP", "address": "127.0.0.1"}]
    assert body["spec"]["taints"] == [{"key": "canaria.dev/node-agent-test", "value": "true", "effect": "NoSchedule"}]
    lease = get_json("-n", "kube-node-lease", "lease", node.name)
    assert lease["spec"]["holderIdentity"] == node.name
    assert healthy(node.state_dir)


def test_pods_serve_on_their_own_addresses_even_on_the_same_port(node: AgentNode, namespace: str) -> None:
    for name in ("first", "second"):
        run_pod(node, namespace, name, {"containers": [SERVE_OWN_NAME], "terminationGracePeriodSeconds": 5})
    wait_for(lambda: all(is_ready(pod(namespace, name)) for name in ("first", "second")), 30, what="2 ready pods")
    addresses = {}
    for name in ("first", "second"):
        body = pod(namespace, name)
        assert body["status"]["phase"] == "Running"
        assert body["status"]["podIPs"] == [{"ip": body["status"]["podIP"]}]
        addresses[name] = body["status"]["podIP"]
        assert ipaddress.ip_address(addresses[name]) in ipaddress.ip_network(node.pod_cidr)
    assert addresses["first"] != addresses["second"]
    for name, address in addresses.items():
        assert fetch(node.pod_network, address, 8080, "/who") == (200, f"{name}\n")


def test_a_failing_init_container_reports_its_exit_code_and_termination_message(
    node: AgentNode, namespace: str
) -> None:
    init = {
        "name": "package",
        "image": "canaria-packager:test",
        "command": ["sh", "-c", "echo 'sha256 mismatch' > /dev/termination-log; exit 3"],
    }
    main = {"name": "main", "image": "python:3.11", "command": ["sleep", "600"]}
    run_pod(node, namespace, "init", {"initContainers": [init], "containers": [main], "restartPolicy": "Never"})
    wait_for(lambda: pod(namespace, "init")["status"].get("phase") == "Failed", 30, what="pod Failed")
    status = pod(namespace, "init")["status"]
    terminated = status["initContainerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (3, "Error", "sha256 mismatch\n")
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    table = kubectl("get", "-n", namespace, "pod", "init").stdout
    assert "Init:Error" in table


def test_a_crashing_container_restarts_with_back_off(node: AgentNode, namespace: str) -> None:
    crash = {
        "name": "main",
        "image": "python:3.11",
        "command": ["sh", "-c", "echo 'cannot load model'; exit 1"],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    run_pod(node, namespace, "crash", {"containers": [crash]})

    def backing_off() -> dict[str, Any] | None:
        statuses = pod(namespace, "crash")["status"].get("containerStatuses") or [{}]
        waiting = statuses[0].get("state", {}).get("waiting", {})
        return statuses[0] if statuses[0].get("restartCount", 0) >= 2 and waiting.get("reason") else None

    started = time.monotonic()
    status = wait_for(backing_off, 40, what="restartCount 2 and CrashLoopBackOff")
    assert time.monotonic() - started >= 9  # the second restart waited out a 10 s back-off
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["state"]["waiting"]["message"].startswith("back-off 20s restarting failed container=main pod=crash_")
    last = status["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"], last["message"]) == (1, "Error", "cannot load model")
    assert pod(namespace, "crash")["status"]["phase"] == "Running"


def test_a_command_that_cannot_start_is_a_start_error(node: AgentNode, namespace: str) -> None:
    missing = {"name": "main", "image": "python:3.11", "command": ["no-such-program"]}
    run_pod(node, namespace, "missing", {"containers": [missing], "restartPolicy": "Never"})
    wait_for(lambda: pod(namespace, "missing")["status"].get("phase") == "Failed", 20, what="pod Failed")
    terminated = pod(namespace, "missing")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError")
    assert terminated["message"] == "exec 'no-such-program': No such file or directory"


def test_exec_readiness_probes_run_inside_the_container(node: AgentNode, namespace: str) -> None:
    # The file appears only in the container's own /tmp: a probe run anywhere else would never see it.
    late = {
        "name": "late",
        "image": "python:3.11",
        "command": ["sh", "-c", "sleep 3; touch /tmp/ready; exec sleep 600"],
        "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
    }
    never = {**late, "name": "never", "command": ["sleep", "600"]}
    spec = {"terminationGracePeriodSeconds": 2}
    run_pod(node, namespace, "late", {"containers": [late], **spec})
    run_pod(node, namespace, "never", {"containers": [never], **spec})
    wait_for(lambda: pod(namespace, "late")["status"].get("phase") == "Running", 20, what="late Running")
    assert not is_ready(pod(namespace, "late"))
    wait_for(lambda: is_ready(pod(namespace, "late")), 20, what="late Ready")
    assert not Path("/tmp/ready").exists()
    body = pod(namespace, "never")
    assert body["status"]["phase"] == "Running" and not is_ready(body)
    ready = next(c for c in body["status"]["conditions"] if c["type"] == "ContainersReady")
    assert ready["message"] == "containers with unready status: [never]"


def test_a_failing_liveness_probe_restarts_the_container(node: AgentNode, namespace: str) -> None:
    container = {
        "name": "main",
        "image": "python:3.11",
        "command": ["sh", "-c", "touch /tmp/alive; sleep 2; rm /tmp/alive; exec sleep 600"],
        "livenessProbe": {"exec": {"command": ["test", "-f", "/tmp/alive"]}, "periodSeconds": 1, "failureThreshold": 2},
    }
    run_pod(node, namespace, "live", {"containers": [container], "terminationGracePeriodSeconds": 1})

    def restarted() -> dict[str, Any] | None:
        statuses = pod(namespace, "live")["status"].get("containerStatuses") or [{}]
        return statuses[0] if statuses[0].get("restartCount", 0) >= 1 else None

    status = wait_for(restarted, 30, what="a restart after the liveness probe failed")
    assert status["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM ends `sleep`


def test_config_maps_secrets_env_empty_dirs_and_claims_on_a_read_only_root(
    node: AgentNode, namespace: str, tmp_path: Path
) -> None:
    (tmp_path / "model.txt").write_text("weights\n")
    volume_name = f"node-test-{uuid.uuid4().hex[:6]}"
    manifests = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"ts.properties": "a=1"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"key": "s3cret"}},
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "hostPath": {"path": str(tmp_path)},
                "claimRef": {"namespace": namespace, "name": "models"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "volumeName": volume_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(manifests))
    report = (
        '{ cat /etc/canaria/ts.properties; echo; stat -c %a /etc/creds/key; echo "$FROM_CONFIG $FROM_SECRET $WHO";'
        " echo scratch > /scratch/f && cat /scratch/f; cat /mnt/models/model.txt;"
        " touch /mnt/models/new 2>/dev/null || echo read-only; pwd; touch /var/x 2>/dev/null || echo root-read-only;"
        " } > /dev/termination-log"
    )
    container = {
        "name": "main",
        "image": "python:3.11",
        "command": ["sh", "-c", report],
        "workingDir": "/scratch",
        "securityContext": {"readOnlyRootFilesystem": True},
        "env": [
            {"name": "FROM_CONFIG", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "ts.properties"}}},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "WHO", "value": "$(POD)"},
        ],
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/canaria"},
            {"name": "creds", "mountPath": "/etc/creds"},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "models", "mountPath": "/mnt/models", "readOnly": True},
        ],
    }
    volumes = [
        {"name": "config", "configMap": {"name": "cfg"}},
        {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "10Mi"}},
        {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
    ]
    try:
        wait_for(lambda: get_json("-n", namespace, "pvc", "models")["status"].get("phase") == "Bound", 30, what="Bound")
        run_pod(node, namespace, "volumes", {"containers": [container], "volumes": volumes, "restartPolicy": "Never"})
        wait_for(lambda: pod(namespace, "volumes")["status"].get("phase") == "Succeeded", 30, what="Succeeded")
        message = pod(namespace, "volumes")["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
        lines = ["a=1", "400", "a=1 s3cret volumes", "scratch", "weights", "read-only", "/scratch", "root-read-only"]
        assert message.splitlines() == lines
        assert sorted(os.listdir(tmp_path)) == ["model.txt"]
    finally:
        kubectl("delete", "pv", volume_name, "--wait=false", "--ignore-not-found")


def test_deleting_a_pod_stops_every_process_and_removes_its_network(node: AgentNode, namespace: str) -> None:
    # A main process that ignores SIGTERM, with a child: both must go, the main one by SIGKILL after 2 s.
    stubborn = {"name": "main", "image": "python:3.11", "command": ["sh", "-c", "trap '' TERM; sleep 600 & wait"]}
    run_pod(node, namespace, "doomed", {"containers": [stubborn], "terminationGracePeriodSeconds": 2})
    wait_for(lambda: pod(namespace, "doomed")["status"].get("phase") == "Running", 20, what="doomed Running")
    body = pod(namespace, "doomed")
    main_pid = int(body["status"]["containerStatuses"][0]["containerID"].removeprefix("canaria-node://"))
    pod_namespace = network.net_ns_inode(main_pid)
    wait_for(lambda: len(network.processes_in_namespace(pod_namespace)) >= 3, 10, what="pause, sh and sleep")
    processes = {pid: _start_time(pid) for pid in network.processes_in_namespace(pod_namespace)}
    interface = network.interface_name(body["status"]["podIP"])

    started = time.monotonic()
    kubectl("delete", "-n", namespace, "pod", "doomed", "--wait=true", "--timeout=30s")
    took = time.monotonic() - started

    assert 2 <= took < 15
    left = [pid for pid, start in processes.items() if _alive(pid) and _start_time(pid) == start]
    assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]
    links = subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True, check=True, preexec_fn=node.pod_network.preexec()
    ).stdout
    assert interface not in links
    assert not list((node.state_dir / "pods").glob(f"{body['metadata']['uid']}*"))


def test_a_new_agent_kills_what_a_killed_agent_left_behind(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    name, pod_cidr = unique_node()
    first = start_agent(cluster, name, pod_cidr, tmp_path)
    second = None
    try:
        wait_for(lambda: _node_ready(name), 30, what=f"node {name} Ready")
        sleeper = {"name": "main", "image": "python:3.11", "command": ["sleep", "600"]}
        run_pod(first, namespace, "survivor", {"containers": [sleeper], "terminationGracePeriodSeconds": 1})
        wait_for(lambda: pod(namespace, "survivor")["status"].get("phase") == "Running", 20, what="Running")
        before = pod(namespace, "survivor")["status"]
        main_pid = int(before["containerStatuses"][0]["containerID"].removeprefix("canaria-node://"))
        orphans = {pid: _start_time(pid) for pid in network.processes_in_namespace(network.net_ns_inode(main_pid))}
        assert len(orphans) == 2  # pause and sleep

        first.process.kill()  # no chance to clean up
        first.process.wait()
        assert all(_alive(pid) for pid in orphans)

        second = start_agent(cluster, name, pod_cidr, tmp_path)
        wait_for(lambda: not any(_alive(pid) and _start_time(pid) == start for pid, start in orphans.items()), 20)

        def running_again() -> dict[str, Any] | None:
            status = pod(namespace, "survivor")["status"]
            container_id = status["containerStatuses"][0].get("containerID")
            running = "running" in status["containerStatuses"][0]["state"]
            return status if running and container_id != before["containerStatuses"][0]["containerID"] else None

        after = wait_for(running_again, 30, what="the pod running again under the new agent")
        assert after["podIP"] == before["podIP"]
    finally:
        if second is not None:
            stop_agent(second)
        elif first.process.poll() is None:
            stop_agent(first)
        kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")
