"""The pod network namespace, checked without ever sending a packet to a pod address from the host: the host's
namespace holds no pod-range address and listens on none, while inside the namespace the API server answers at
the host's address and the pod range is local."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import subprocess
from pathlib import Path

from devcluster import Cluster, pki
from devcluster.podnet import POD_NETWORK, PodNetworkError, guard_dial, netns_inode


def _listening_addresses(proc_net_tcp: Path) -> set[ipaddress.IPv4Address]:
    """Local addresses of the LISTEN sockets in one namespace's /proc/<pid>/net/tcp."""
    addresses = set()
    for line in proc_net_tcp.read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A":  # TCP_LISTEN
            hex_ip = local.split(":")[0]
            addresses.add(ipaddress.IPv4Address(bytes.fromhex(hex_ip)[::-1]))
    return addresses


def test_the_host_namespace_holds_no_pod_address(cluster: Cluster) -> None:
    addresses = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout)
    host_ips = [ipaddress.ip_address(a["local"]) for link in addresses for a in link.get("addr_info", [])]
    assert host_ips, "ip -j addr listed no address at all: the check would prove nothing"
    assert not [ip for ip in host_ips if ip in POD_NETWORK]
    assert not [ip for ip in _listening_addresses(Path("/proc/self/net/tcp")) if ip in POD_NETWORK]


def test_inside_the_namespace_the_pod_range_is_local_and_the_api_answers(cluster: Cluster) -> None:
    network = cluster.pod_network
    assert network.inode != netns_inode("/proc/self/ns/net")
    with network.enter():
        routes = subprocess.run(["ip", "-j", "route", "show", "table", "local"], capture_output=True, text=True)
        # `ip` runs as a child of this thread, so it inherits the namespace.
        local = {r["dst"] for r in json.loads(routes.stdout)}
        assert "10.244.0.1" in local
        host, port = cluster.server.removeprefix("https://").split(":")
        files = pki.Pki(cluster.layout.pki_dir)
        context = ssl.create_default_context(cafile=str(files.ca_cert))
        context.load_cert_chain(files.client_cert(pki.ADMIN), files.client_key(pki.ADMIN))
        raw = socket.create_connection((host, int(port)), timeout=5)
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            reply = tls.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 200"), reply
    holder_listeners = _listening_addresses(Path(f"/proc/{network.holder_pid}/net/tcp"))
    assert ipaddress.IPv4Address(host) in holder_listeners  # the forwarder, inside


def test_every_dial_of_a_pod_address_outside_the_namespace_is_refused(cluster: Cluster) -> None:
    network = cluster.pod_network
    try:
        guard_dial("10.244.1.10", network)
    except PodNetworkError:
        pass
    else:
        raise AssertionError("guard_dial let the host dial a pod address")
    with network.enter():
        guard_dial("10.244.1.10", network)  # inside: allowed (nothing is dialled here)
