"""Bringing the devcluster up and down: the Python API behind `python -m devcluster` and the test fixture.

cluster = Cluster.up(Path("."))      # or Cluster.attach(...) for one that already runs
cluster.kubeconfig, cluster.server
cluster.down()
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import components, gateway, monitoring, node, pki, podnet, procs
from .api import ApiClient, probe, wait_until
from .layout import ADDON_BINARIES, ADDONS, BINARIES, COMPONENTS, PORT_NAMES, Layout, Settings

NODE_NAME = "kwok-node-0"
NODE_CAPACITY = {"cpu": "256", "memory": "2Ti", "pods": "500"}  # room for the 200-object benchmark
# kwok's node is tainted so that pods run on the node agent's real node by default; load benchmarks and
# control-plane tests tolerate this taint to get fake pods (tests/support/manifests.py: on_fake_node).
FAKE_NODE_TAINT = {"key": components.KWOK_NODE_ANNOTATION, "value": "fake", "effect": "NoSchedule"}
CRD_ESTABLISHED_TIMEOUT_S = 60

log = logging.getLogger("devcluster")


class DevclusterError(Exception):
    """A failed step, told in one line: the component, the cause, and where its log is."""

    def __init__(self, component: str, cause: str, log: Path | None = None, fix: str = "") -> None:
        self.component, self.cause, self.log, self.fix = component, cause, log, fix
        message = f"{component}: {cause}"
        if fix:
            message += f"; {fix}"
        if log is not None:
            message += f" (log: {log})"
        super().__init__(message)


@dataclass
class Cluster:
    """A running devcluster. `started_here` says whether this process started it (and so should stop it)."""

    layout: Layout
    server: str
    started_here: bool
    _children: list[subprocess.Popen] = field(default_factory=list, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    @property
    def bin_dir(self) -> Path:
        return self.layout.bin_dir

    @classmethod
    def up(cls, root: Path = Path("."), settings: Settings | None = None) -> Cluster:
        """Returns the running cluster if one is healthy, else starts one. On any failure, everything this
        call started is stopped and a DevclusterError names the component, the cause and the log."""
        layout = Layout.resolve(root, settings or Settings())
        with _locked(layout):
            running = _attach(layout)
            if running is not None:
                return running
            _stop_and_clean(layout)  # a half-dead earlier cluster: start over
            return _Starter(layout, settings or Settings()).run()

    @classmethod
    def attach(cls, root: Path = Path("."), settings: Settings | None = None) -> Cluster | None:
        """The healthy cluster already running under this state dir, or None."""
        return _attach(Layout.resolve(root, settings or Settings()))

    def down(self) -> None:
        stop(self.layout)
        for child in self._children:  # reap our own children so none lingers as a zombie
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                child.wait(timeout=1)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Runs this cluster's kubectl against it, capturing text output."""
        return subprocess.run(
            [str(self.layout.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def env(self) -> dict[str, str]:
        """Environment variables that point kubectl, helm and Kubernetes clients at this cluster."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def stopped(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A block during which one part (RESTARTABLE) is stopped; it starts again as `up` starts it."""
        return stopped(self.layout, name)

    @property
    def pod_network(self) -> podnet.PodNetwork:
        """The pod network namespace: enter it to reach pod addresses (never dial them from the host)."""
        return _recorded_pod_network(self.layout)


def stop(layout: Layout) -> None:
    """Stops every process recorded under the state dir and removes the state (keeping `bin`)."""
    with _locked(layout):
        _stop_and_clean(layout)


def status(layout: Layout) -> dict[str, Any]:
    """Each component's pid (None when not running) and whether the API server answers /readyz."""
    pids = {name: procs.recorded_pid(procs.RunFiles(layout.run_dir, name)) for name in (*COMPONENTS, *ADDONS)}
    cluster = _attach(layout)
    return {"server": cluster.server if cluster else None, "ready": cluster is not None, "pids": pids}


# Parts that may be stopped and started again while the rest of the cluster runs (a test of an outage).
RESTARTABLE = ("prometheus",)


@dataclass(frozen=True)
class _Launch:
    """How `up` starts one part: its argv and environment, inside the pod network or not, and its health."""

    argv: list[str]
    env: Mapping[str, str] | None
    in_pod_network: bool
    healthy: Callable[[], bool]


def _launch_of(layout: Layout, name: str, ports: Mapping[str, int]) -> _Launch:
    if name == "prometheus":
        return _Launch(monitoring.prometheus_argv(layout), None, True, lambda: monitoring.prometheus_ready(ports))
    raise DevclusterError(name, f"cannot be restarted alone (only {', '.join(RESTARTABLE)})")


@contextlib.contextmanager
def stopped(layout: Layout, name: str, timeout_s: float = Settings().component_timeout_s) -> Iterator[None]:
    """Stops one running part for the block, then starts it as `up` did and waits until it is healthy.

    The state dir's lock is held throughout: a concurrent `up` (`make cluster`, another test session) waits
    for the part to be back instead of finding a component down and starting the whole cluster over."""
    with _locked(layout):
        recorded = json.loads(layout.cluster_file.read_text())
        launch = _launch_of(layout, name, recorded["ports"])
        run = procs.RunFiles(layout.run_dir, name)
        if procs.recorded_pid(run) is None:
            raise DevclusterError(name, "is not running", layout.log(name), fix="`make cluster`")
        procs.stop([run])
        try:
            yield
        finally:
            preexec = _recorded_pod_network(layout).preexec() if launch.in_pod_network else None
            env = {**(launch.env or os.environ), "PYTHONPATH": str(layout.root)}
            process = procs.start(launch.argv, layout.log(name), run, env=env, preexec=preexec)
            if not wait_until(launch.healthy, timeout_s, still_running=lambda: process.poll() is None):
                raise DevclusterError(name, f"did not become healthy again within {timeout_s:.0f}s", layout.log(name))
            log.info("%s started again (pid %d)", name, process.pid)


def restart(layout: Layout, name: str) -> None:
    """`python -m devcluster restart prometheus`: stop one part and start it again as `up` does."""
    with stopped(layout, name):
        pass


def _recorded_pod_network(layout: Layout) -> podnet.PodNetwork:
    pid = procs.recorded_pid(procs.RunFiles(layout.run_dir, "podnet"))
    if pid is None:
        raise DevclusterError("podnet", "the pod network's holder process is not running", fix="`make cluster`")
    return podnet.PodNetwork(pid)


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """One up/down at a time per state dir (pytest and `make cluster` may race)."""
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    with open(layout.lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _attach(layout: Layout) -> Cluster | None:
    try:
        recorded = json.loads(layout.cluster_file.read_text())
    except (OSError, ValueError):
        return None
    started = recorded.get("components", COMPONENTS)
    all_running = all(procs.recorded_pid(procs.RunFiles(layout.run_dir, name)) for name in started)
    if not all_running or not probe(recorded["server"] + "/readyz", _admin_client(layout, recorded["server"])):
        return None
    return Cluster(layout=layout, server=recorded["server"], started_here=False)


def _stop_and_clean(layout: Layout) -> None:
    for stage in _stop_stages(layout):
        procs.stop([procs.RunFiles(layout.run_dir, name) for name in stage])
    for path in layout.owned_paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _stop_stages(layout: Layout) -> list[list[str]]:
    """The recorded components in stop order: the API server's clients together, then the API server, then
    etcd. Stopped together, the API server hangs on its lost etcd and etcd waits on its clients."""
    recorded = {pid_file.stem for pid_file in layout.run_dir.glob("*.pid")}
    backends = ("kube-apiserver", "etcd")
    stages = [sorted(recorded - set(backends)), *([name] for name in backends if name in recorded)]
    return [stage for stage in stages if stage]


def _admin_client(layout: Layout, server: str) -> ApiClient:
    pki_files = pki.Pki(layout.pki_dir)
    return ApiClient(
        server=server,
        ca_file=pki_files.ca_cert,
        cert_file=pki_files.client_cert(pki.ADMIN),
        key_file=pki_files.client_key(pki.ADMIN),
    )


class _Starter:
    """One `up`: start each component in order, wait for it to be healthy, undo everything on failure."""

    def __init__(self, layout: Layout, settings: Settings) -> None:
        self.layout = layout
        self.settings = settings
        self.children: list[subprocess.Popen] = []
        self.processes: dict[str, subprocess.Popen] = {}
        self.helpers: list[subprocess.Popen] = []  # short-lived kubectl runs, not components
        self.started_at = time.monotonic()

    def run(self) -> Cluster:
        self._check_prerequisites()
        try:
            cluster = self._start_all()
        except BaseException:
            for helper in self.helpers:
                if helper.poll() is None:
                    helper.kill()
            _stop_and_clean(self.layout)
            for child in self.children + self.helpers:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    child.wait(timeout=1)
            raise
        return cluster

    def _check_prerequisites(self) -> None:
        for name in (*BINARIES, *(ADDON_BINARIES if self.settings.install_crds else ())):
            if not os.access(self.layout.binary(name), os.X_OK):
                raise DevclusterError(
                    name,
                    f"binary not found at {self.layout.binary(name)}",
                    fix="build it with `make tools` (bash devcluster/build.sh)",
                )
        if not self.layout.kwok_stages.is_file():
            raise DevclusterError("kwok", f"stage file not found at {self.layout.kwok_stages}", fix="run `make tools`")
        if self.settings.install_crds and not self.layout.crd_files:
            raise DevclusterError(
                "crds",
                f"no CRD files in {self.layout.crd_dir}",
                fix="generate them with `make tools` (bash devcluster/build.sh)",
            )

    def _start_all(self) -> Cluster:
        layout = self.layout
        ports = self._ports()
        server = f"https://127.0.0.1:{ports['kube-apiserver']}"
        pki_files = pki.generate(layout.pki_dir)
        _write_kubeconfigs(layout, pki_files, server)
        admin = _admin_client(layout, server)

        self._launch("podnet", podnet_argv(layout), port=None)
        self._await_healthy("podnet", lambda: podnet.READY_MARK in _text(layout.log("podnet")))
        network = podnet.PodNetwork(self.processes["podnet"].pid)
        # Inside the pod network, the API server answers at the same address as on the host.
        api = f"127.0.0.1:{ports['kube-apiserver']}"
        forwards = [podnet.Forward.parse(f"{podnet.INSIDE}:{api}={podnet.HOST}:{api}")]
        if self.settings.install_crds:  # the host's way in to Prometheus and the Gateway
            forwards += monitoring.host_forwards(ports) + gateway.host_forwards(ports)
        self._launch("podnet-forward", forward_argv(layout, network, forwards), port=None)
        self._await_healthy("podnet-forward", lambda: podnet.READY_MARK in _text(layout.log("podnet-forward")))

        self._launch("etcd", components.etcd(layout, ports), ports["etcd"])
        self._await_healthy("etcd", self._http_ok(ports["etcd"], "/health"))
        self._launch("kube-apiserver", components.kube_apiserver(layout, ports, pki_files), ports["kube-apiserver"])
        self._await_healthy("kube-apiserver", lambda: probe(server + "/readyz", admin))

        # From here on, work in parallel: the CRDs and the node go in while the other components start.
        crd_apply = self._begin_crd_apply() if self.settings.install_crds else None
        admin.create("/api/v1/nodes", _fake_node())
        clients = {
            "kube-controller-manager": components.kube_controller_manager(layout, ports, pki_files),
            "kube-scheduler": components.kube_scheduler(layout, ports),
            "kwok": components.kwok(layout, ports),
        }
        for name, argv in clients.items():
            self._launch(name, argv, ports[name])
        self._await_healthy("kube-controller-manager", self._https_ok(ports["kube-controller-manager"]))
        self._await_healthy("kube-scheduler", self._https_ok(ports["kube-scheduler"]))
        self._await_healthy("kwok", self._http_ok(ports["kwok"], "/healthz"))
        self._launch("node-agent", node.argv(layout), port=None, preexec=network.preexec())

        self._wait("kwok", f"node {NODE_NAME} did not become Ready and untainted", lambda: _node_ready(admin))
        self._progress(f"node {NODE_NAME} Ready")
        self._await_healthy("node-agent", lambda: node.healthy(node.state_dir(layout)))
        self._wait("node-agent", f"node {node.NODE_NAME} did not become Ready", lambda: _ready(admin, node.NODE_NAME))
        self._progress(f"node {node.NODE_NAME} Ready (pods run here by default)")
        self._wait(
            "kube-controller-manager",
            "the default ServiceAccount was not created",
            lambda: admin.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
        )
        if crd_apply is not None:
            self._finish_crds(crd_apply, admin)
            self._start_addons(ports, admin, network)
        started = [name for name in (*COMPONENTS, *ADDONS) if name in self.processes]
        record = {"server": server, "ports": ports, "components": started}
        layout.cluster_file.write_text(json.dumps(record, indent=2) + "\n")
        return Cluster(layout=layout, server=server, started_here=True, _children=self.children)

    def _start_addons(self, ports: dict[str, int], admin: ApiClient, network: podnet.PodNetwork) -> None:
        """What serves the third-party CRDs: the Prometheus Operator and the Prometheus it configures, and Traefik
        as the Gateway. The Gateway and the first Prometheus configuration come up in parallel."""
        layout = self.layout
        monitoring.bootstrap(admin, layout)
        gateway.bootstrap(admin)
        self._launch("traefik", gateway.traefik_argv(layout), None, network.preexec(), gateway.traefik_env(layout))
        operator_port = ports["prometheus-operator"]
        self._launch("prometheus-operator", monitoring.operator_argv(layout, ports), operator_port, None,
                     monitoring.operator_env(layout))  # fmt: skip
        self._await_healthy("prometheus-operator", lambda: monitoring.operator_healthy(ports))
        self._launch("prometheus-sync", monitoring.sync_argv(layout, ports), None)
        self._await_healthy("prometheus-sync", lambda: monitoring.config_written(layout))
        prometheus = _launch_of(layout, "prometheus", ports)  # as `stopped` starts it again
        self._launch("prometheus", prometheus.argv, None, network.preexec(), prometheus.env)
        self._await_healthy("prometheus", prometheus.healthy)
        self._await_healthy("traefik", lambda: gateway.programmed(admin))

    def _ports(self) -> dict[str, int]:
        ports = {name: self.settings.ports.get(name) or procs.free_port() for name in PORT_NAMES}
        if len(set(ports.values())) != len(ports):  # the kernel may hand a port back twice in a row
            return self._ports()
        return ports

    def _launch(
        self,
        name: str,
        argv: list[str],
        port: int | None,
        preexec: Callable[[], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Starts one component (inside the pod network when preexec says so), after checking its port."""
        log = self.layout.log(name)
        if port is not None and procs.port_in_use(port):
            raise DevclusterError(name, f"port 127.0.0.1:{port} is already in use", log)
        # PYTHONPATH: the Python components run as `python -m devcluster.*`.
        env = {**(env or os.environ), "PYTHONPATH": str(self.layout.root)}
        if name == "kwok":
            self.layout.kwok_home.mkdir(parents=True, exist_ok=True)
            env["HOME"] = str(self.layout.kwok_home)
        process = procs.start(argv, log, procs.RunFiles(self.layout.run_dir, name), env=env, preexec=preexec)
        self.children.append(process)
        self.processes[name] = process

    def _await_healthy(self, name: str, healthy: Callable[[], bool]) -> None:
        self._wait(name, "did not become healthy", healthy)
        self._progress(f"{name} healthy (pid {self.processes[name].pid})")

    def _progress(self, what: str) -> None:
        log.info("%5.1fs %s", time.monotonic() - self.started_at, what)

    def _wait(self, name: str, what: str, condition: Callable[[], bool]) -> None:
        timeout = self.settings.component_timeout_s
        if wait_until(condition, timeout, still_running=self._all_running):
            return
        dead = next((n for n, p in self.processes.items() if p.poll() is not None), None)
        if dead is not None:
            code = self.processes[dead].returncode
            raise DevclusterError(dead, _exit_cause(self.layout.log(dead), code), self.layout.log(dead))
        raise DevclusterError(name, f"{what} within {timeout:.0f}s", self.layout.log(name))

    def _all_running(self) -> bool:
        return all(process.poll() is None for process in self.processes.values())

    @staticmethod
    def _http_ok(port: int, path: str) -> Callable[[], bool]:
        return lambda: probe(f"http://127.0.0.1:{port}{path}")

    @staticmethod
    def _https_ok(port: int) -> Callable[[], bool]:
        return lambda: probe(f"https://127.0.0.1:{port}/healthz")

    def _begin_crd_apply(self) -> subprocess.Popen:
        """`kubectl apply --server-side` of the third-party CRDs, in the background (a helper, not a component)."""
        files = self.layout.crd_files
        argv = [
            str(self.layout.binary("kubectl")),
            f"--kubeconfig={self.layout.kubeconfig}",
            "apply",
            "--server-side",
            "--force-conflicts",
            *(f"--filename={path}" for path in files),
        ]
        with open(self.layout.log("crds"), "ab") as out:
            apply = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.helpers.append(apply)
        return apply

    def _finish_crds(self, apply: subprocess.Popen, admin: ApiClient) -> None:
        crd_log = self.layout.log("crds")
        try:
            code = apply.wait(timeout=CRD_ESTABLISHED_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            apply.kill()
            raise DevclusterError("crds", "`kubectl apply` of the third-party CRDs hung", crd_log) from None
        if code != 0:
            raise DevclusterError("crds", f"`kubectl apply` of the third-party CRDs exited with code {code}", crd_log)
        names = [name for path in self.layout.crd_files for name in _crd_names(path)]
        self._wait("crds", "third-party CRDs were not Established", lambda: all(_established(admin, n) for n in names))
        self._progress(f"{len(names)} third-party CRDs Established")


def _exit_cause(log: Path, code: int | None) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    if "address already in use" in text:
        return f"exited with code {code}: a port it needs is already in use"
    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
    return f"exited with code {code}" + (f": {last[:200]}" if last else "")


def podnet_argv(layout: Layout) -> list[str]:
    # --state-dir only names the cluster in process listings.
    return [sys.executable, "-m", "devcluster.podnet", "hold", f"--state-dir={layout.state_dir}"]


def forward_argv(layout: Layout, network: podnet.PodNetwork, forwards: list[podnet.Forward]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "devcluster.podnet",
        "forward",
        f"--state-dir={layout.state_dir}",
        f"--holder-pid={network.holder_pid}",
        *(f"--forward={forward}" for forward in forwards),
    ]


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _fake_node() -> dict[str, Any]:
    """The kwok node: plenty of room for fake pods, tainted so only pods that ask for it land there."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {
                components.KWOK_NODE_ANNOTATION: components.KWOK_NODE_ANNOTATION_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {"podCIDR": podnet.FAKE_NODE_POD_CIDR, "taints": [FAKE_NODE_TAINT]},
        "status": {"allocatable": dict(NODE_CAPACITY), "capacity": dict(NODE_CAPACITY)},
    }


def _node_ready(client: ApiClient) -> bool:
    code, fake = client.get(f"/api/v1/nodes/{NODE_NAME}")
    # Ready, and the lifecycle controller's not-ready taints gone.
    return code == 200 and _ready(client, NODE_NAME) and fake.get("spec", {}).get("taints") == [FAKE_NODE_TAINT]


def _ready(client: ApiClient, node_name: str) -> bool:
    code, found = client.get(f"/api/v1/nodes/{node_name}")
    conditions = found.get("status", {}).get("conditions", []) if code == 200 else []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _established(client: ApiClient, crd_name: str) -> bool:
    code, crd = client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}")
    conditions = crd.get("status", {}).get("conditions", []) if code == 200 else []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def _crd_names(path: Path) -> list[str]:
    # BaseLoader: every scalar a string. The CRDs' schemas hold values such as `=` that the safe loader refuses,
    # and only the names are needed here. The C loader when present: these files run to thousands of lines.
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    with open(path) as stream:
        documents = list(yaml.load_all(stream, Loader=loader))
    return [doc["metadata"]["name"] for doc in documents if doc and doc.get("kind") == "CustomResourceDefinition"]


def _write_kubeconfigs(layout: Layout, pki_files: pki.Pki, server: str) -> None:
    _write_kubeconfig(layout.kubeconfig, pki_files, pki.ADMIN, server)
    for name, identity in (
        ("kube-controller-manager", pki.CONTROLLER_MANAGER),
        ("kube-scheduler", pki.SCHEDULER),
        ("kwok", pki.KWOK),
    ):
        _write_kubeconfig(layout.component_kubeconfig(name), pki_files, identity, server)


def _write_kubeconfig(path: Path, pki_files: pki.Pki, identity: pki.ClientIdentity, server: str) -> None:
    """A self-contained kubeconfig (certificates inlined), so it can be copied anywhere on this machine."""

    def inline(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config: Mapping[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "devcluster",
                "cluster": {"server": server, "certificate-authority-data": inline(pki_files.ca_cert)},
            }
        ],
        "users": [
            {
                "name": identity.user,
                "user": {
                    "client-certificate-data": inline(pki_files.client_cert(identity)),
                    "client-key-data": inline(pki_files.client_key(identity)),
                },
            }
        ],
        "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": identity.user}}],
        "current-context": "devcluster",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
