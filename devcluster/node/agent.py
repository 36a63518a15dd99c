"""The node agent: registers the node, renews its Lease, watches the pods bound to it and runs each one in a
PodWorker thread (sandbox, volumes, init containers, containers, probes, restarts, termination), writing the
pod's status as a kubelet does. Decisions come from plan, lifecycle and podstatus; runtime and network act."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import logging
import math
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import HEALTHZ_FILE, lifecycle, network, plan, podstatus, runtime
from .kube import STRATEGIC_MERGE_PATCH, ApiError, Gone, Kube

log = logging.getLogger("canaria-node")

# Requests are not enforced here (no cgroups): capacity is sized so that a few ModelDeployments, their rolling
# updates and canaries (1 CPU requested per pod by default) all schedule, as on a real node pool.
CAPACITY = {"cpu": "32", "memory": "64Gi", "pods": "64"}
API_SERVER_NODE_ADDRESS = "127.0.0.1"  # nothing listens for the API server there: kubectl logs fails locally
NODE_LABELS = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "canaria.dev/node": "local"}
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40  # the controller-manager's --node-monitor-grace-period in devcluster/components.py
LEASE_RENEW_S = 10.0  # a quarter of the duration, as kubelet
NODE_STATUS_REPORT_S = 60.0  # the Ready condition's heartbeat; the Lease is what keeps the node alive
DEFAULT_GRACE_S = 30
MIN_GRACE_S = 2  # kubelet's minimum grace period for a kill
SHUTDOWN_GRACE_S = 4.0  # agent stop: every pod at once, within devcluster's 10 s stop timeout
RETRY_S = 5.0  # a pod whose volumes or config cannot be made yet is tried again after this
MAX_WATCH_BACKOFF_S = 30.0


@dataclass(frozen=True)
class NodeConfig:
    name: str
    pod_cidr: str
    state_dir: Path
    host_ip: str = network.CLUSTER_ADDRESS  # the node lives in the cluster namespace, at its address
    taints: tuple[Mapping[str, str], ...] = ()

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    @property
    def logs_dir(self) -> Path:
        """Container logs (`kubectl logs` does not work): logs/<namespace>_<pod>_<uid>/<container>/<run>.log."""
        return self.state_dir / "logs"

    @property
    def healthz(self) -> Path:
        """Touched after each Lease renewal."""
        return self.state_dir / HEALTHZ_FILE

    @property
    def mount_points_record(self) -> Path:
        return self.state_dir / "mount-points.json"


def machine_facts() -> plan.Machine:
    """This machine's Python environment (the interpreter running the agent) and Java, for every container."""
    venv_bin = str(Path(sys.executable).parent)
    java = shutil.which("java")
    java_home = os.environ.get("JAVA_HOME") or (str(Path(java).resolve().parents[1]) if java else None)
    path = ":".join(filter(None, [venv_bin, f"{java_home}/bin" if java_home else None, plan.SYSTEM_PATH]))
    return plan.Machine(path=path, java_home=java_home, honour_run_as=_usable_by_others(Path(sys.executable)))


def _usable_by_others(interpreter: Path) -> bool:
    """Whether a non-root user can run the interpreter: every directory on the way to it (and to its standard
    library) must be searchable by others."""
    targets = [interpreter.resolve(), Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()]
    return all(directory.stat().st_mode & 0o001 for target in targets for directory in [target, *target.parents])


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class Agent:
    def __init__(self, kube: Kube, config: NodeConfig, machine: plan.Machine) -> None:
        self.kube = kube
        self.config = config
        self.machine = machine
        self.mount_points = runtime.MountPoints(config.mount_points_record, config.state_dir)
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.used_ips: set[str] = set()
        self.last_ip: str | None = None
        self.shutdown_at = math.inf  # monotonic time of agent stop: every pod's grace period ends soon after

    # --- lifecycle -------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Runs until stop is set, then stops every pod and removes what it created."""
        network.require_cluster_namespace()
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.config.state_dir / "agent.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"another node agent runs with state dir {self.config.state_dir}") from None
            self.remove_leftovers()
            if self._register(stop):
                for target in (self._heartbeat, self._watch_pods):
                    threading.Thread(target=target, name=target.__name__, daemon=True).start()
                log.info("node %s ready: pods from %s", self.config.name, self.config.pod_cidr)
                stop.wait()
            self.shutdown()

    def _register(self, stop: threading.Event) -> bool:
        """Registers the node, retrying while the API server does not answer; False if stopped meanwhile."""
        delay = 0.5
        while True:
            try:
                self.register_node()
                return True
            except (ApiError, OSError) as err:
                log.warning("registering node %s failed (retrying in %.1fs): %s", self.config.name, delay, err)
                if stop.wait(delay):
                    return False
                delay = min(delay * 2, MAX_WATCH_BACKOFF_S)

    def shutdown(self) -> None:
        self.shutdown_at = time.monotonic()
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.send("shutdown")
        for worker in workers:
            worker.thread.join(timeout=SHUTDOWN_GRACE_S + 5)
        self.mount_points.remove_all()
        self.config.healthz.unlink(missing_ok=True)
        log.info("node %s stopped %d pods", self.config.name, len(workers))

    def remove_leftovers(self) -> None:
        """Processes, interfaces and directories recorded by an agent that did not stop cleanly."""
        protected = {network.host_net_ns_inode(), network.net_ns_inode()}
        for record_file in sorted(self.config.pods_dir.glob("*/processes.json")):
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(record_file.read_text())
                for entry in record["processes"]:
                    pid = entry["pid"]
                    if runtime.process_start_time(pid) != entry["start"]:
                        continue  # gone, or the pid now belongs to someone else
                    inode = network.net_ns_inode(pid)
                    if inode not in protected:
                        killed = network.kill_namespace_processes(inode)
                        log.info("killed %d leftover processes of %s", len(killed), record_file.parent.name)
                network.remove_leftover_interface(record["pod_ip"])
        shutil.rmtree(self.config.pods_dir, ignore_errors=True)
        self.mount_points.remove_all()

    # --- the node --------------------------------------------------------------------------------------

    def register_node(self) -> None:
        name = self.config.name
        existing = self.kube.get(f"/api/v1/nodes/{name}")
        if existing is None:
            self.kube.request("POST", "/api/v1/nodes", node_object(self.config))
        else:
            recorded = existing.get("spec", {}).get("podCIDR")
            if recorded and recorded != self.config.pod_cidr:
                raise RuntimeError(f"node {name} already has podCIDR {recorded}, not {self.config.pod_cidr}")
            wanted = node_object(self.config)
            # As kubelet: taints are given at registration only, then they belong to whoever changes them.
            spec = {key: value for key, value in wanted["spec"].items() if key != "taints"}
            patch = {"metadata": {"labels": wanted["metadata"]["labels"]}, "spec": spec}
            self.kube.request("PATCH", f"/api/v1/nodes/{name}", patch, content_type=STRATEGIC_MERGE_PATCH)
        self.report_node_status()
        self.renew_lease()

    def report_node_status(self) -> None:
        name = self.config.name
        node = self.kube.get(f"/api/v1/nodes/{name}") or {}
        status = node_status(self.config, node.get("status", {}).get("conditions") or [], now())
        self.kube.request(
            "PATCH", f"/api/v1/nodes/{name}/status", {"status": status}, content_type=STRATEGIC_MERGE_PATCH
        )

    def renew_lease(self) -> None:
        name = self.config.name
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
        renew = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": renew}
        if self.kube.get(f"{path}/{name}") is None:
            node = self.kube.get(f"/api/v1/nodes/{name}") or {}
            owner = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node.get("metadata", {}).get("uid")}
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": LEASE_NAMESPACE, "ownerReferences": [owner]},
                "spec": spec,
            }
            self.kube.request("POST", path, lease)
        else:
            self.kube.request("PATCH", f"{path}/{name}", {"spec": spec}, content_type=STRATEGIC_MERGE_PATCH)
        self.config.healthz.write_text(renew + "\n")

    def _heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(LEASE_RENEW_S):
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= NODE_STATUS_REPORT_S:
                    self.report_node_status()
                    last_status = time.monotonic()
            except (ApiError, OSError) as err:
                log.warning("heartbeat failed: %s", err)

    # --- pods ------------------------------------------------------------------------------------------

    def _watch_pods(self) -> None:
        """List, then watch from the list's version; list again when the version is gone; back off on errors."""
        path = "/api/v1/pods"
        selector = {"fieldSelector": f"spec.nodeName={self.config.name}"}
        delay = 0.5
        while not self.stopping.is_set():
            try:
                listing = self.kube.request("GET", path, params=selector)
                version = listing["metadata"]["resourceVersion"]
                self._sync_pods(listing["items"])
                while not self.stopping.is_set():
                    for event in self.kube.watch(path, {**selector, "resourceVersion": version}):
                        version = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] == "DELETED":
                            self._pod_removed(event["object"])
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self._pod_seen(event["object"])
                    delay = 0.5
            except Gone:
                continue
            except (ApiError, OSError, ValueError, KeyError) as err:
                log.warning("pod watch failed (retrying in %.1fs): %s", delay, err)
                self.stopping.wait(delay)
                delay = min(delay * 2, MAX_WATCH_BACKOFF_S)

    def _sync_pods(self, pods: Iterable[dict[str, Any]]) -> None:
        seen = set()
        for pod in pods:
            seen.add(pod["metadata"]["uid"])
            self._pod_seen(pod)
        with self.lock:
            gone = [worker for uid, worker in self.workers.items() if uid not in seen]
        for worker in gone:
            worker.send("removed", None)

    def _pod_seen(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            if self.stopping.is_set():
                return
            worker = self.workers.get(uid)
            if worker is None:
                worker = self.workers[uid] = PodWorker(self, pod)
                worker.thread.start()
                return
        worker.send("pod", pod)

    def _pod_removed(self, pod: dict[str, Any]) -> None:
        with self.lock:
            worker = self.workers.get(pod["metadata"]["uid"])
        if worker is not None:
            worker.send("removed", pod)

    def worker_done(self, worker: PodWorker) -> None:
        with self.lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]

    def allocate_ip(self, previous: str | None) -> str:
        """A free address of the node's podCIDR: the pod's previous one when it is free (a pod keeps its
        address across an agent restart)."""
        with self.lock:
            in_range = previous is not None and ipaddress.ip_address(previous) in ipaddress.ip_network(
                self.config.pod_cidr
            )
            if in_range and previous not in self.used_ips:
                address = str(previous)
            else:
                address = network.next_pod_ip(self.config.pod_cidr, self.used_ips, self.last_ip)
            self.used_ips.add(address)
            self.last_ip = address
            return address

    def release_ip(self, address: str) -> None:
        with self.lock:
            self.used_ips.discard(address)

    def resolve(self, pod: Mapping[str, Any]) -> plan.Resolved:
        """Fetches what the pod refers to; what does not exist is left out (the plan says what is missing)."""
        namespace = pod["metadata"]["namespace"]
        wanted = plan.references(pod)
        config_maps = {
            name: found
            for name in wanted.config_maps
            if (found := self.kube.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")) is not None
        }
        secrets = {
            name: found
            for name in wanted.secrets
            if (found := self.kube.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")) is not None
        }
        claims = {}
        for claim_name in wanted.claims:
            local_path = self._claim_path(namespace, claim_name)
            if local_path is not None:
                claims[claim_name] = local_path
        tokens = {request: self._token(pod, request) for request in wanted.tokens}
        return plan.Resolved(config_maps=config_maps, secrets=secrets, claims=claims, tokens=tokens)

    def _claim_path(self, namespace: str, claim_name: str) -> str | None:
        claim = self.kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim_name}")
        volume_name = (claim or {}).get("spec", {}).get("volumeName")
        if not volume_name or (claim or {}).get("status", {}).get("phase") != "Bound":
            return None
        volume = self.kube.get(f"/api/v1/persistentvolumes/{volume_name}") or {}
        spec = volume.get("spec", {})
        path = (spec.get("hostPath") or {}).get("path") or (spec.get("local") or {}).get("path")
        return str(path) if path else None

    def _token(self, pod: Mapping[str, Any], request: plan.TokenRequest) -> str:
        metadata = pod["metadata"]
        account = pod.get("spec", {}).get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": request.expiration_s,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"], "uid": metadata["uid"]},
        }
        if request.audience:
            spec["audiences"] = [request.audience]
        reply = self.kube.request(
            "POST",
            f"/api/v1/namespaces/{metadata['namespace']}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(reply["status"]["token"])


def node_object(config: NodeConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": config.name, "labels": {"kubernetes.io/hostname": config.name, **NODE_LABELS}},
        "spec": {"podCIDR": config.pod_cidr, "podCIDRs": [config.pod_cidr], "taints": [dict(t) for t in config.taints]},
    }


def parse_taints(text: str) -> tuple[dict[str, str], ...]:
    """kubelet's --register-with-taints: `key=value:Effect,key2:Effect`."""
    taints = []
    for item in filter(None, text.split(",")):
        key_value, _, effect = item.rpartition(":")
        key, _, value = key_value.partition("=")
        if not key or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ValueError(f"taint {item!r}: expected key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
        taints.append({"key": key, **({"value": value} if value else {}), "effect": effect})
    return tuple(taints)


def node_status(config: NodeConfig, previous: Iterable[Mapping[str, Any]], moment: dt.datetime) -> dict[str, Any]:
    """Capacity, addresses and conditions; each condition keeps its lastTransitionTime while unchanged."""
    before = {condition["type"]: condition for condition in previous}
    wanted = [
        ("Ready", "True", "KubeletReady", "canaria node agent is posting ready status"),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
    ]
    stamp = podstatus.timestamp(moment)
    conditions = [
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": (
                before[kind]["lastTransitionTime"]
                if before.get(kind, {}).get("status") == status and before[kind].get("lastTransitionTime")
                else stamp
            ),
        }
        for kind, status, reason, message in wanted
    ]
    return {
        "capacity": dict(CAPACITY),
        "allocatable": dict(CAPACITY),
        "conditions": conditions,
        # The API server dials a node's address for `kubectl logs/exec/port-forward`: only loopback, so that it
        # never sends a packet off this machine (a pod-range address or a DNS lookup of the name would).
        "addresses": [{"type": "InternalIP", "address": API_SERVER_NODE_ADDRESS}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "kubeletVersion": "canaria-node",
            "containerRuntimeVersion": "canaria-node://processes",
            "kernelVersion": os.uname().release,
            "osImage": "this machine",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }


# --- one pod -------------------------------------------------------------------------------------------


class ContainerRun:
    """One container of a pod across its restarts."""

    def __init__(self, container_plan: plan.ContainerPlan, init: bool, restart_offset: int) -> None:
        self.plan = container_plan
        self.init = init
        self.process: subprocess.Popen[bytes] | None = None
        self.last_pid: int | None = None
        self.generation = 0  # counts starts; events from an earlier run are ignored
        self.restart_offset = restart_offset  # restarts reported before this agent started
        self.started_at: dt.datetime | None = None
        self.exits: list[podstatus.Exit] = []
        self.backoff: lifecycle.Backoff | None = None
        self.restart_at: float | None = None  # monotonic time of the next (re)start attempt
        self.restart_delay_s = 0.0
        self.config_error = ""
        self.tallies: dict[str, lifecycle.ProbeTally] = {}
        self.probes_stop = threading.Event()
        self.killing = False

    @property
    def name(self) -> str:
        return self.plan.name

    def init_state(self) -> lifecycle.InitState:
        if self.process is not None:
            return lifecycle.InitState.RUNNING
        if not self.exits:
            return lifecycle.InitState.NOT_STARTED
        succeeded = self.exits[-1].exit_code == 0
        return lifecycle.InitState.SUCCEEDED if succeeded else lifecycle.InitState.FAILED

    def due(self, moment: float) -> bool:
        """Whether it should be started now: never started, or its retry time has come."""
        if self.process is not None:
            return False
        if self.restart_at is not None:
            return moment >= self.restart_at
        return not self.exits and not self.config_error

    def facts(self) -> podstatus.ContainerFacts:
        running = self.process is not None
        probes = self.plan.probes
        started = running and (probes.startup is None or self.tallies["startup"].result)
        ready = started and (probes.readiness is None or self.tallies["readiness"].result)
        waiting_restart = not running and self.restart_at is not None and not self.config_error
        return podstatus.ContainerFacts(
            name=self.name,
            image=self.plan.image,
            running_since=self.started_at if running else None,
            exits=tuple(self.exits[-2:]),
            restart_count=self.restart_offset + max(self.generation - 1, 0),
            restart_after_s=self.restart_delay_s if waiting_restart else None,
            config_error=self.config_error,
            ready=ready,
            started=started,
            container_id=f"canaria-node://{self.last_pid}" if self.last_pid else "",
        )


class PodWorker:
    """Runs one pod in its own thread; the watch, exit waiters and probes talk to it through events."""

    def __init__(self, agent: Agent, pod: dict[str, Any]) -> None:
        self.agent = agent
        self.pod = pod
        self.uid: str = pod["metadata"]["uid"]
        self.events: queue.Queue[tuple[str, tuple[Any, ...]]] = queue.Queue()
        metadata = pod["metadata"]
        self.label = f"{metadata['namespace']}/{metadata['name']}"
        self.thread = threading.Thread(target=self._run, name=f"pod {self.label}", daemon=True)
        self.pod_dir = agent.config.pods_dir / self.uid
        self.logs_dir = agent.config.logs_dir / f"{metadata['namespace']}_{metadata['name']}_{self.uid}"
        self.sandbox: network.Sandbox | None = None
        self.pause: subprocess.Popen[bytes] | None = None
        self.pod_ip: str | None = None
        self.start_time: dt.datetime | None = None
        self.volume_error = ""
        self.init_runs: list[ContainerRun] = []
        self.runs: list[ContainerRun] = []
        self.last_status: dict[str, Any] | None = None
        self.report_failed = False
        self.finished = False  # phase Succeeded or Failed: nothing runs any more
        self.stop_reason: str | None = None  # "deleted", "removed" or "shutdown"
        self.removal_grace_s: float = MIN_GRACE_S
        self.setup_error = ""
        self.next_retry = 0.0  # monotonic time to try a failed setup or missing volume again
        self.holds_ip = False

    def send(self, kind: str, *args: Any) -> None:
        self.events.put((kind, args))

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.pod.get("spec", {}))

    @property
    def restart_policy(self) -> str:
        return str(self.spec.get("restartPolicy", "Always"))

    def _run(self) -> None:
        try:
            self._live()
        except Exception:
            log.exception("pod %s: the worker failed", self.label)
        finally:
            self._teardown()
            self.agent.worker_done(self)

    def _live(self) -> None:
        if self.pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            self.finished = True  # finished under an earlier agent: only its deletion is left to do
        elif self.pod["metadata"].get("deletionTimestamp"):
            self.stop_reason = "deleted"
        else:
            self.start_time = now()
        while self.stop_reason is None:
            if not self.finished:
                if self.sandbox is None:
                    self._try_setup()
                else:
                    self._sync()
                self._report()
            self._wait_event()
        if self.stop_reason == "deleted":
            self._terminate(self._grace_s())
            self._teardown()  # before the pod leaves the API: once it is gone, nothing of it runs
            self._delete()
        elif self.stop_reason == "removed":
            self._terminate(self.removal_grace_s)
        else:
            self._terminate(min(self._grace_s(), SHUTDOWN_GRACE_S))

    def _deadline(self, grace_s: float) -> Callable[[], float]:
        """When a grace period starting now ends: at the latest soon after the agent itself is told to stop."""
        end = time.monotonic() + grace_s
        return lambda: min(end, self.agent.shutdown_at + SHUTDOWN_GRACE_S)

    def _grace_s(self) -> float:
        metadata, spec = self.pod["metadata"], self.spec
        grace = metadata.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
        return float(grace)

    # --- setting up --------------------------------------------------------------------------------

    def _try_setup(self) -> None:
        """The pod's network, then its plan and volumes; retried after RETRY_S when the network failed."""
        if time.monotonic() < self.next_retry:
            return
        try:
            self._setup()
            self.setup_error = ""
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            log.warning("pod %s: setting up its network failed: %s", self.label, err)
            self.setup_error = f"pod network: {err}"
            self.next_retry = time.monotonic() + RETRY_S
            self._teardown()

    def _setup(self) -> None:
        self.pod_ip = self.agent.allocate_ip(self.pod.get("status", {}).get("podIP"))
        self.holds_ip = True
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        hostname = plan.pod_hostname(self.pod)
        self.sandbox, self.pause = network.create_sandbox(self.pod_ip, hostname, self.logs_dir / "pause.log")
        self._record_process(self.pause.pid)
        Path(plan.hosts_file(self._context())).write_text(plan.hosts_file_content(self.pod, self._context()))
        offsets = _restart_counts(self.pod)
        pod_plan = self._plan()
        self.init_runs = [ContainerRun(c, True, offsets.get(c.name, 0)) for c in pod_plan.init_containers]
        self.runs = [ContainerRun(c, False, offsets.get(c.name, 0)) for c in pod_plan.containers]
        self._apply_plan(pod_plan)

    def _context(self) -> plan.PodContext:
        assert self.pod_ip is not None
        return plan.PodContext(
            node_name=self.agent.config.name,
            pod_ip=self.pod_ip,
            host_ip=self.agent.config.host_ip,
            pod_dir=str(self.pod_dir),
        )

    def _plan(self) -> plan.PodPlan:
        try:
            resolved = self.agent.resolve(self.pod)
        except (ApiError, OSError) as err:
            # Planned all the same (every container gets its run), held back as a volume error until it reads.
            pod_plan = plan.plan_pod(self.pod, self._context(), plan.Resolved(), self.agent.machine)
            return replace(pod_plan, volume_error=f"could not read the pod's references: {err}")
        return plan.plan_pod(self.pod, self._context(), resolved, self.agent.machine)

    def _apply_plan(self, pod_plan: plan.PodPlan) -> None:
        """Takes a new plan: its volumes are written once they can all be made; a container's new plan is used
        from its next start on."""
        self.volume_error = pod_plan.volume_error
        if not self.volume_error:
            fs_group = self.spec.get("securityContext", {}).get("fsGroup") if self.agent.machine.honour_run_as else None
            runtime.write_volumes(pod_plan.volumes, fs_group)
        for run, new in zip(self.init_runs + self.runs, pod_plan.init_containers + pod_plan.containers, strict=False):
            if run.process is None:
                run.plan = new

    # --- running -----------------------------------------------------------------------------------

    def _sync(self) -> None:
        moment = time.monotonic()
        if self.volume_error:
            if moment >= self.next_retry:
                self.next_retry = moment + RETRY_S
                self._apply_plan(self._plan())
            if self.volume_error:
                return
        step = lifecycle.init_step([run.init_state() for run in self.init_runs], self.restart_policy)
        if step.start is not None:
            run = self.init_runs[step.start]
            if run.due(moment):
                self._start(run)
        elif step.done:
            for run in self.runs:
                if run.due(moment):
                    self._start(run)

    def _start(self, run: ContainerRun) -> None:
        assert self.sandbox is not None
        if run.plan.error:
            self._apply_plan(self._plan())  # the missing ConfigMap, Secret or key may exist by now
        if run.plan.error:
            run.config_error = run.plan.error
            run.restart_at = time.monotonic() + RETRY_S
            return
        run.config_error = ""
        run.restart_at = None
        run.generation += 1
        run.killing = False
        run.probes_stop = threading.Event()
        run.tallies = {
            "startup": lifecycle.ProbeTally(False),
            "liveness": lifecycle.ProbeTally(True),
            "readiness": lifecycle.ProbeTally(False),
        }
        log_file = self.logs_dir / run.name / f"{run.generation - 1}.log"
        launch_file = self.pod_dir / "containers" / run.name / "launch.json"
        run.started_at = now()
        try:
            started = runtime.start_container(run.plan, self.sandbox, log_file, launch_file, self.agent.mount_points)
        except (OSError, subprocess.SubprocessError) as err:  # e.g. a mount point that cannot be made
            self._start_failed(run, f"preparing the container: {err}")
            return
        run.last_pid = started.process.pid
        if started.error:
            started.process.wait()
            self._start_failed(run, started.error)
            return
        run.process = started.process
        self._record_process(started.process.pid)
        generation, process = run.generation, started.process
        threading.Thread(
            target=lambda: self.send("exited", run, generation, process.wait()), name=f"wait {run.name}", daemon=True
        ).start()
        probes = run.plan.probes
        if probes.startup is not None:
            self._probe_loop(run, "startup", probes.startup)
        else:
            self._start_probes(run)

    def _start_failed(self, run: ContainerRun, message: str) -> None:
        log.warning("pod %s: container %s did not start: %s", self.label, run.name, message)
        run.exits.append(podstatus.Exit(128, now(), run.started_at, message, start_error=True))
        del run.exits[:-2]
        self._schedule_restart(run, 128)

    def _start_probes(self, run: ContainerRun) -> None:
        for kind in ("liveness", "readiness"):
            probe = getattr(run.plan.probes, kind)
            if probe is not None:
                self._probe_loop(run, kind, probe)

    def _probe_loop(self, run: ContainerRun, kind: str, probe: plan.Probe) -> None:
        generation, stop, process = run.generation, run.probes_stop, run.process
        assert process is not None

        def loop() -> None:
            if stop.wait(probe.initial_delay_s):
                return
            while not stop.is_set():
                succeeded, output = runtime.run_action(
                    probe.action, probe.timeout_s, process.pid, run.plan.env, run.plan.run_as
                )
                if stop.is_set():
                    return
                self.send("probe", run, generation, kind, succeeded, output)
                if kind == "startup" and succeeded:
                    return  # a startup probe stops once it has passed
                stop.wait(probe.period_s)

        threading.Thread(target=loop, name=f"{kind} {run.name}", daemon=True).start()

    def _wait_event(self) -> None:
        try:
            kind, args = self.events.get(timeout=self._next_wake())
        except queue.Empty:
            return
        if kind == "pod":
            self.pod = args[0]
            if self.pod["metadata"].get("deletionTimestamp"):
                self.stop_reason = "deleted"
        elif kind == "removed":
            self.stop_reason = "removed"
            grace = (args[0] or {}).get("metadata", {}).get("deletionGracePeriodSeconds")
            self.removal_grace_s = max(float(grace or 0), MIN_GRACE_S)
        elif kind == "shutdown":
            self.stop_reason = self.stop_reason or "shutdown"
        elif kind == "exited":
            self._on_exit(*args)
        elif kind == "probe":
            self._on_probe(*args)

    def _next_wake(self) -> float:
        if self.finished:
            return 60.0
        moments = [run.restart_at for run in self.init_runs + self.runs if run.restart_at is not None]
        if self.volume_error or self.sandbox is None:
            moments.append(self.next_retry)
        wake = min(moments, default=time.monotonic() + 60.0) - time.monotonic()
        if self.report_failed:
            wake = min(wake, 1.0)
        return min(max(wake, 0.05), 60.0)

    def _on_exit(self, run: ContainerRun, generation: int, returncode: int) -> None:
        if generation != run.generation or run.process is None:
            return
        assert self.sandbox is not None
        process, run.process = run.process, None
        run.probes_stop.set()
        runtime.kill_group_remnants(process.pid, self.sandbox.net_inode)
        code = lifecycle.exit_code_of(returncode)
        message = podstatus.termination_message(
            _read_bytes(Path(run.plan.termination_message_file), podstatus.MAX_MESSAGE_BYTES),
            _read_tail(self.logs_dir / run.name / f"{generation - 1}.log"),
            run.plan.fallback_to_logs,
            code,
        )
        run.exits.append(podstatus.Exit(code, now(), run.started_at, message))
        del run.exits[:-2]
        if self.stop_reason is None:
            self._schedule_restart(run, code)

    def _schedule_restart(self, run: ContainerRun, code: int) -> None:
        if lifecycle.restarts(self.restart_policy, code, init=run.init):
            moment = time.monotonic()
            run.restart_at, run.backoff = lifecycle.next_restart(run.backoff, moment)
            run.restart_delay_s = run.restart_at - moment
        else:
            run.restart_at = None

    def _on_probe(self, run: ContainerRun, generation: int, kind: str, succeeded: bool, output: str) -> None:
        if generation != run.generation or run.process is None or run.killing:
            return
        probe = getattr(run.plan.probes, kind)
        previous = run.tallies[kind]
        tally = lifecycle.tally(previous, succeeded, probe.success_threshold, probe.failure_threshold)
        run.tallies[kind] = tally
        if tally.result != previous.result or (not succeeded and kind != "readiness"):
            outcome = "passes" if succeeded else f"fails: {output.strip()[-200:]}"
            log.info("pod %s: %s probe of %s %s", self.label, kind, run.name, outcome)
        if kind == "startup" and succeeded:
            self._start_probes(run)
        elif kind in ("startup", "liveness") and tally.failures >= probe.failure_threshold:
            log.info("pod %s: killing %s (%s probe failed)", self.label, run.name, kind)
            run.killing = True
            run.probes_stop.set()
            process, deadline = run.process, self._deadline(self._grace_s())
            threading.Thread(target=runtime.stop_container, args=(process, deadline), daemon=True).start()

    # --- status ------------------------------------------------------------------------------------

    def _report(self) -> None:
        facts = podstatus.PodFacts(
            host_ip=self.agent.config.host_ip,
            pod_ip=self.pod_ip,
            start_time=self.start_time,
            sandbox_ready=self.sandbox is not None,
            init_containers=tuple(run.facts() for run in self.init_runs),
            containers=tuple(run.facts() for run in self.runs),
            volume_error=self.setup_error or self.volume_error,
        )
        status = podstatus.pod_status(self._pod_as_last_reported(), facts, now())
        if status == self.last_status:
            return
        metadata = self.pod["metadata"]
        path = f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}/status"
        # podIPs and hostIPs merge by address in a strategic merge patch: replace them instead.
        patched = dict(status)
        for key in ("podIPs", "hostIPs"):
            if key in patched:
                patched[key] = [*patched[key], {"$patch": "replace"}]
        body = {"metadata": {"uid": self.uid}, "status": patched}
        try:
            self.agent.kube.request("PATCH", path, body, content_type=STRATEGIC_MERGE_PATCH)
        except (ApiError, OSError) as err:
            gone = isinstance(err, ApiError) and err.status in (404, 409)
            self.report_failed = not gone
            if not gone:
                log.warning("pod %s: status update failed: %s", self.label, err)
            return
        self.report_failed = False
        self.last_status = status
        if status["phase"] in ("Succeeded", "Failed"):
            self._finish()

    def _pod_as_last_reported(self) -> dict[str, Any]:
        """The pod with the conditions this worker last wrote, so an event that lags behind our own write does
        not reset their lastTransitionTime."""
        current = list(self.pod.get("status", {}).get("conditions") or [])
        ours = {condition["type"]: condition for condition in (self.last_status or {}).get("conditions", [])}
        merged = [ours.pop(condition["type"], condition) for condition in current] + list(ours.values())
        return {**self.pod, "status": {**self.pod.get("status", {}), "conditions": merged}}

    def _finish(self) -> None:
        """The pod ran to completion: free its network and files; its status stays as it is."""
        log.info("pod %s finished", self.label)
        self.finished = True
        self._teardown()

    # --- stopping ----------------------------------------------------------------------------------

    def _terminate(self, grace_s: float) -> None:
        """preStop hooks, then SIGTERM to each container's group, SIGKILL when the grace period ends."""
        deadline = self._deadline(grace_s)
        running = [run for run in self.init_runs + self.runs if run.process is not None]
        for run in self.init_runs + self.runs:
            run.probes_stop.set()
        stoppers = [threading.Thread(target=self._stop_run, args=(run, deadline)) for run in running]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        log.info("pod %s stopped (%s)", self.label, self.stop_reason)

    def _stop_run(self, run: ContainerRun, deadline: Callable[[], float]) -> None:
        process = run.process
        if process is None:
            return
        hook = run.plan.pre_stop
        if isinstance(hook, plan.Sleep):
            sleep_end = time.monotonic() + hook.seconds
            while time.monotonic() < min(sleep_end, deadline()):
                time.sleep(0.1)
        elif hook is not None:
            remaining = max(deadline() - time.monotonic(), 0)
            runtime.run_action(hook, remaining, process.pid, run.plan.env, run.plan.run_as)
        # kubelet gives a container at least MIN_GRACE_S after its preStop hook
        minimum_end = time.monotonic() + MIN_GRACE_S
        runtime.stop_container(process, lambda: max(deadline(), minimum_end))

    def _teardown(self) -> None:
        """Whatever is left: processes, the network namespace and veth, the pod's directory, its address."""
        for run in self.init_runs + self.runs:
            run.probes_stop.set()
            if run.process is not None and run.process.poll() is None:
                runtime.stop_container(run.process, time.monotonic)
        if self.sandbox is not None:
            network.remove_sandbox(self.sandbox, self.pause)
            self.sandbox = self.pause = None
        shutil.rmtree(self.pod_dir, ignore_errors=True)
        if self.holds_ip and self.pod_ip is not None:
            self.agent.release_ip(self.pod_ip)
            self.holds_ip = False

    def _delete(self) -> None:
        """As kubelet: once everything is stopped, remove the pod from the API for good."""
        metadata = self.pod["metadata"]
        path = f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}"
        body = {"kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}
        with contextlib.suppress(ApiError, OSError):
            self.agent.kube.request("DELETE", path, {"apiVersion": "v1", **body})

    def _record_process(self, pid: int) -> None:
        """Recorded so a later agent can kill what this one left behind if it dies without cleaning up."""
        record_file = self.pod_dir / "processes.json"
        fresh: dict[str, Any] = {"pod_ip": self.pod_ip, "processes": []}
        record = json.loads(record_file.read_text()) if record_file.exists() else fresh
        record["processes"].append({"pid": pid, "start": runtime.process_start_time(pid)})
        record_file.write_text(json.dumps(record))


def _restart_counts(pod: Mapping[str, Any]) -> dict[str, int]:
    status = pod.get("status", {})
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    return {item["name"]: int(item.get("restartCount", 0)) for item in statuses}


def _read_bytes(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read(limit)
    except OSError:
        return b""


def _read_tail(path: Path) -> bytes:
    try:
        with open(path, "rb") as stream:
            stream.seek(max(stream.seek(0, os.SEEK_END) - 4 * podstatus.LOG_TAIL_BYTES, 0))
            return stream.read()
    except OSError:
        return b""
