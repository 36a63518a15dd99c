"""Where the devcluster keeps its files, and the settings a caller may override (tests: a temp state dir)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

STATE_DIR_NAME = ".devcluster"

# The Go binaries of the control plane, in start order.
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
BINARIES = (*CONTROL_PLANE, "kubectl")
# Every process a running cluster has, in start order: the pod network namespace's holder first, then the
# control plane, then what lives in the pod network (devcluster/podnet.py, devcluster/node/).
COMPONENTS = ("podnet", *CONTROL_PLANE, "podnet-forward", "node-agent")
# What serves the third-party CRDs (devcluster/monitoring.py, devcluster/gateway.py): started with them.
ADDONS = ("prometheus-operator", "prometheus-sync", "prometheus", "traefik")
ADDON_BINARIES = ("prometheus", "prometheus-operator", "traefik")

# The ports a cluster listens on, all on 127.0.0.1. Any of them can be fixed through Settings.ports.
PORT_NAMES = (
    "etcd",
    "etcd-peer",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "prometheus-operator",  # its health endpoint
    "prometheus",  # the host's forward to Prometheus' HTTP API
    "gateway",  # the host's forward to the Gateway (Traefik)
)


@dataclass(frozen=True)
class Settings:
    """What a caller may change; every field defaults to the repository's own `.devcluster`."""

    state_dir: Path | None = None  # default: <root>/.devcluster
    bin_dir: Path | None = None  # default: <state_dir>/bin (the symlink build.sh maintains)
    ports: Mapping[str, int] = field(default_factory=dict)  # fixed ports by PORT_NAMES entry; others free
    install_crds: bool = True  # the third-party CRDs build.sh generated (Layout.crd_files)
    component_timeout_s: float = 60.0


@dataclass(frozen=True)
class Layout:
    """The absolute paths of one devcluster's files."""

    root: Path
    state_dir: Path
    bin_dir: Path

    @classmethod
    def resolve(cls, root: Path, settings: Settings) -> Layout:
        root = root.resolve()
        state_dir = (settings.state_dir or root / STATE_DIR_NAME).resolve()
        return cls(
            root=root,
            state_dir=state_dir,
            # Not resolved: `.devcluster/bin` is a symlink into the build cache and shows up in messages.
            bin_dir=Path(os.path.abspath(settings.bin_dir or state_dir / "bin")),
        )

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def kwok_stages(self) -> Path:
        """kwok's default Stages, written by build.sh from the pinned kwok module."""
        return self.bin_dir / "kwok-stages.yaml"

    @property
    def crd_dir(self) -> Path:
        """The third-party CRDs, written by build.sh from the pinned modules that serve them: the Prometheus
        Operator's (monitoring.coreos.com) and the Gateway API's standard channel."""
        return self.bin_dir / "crds"

    @property
    def crd_files(self) -> list[Path]:
        return sorted(self.crd_dir.glob("*.yaml"))

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def audit_policy(self) -> Path:
        """The API server's audit policy, kept beside this module."""
        return Path(__file__).with_name("audit-policy.yaml")

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: one JSON event per line."""
        return self.logs_dir / "audit.log"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def etcd_data_dir(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def kwok_home(self) -> Path:
        """kwok's HOME, so it never picks up a developer's ~/.kwok/kwok.yaml."""
        return self.state_dir / "kwok-home"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig, the one users and tests point KUBECONFIG at."""
        return self.state_dir / "kubeconfig"

    @property
    def component_kubeconfigs_dir(self) -> Path:
        return self.state_dir / "kubeconfigs"

    def component_kubeconfig(self, name: str) -> Path:
        return self.component_kubeconfigs_dir / f"{name}.kubeconfig"

    @property
    def node_dir(self) -> Path:
        """The node agent's state: one directory per pod (volumes, logs, termination messages)."""
        return self.state_dir / "node"

    @property
    def monitoring_dir(self) -> Path:
        """Prometheus' files (config, rules, certificates, kubeconfig) and its data (devcluster/monitoring.py)."""
        return self.state_dir / "monitoring"

    @property
    def cluster_file(self) -> Path:
        """The running cluster's address and ports, written once `up` succeeded."""
        return self.state_dir / "cluster.json"

    @property
    def owned_paths(self) -> tuple[Path, ...]:
        """Everything `up` creates in the state dir and `down` removes: nothing else there is touched, so a
        mistaken state_dir cannot cost anyone their files. (`bin` and the lock file stay.)"""
        return (
            self.pki_dir,
            self.logs_dir,
            self.run_dir,
            self.etcd_data_dir,
            self.kwok_home,
            self.node_dir,
            self.monitoring_dir,
            self.kubeconfig,
            self.component_kubeconfigs_dir,
            self.cluster_file,
        )

    @property
    def lock_file(self) -> Path:
        return self.state_dir / ".lock"

    def log(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"
