"""The pod network: a network namespace of the devcluster's own, where every pod address lives.

Kubernetes rejects loopback addresses in EndpointSlices, so pods need addresses from a private range
(10.244.0.0/16). From the host's namespace a connection to such an address would leave this machine for the
real network; inside a namespace the devcluster creates, nothing routes out, so that traffic cannot leak.

- A holder process (`python -m devcluster.podnet hold`) unshares a new network namespace, brings its loopback
  up with GATEWAY_IP on it and turns on forwarding there (a per-namespace setting), and then sleeps. The
  namespace lives as long as any process is inside it. The node agent adds one namespace per pod, linked to
  this one by a veth pair (devcluster/node).
- Processes that talk to pods (the node agent, Prometheus, Traefik, load generators) run inside it:
  `PodNetwork.preexec()` for a subprocess, `PodNetwork.enter()` for the current thread.
- A forwarder (`python -m devcluster.podnet forward`) joins the two sides through host loopback: the API
  server is reachable inside at the same 127.0.0.1:<port> as outside (one kubeconfig works in both), and the
  host reaches the in-namespace services it needs (Prometheus, the Gateway) on loopback ports. Its sockets
  for the namespace side are created by a thread that entered the namespace, so the host never dials a pod
  address.
- `guard_dial(host)` is the rule every client of the project applies before it connects: a pod address is
  dialled only from inside the namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

POD_NETWORK = ipaddress.ip_network("10.244.0.0/16")
# The cluster namespace's own address: in-namespace services (Prometheus, the Gateway, test file servers)
# listen here, and every pod routes to it.
GATEWAY_IP = "10.244.0.1"
NODE_POD_CIDR = "10.244.1.0/24"  # the node agent's pods
FAKE_NODE_POD_CIDR = "10.244.128.0/17"  # kwok's fake pods: addresses that nothing ever dials
CLONE_NEWNET = 0x40000000
READY_MARK = "podnet ready"

_libc = ctypes.CDLL(None, use_errno=True)


class PodNetworkError(Exception):
    """A refused or failed pod-network operation, told in one line."""


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise PodNetworkError(f"{what}: {os.strerror(errno)} (needs root: CAP_SYS_ADMIN)")


def setns(path: str | Path) -> None:
    """Moves the calling thread into the network namespace at path (only this OS thread moves)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns({path})")
    finally:
        os.close(fd)


def netns_inode(path: str | Path = "/proc/thread-self/ns/net") -> int:
    return os.stat(path).st_ino


def is_pod_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host) in POD_NETWORK
    except ValueError:
        return False  # a name: the project's clients only ever name loopback services


@dataclass(frozen=True)
class PodNetwork:
    """The running pod network namespace, held by holder_pid."""

    holder_pid: int

    @property
    def netns_path(self) -> Path:
        return Path(f"/proc/{self.holder_pid}/ns/net")

    @property
    def inode(self) -> int:
        return netns_inode(self.netns_path)

    def contains_current_thread(self) -> bool:
        return netns_inode() == self.inode

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Runs the body with the current thread inside the namespace; sockets created there stay there."""
        if self.contains_current_thread():
            yield
            return
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(self.netns_path)
            try:
                yield
            finally:
                _check(_libc.setns(home, CLONE_NEWNET), "setns(back to the host namespace)")
        finally:
            os.close(home)

    def preexec(self) -> Callable[[], None]:
        """A subprocess preexec_fn that moves the child into the namespace before exec."""
        path = str(self.netns_path)
        return lambda: setns(path)

    def socket_inside(self, family: int = socket.AF_INET) -> socket.socket:
        """A TCP socket that belongs to the namespace, wherever it is used from afterwards."""
        with self.enter():
            return socket.socket(family, socket.SOCK_STREAM)


def guard_dial(host: str, network: PodNetwork | None) -> None:
    """Raises unless dialling host from the current thread stays on this machine: a pod address only from
    inside the pod network namespace."""
    if not is_pod_address(host):
        return
    if network is None or not network.contains_current_thread():
        raise PodNetworkError(
            f"refusing to dial pod address {host} from outside the pod network namespace "
            "(it would leave this machine); run the client inside it (PodNetwork.enter())"
        )


# --- the holder: `python -m devcluster.podnet hold` ---


def hold() -> None:
    """Unshares a new network namespace, configures it, says READY_MARK on stdout, and sleeps until SIGTERM."""
    before = netns_inode()
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
    if netns_inode() == before:  # never configure the namespace we started in: that could be the host's
        raise PodNetworkError("unshare did not create a new network namespace; refusing to configure it")
    for argv in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{GATEWAY_IP}/32", "dev", "lo"]):
        subprocess.run(argv, check=True)
    # This namespace's own sysctl (the host's is untouched): lets pods reach each other through it.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    print(READY_MARK, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


# --- the forwarder: `python -m devcluster.podnet forward --netns PATH --forward SPEC...` ---

HOST, INSIDE = "host", "podnet"


@dataclass(frozen=True)
class Forward:
    """Accept on (listen_side, listen_addr, listen_port); for each connection dial (dial_side, dial_addr,
    dial_port). Written `host:127.0.0.1:6443=podnet:127.0.0.1:6443`."""

    listen_side: str
    listen_addr: str
    listen_port: int
    dial_side: str
    dial_addr: str
    dial_port: int

    @classmethod
    def parse(cls, text: str) -> Forward:
        listen, dial = text.split("=")
        ls, la, lp = listen.split(":")
        ds, da, dp = dial.split(":")
        if {ls, ds} - {HOST, INSIDE}:
            raise ValueError(f"forward {text!r}: sides are {HOST!r} or {INSIDE!r}")
        forward = cls(ls, la, int(lp), ds, da, int(dp))
        for side, addr in ((ls, la), (ds, da)):
            if side == HOST and not ipaddress.ip_address(addr).is_loopback:
                raise ValueError(f"forward {text!r}: on the host side only loopback addresses are allowed")
        return forward

    def __str__(self) -> str:
        return (
            f"{self.listen_side}:{self.listen_addr}:{self.listen_port}"
            f"={self.dial_side}:{self.dial_addr}:{self.dial_port}"
        )


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _new_socket(side: str, network: PodNetwork) -> socket.socket:
    return network.socket_inside() if side == INSIDE else socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def _listen(forward: Forward, network: PodNetwork) -> socket.socket:
    listener = _new_socket(forward.listen_side, network)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((forward.listen_addr, forward.listen_port))
    listener.listen(128)
    return listener


def _serve(forward: Forward, listener: socket.socket, network: PodNetwork) -> None:
    while True:
        client, _ = listener.accept()
        upstream = _new_socket(forward.dial_side, network)
        try:
            upstream.connect((forward.dial_addr, forward.dial_port))
        except OSError:
            client.close()
            upstream.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def forward_all(forwards: list[Forward], network: PodNetwork) -> None:
    """Binds every listener first (a taken port fails the start, not a later connection), then serves."""
    listeners = [(forward, _listen(forward, network)) for forward in forwards]
    for forward, listener in listeners:
        threading.Thread(target=_serve, args=(forward, listener, network), name=str(forward), daemon=True).start()
    print(READY_MARK, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devcluster.podnet")
    commands = parser.add_subparsers(dest="command", required=True)
    hold_cmd = commands.add_parser("hold", help="create and hold the pod network namespace")
    fwd = commands.add_parser("forward", help="join host loopback and the pod network")
    for command in (hold_cmd, fwd):  # names the cluster in process listings
        command.add_argument("--state-dir", default="")
    fwd.add_argument("--holder-pid", type=int, required=True)
    fwd.add_argument("--forward", action="append", default=[], type=Forward.parse)
    args = parser.parse_args(argv)
    if args.command == "hold":
        hold()
    else:
        forward_all(args.forward, PodNetwork(args.holder_pid))


if __name__ == "__main__":
    main()
