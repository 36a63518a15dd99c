"""A pod's network: a pause process holding a new network (and UTS) namespace, joined to the cluster namespace
by a veth pair. Cluster side `cn<pod IP in hex>`: up, a /32 route to the pod, proxy ARP. Pod side `eth0`: the
pod IP/32, a route to the cluster namespace's own address and the pod range through it. The cluster
namespace has no route out, so nothing a pod sends can leave it.

Every `ip` command runs in the cluster namespace, which is checked before each one (never the host's), or
inside the pod's own namespace through nsenter.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

CLUSTER_ADDRESS = "10.244.0.1"  # the cluster namespace's own address, on its loopback
POD_RANGE = "10.244.0.0/16"
PAUSE_SCRIPT = Path(__file__).with_name("pause.py")
PAUSE_READY_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 10.0


class HostNamespaceError(RuntimeError):
    """The node agent is not inside the cluster namespace: it must not touch any interface here."""


def net_ns_inode(pid: int | str = "thread-self") -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def host_net_ns_inode() -> int:
    """The host's network namespace: init's, or kthreadd's (pid 2, a kernel thread, always in the host's
    namespace) where init's is not readable (on these machines it is not, even for root)."""
    for pid in (1, 2):
        with contextlib.suppress(OSError):
            return net_ns_inode(pid)
    raise HostNamespaceError("cannot read the host's network namespace (/proc/1 or /proc/2): refusing to go on")


def require_cluster_namespace() -> None:
    """Refuses to go on in the host's network namespace."""
    if net_ns_inode() == host_net_ns_inode():
        raise HostNamespaceError(
            "the node agent runs in the host's network namespace; it must run inside the devcluster's cluster "
            "namespace (it creates interfaces and routes)"
        )


def next_pod_ip(cidr: str, used: Collection[str], after: str | None = None) -> str:
    """The first free address of cidr after `after` (round robin, so a freed address is not handed out again at
    once while Endpoints may still point at it)."""
    hosts = [str(address) for address in ipaddress.ip_network(cidr).hosts()]
    start = hosts.index(after) + 1 if after in hosts else 0
    for address in hosts[start:] + hosts[:start]:
        if address not in used:
            return address
    raise RuntimeError(f"no free pod address left in {cidr}")


def interface_name(pod_ip: str) -> str:
    """The cluster-side veth of a pod: unique per address, within Linux's 15-character limit."""
    return f"cn{int(ipaddress.ip_address(pod_ip)):08x}"


@dataclass(frozen=True)
class Sandbox:
    """A pod's network namespace, held by its pause process."""

    pause_pid: int
    pod_ip: str
    net_inode: int

    @property
    def netns(self) -> str:
        return f"/proc/{self.pause_pid}/ns/net"

    @property
    def utsns(self) -> str:
        return f"/proc/{self.pause_pid}/ns/uts"

    @property
    def interface(self) -> str:
        return interface_name(self.pod_ip)


def create_sandbox(pod_ip: str, hostname: str, log_file: Path) -> tuple[Sandbox, subprocess.Popen[bytes]]:
    """Starts the pause process and wires its namespace to the cluster namespace."""
    require_cluster_namespace()
    with open(log_file, "ab") as log:
        pause = subprocess.Popen(
            [sys.executable, str(PAUSE_SCRIPT), hostname],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    try:
        assert pause.stdout is not None
        ready = pause.stdout.readline()
        pause.stdout.close()
        if ready.strip() != b"ready":
            raise RuntimeError(f"the pause process did not start (see {log_file})")
        inode = net_ns_inode(pause.pid)
        if inode in (host_net_ns_inode(), net_ns_inode()):
            raise RuntimeError("the pause process did not get a network namespace of its own")
        sandbox = Sandbox(pause_pid=pause.pid, pod_ip=pod_ip, net_inode=inode)
        _wire(sandbox)
    except BaseException:
        _stop_pause(pause.pid)
        pause.wait()
        raise
    return sandbox, pause


def _wire(sandbox: Sandbox) -> None:
    name = sandbox.interface
    _ip_cluster("link", "del", name, check=False)  # left over by an agent that was killed
    _ip_cluster("link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", str(sandbox.pause_pid))
    _ip_cluster("link", "set", name, "up")
    _ip_cluster("route", "replace", f"{sandbox.pod_ip}/32", "dev", name)
    require_cluster_namespace()
    Path(f"/proc/sys/net/ipv4/conf/{name}/proxy_arp").write_text("1\n")
    pod_side = "\n".join(
        (
            "link set lo up",
            "link set eth0 up",
            f"addr add {sandbox.pod_ip}/32 dev eth0",
            f"route add {CLUSTER_ADDRESS} dev eth0",
            f"route add {POD_RANGE} via {CLUSTER_ADDRESS} dev eth0",
        )
    )
    _run(["nsenter", f"--net={sandbox.netns}", "ip", "-batch", "-"], input=pod_side)


def remove_sandbox(sandbox: Sandbox, pause: subprocess.Popen[bytes] | None = None) -> None:
    """Kills whatever still runs in the pod's namespace, then the pause process, then the cluster-side veth."""
    kill_namespace_processes(sandbox.net_inode, spare=sandbox.pause_pid)
    _stop_pause(sandbox.pause_pid)
    if pause is not None:
        pause.wait(timeout=COMMAND_TIMEOUT_S)
    _ip_cluster("link", "del", sandbox.interface, check=False)  # normally gone with the namespace


def remove_leftover_interface(pod_ip: str) -> None:
    _ip_cluster("link", "del", interface_name(pod_ip), check=False)


def _stop_pause(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def kill_namespace_processes(net_inode: int, spare: int | None = None) -> list[int]:
    """SIGKILLs every process in the given network namespace (but `spare`) and waits until they are gone."""
    victims = [pid for pid in processes_in_namespace(net_inode) if pid != spare]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + COMMAND_TIMEOUT_S
    while time.monotonic() < deadline and any(_alive(pid) for pid in victims):
        time.sleep(0.02)
    return victims


def processes_in_namespace(net_inode: int) -> list[int]:
    """Live processes whose network namespace is net_inode: a pod's processes, whatever group they are in."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino == net_inode and _alive(int(entry)):
                pids.append(int(entry))
    return pids


def _alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _ip_cluster(*args: str, check: bool = True) -> None:
    require_cluster_namespace()
    _run(["ip", *args], check=check)


def _run(argv: list[str], input: str | None = None, check: bool = True) -> None:
    result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
