"""`python -m devcluster.node --kubeconfig K --node-name canaria-node-0 --state-dir D --pod-cidr 10.244.1.0/24`

Runs until SIGTERM or SIGINT, then stops every pod it runs and exits. Refuses to start outside a network
namespace of its own (it creates interfaces and routes)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from . import NODE_NAME, POD_CIDR
from .agent import Agent, NodeConfig, machine_facts, parse_taints
from .kube import Kube, load_kubeconfig
from .network import CLUSTER_ADDRESS, HostNamespaceError, require_cluster_namespace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.node", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node-name", default=NODE_NAME)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--pod-cidr", default=POD_CIDR)
    parser.add_argument("--node-ip", default=CLUSTER_ADDRESS, help="the node's address (default: %(default)s)")
    parser.add_argument("--register-with-taints", type=parse_taints, default=(), help="key=value:Effect,...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        require_cluster_namespace()
    except HostNamespaceError as err:
        print(f"canaria-node: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stop.set())
    state_dir = args.state_dir.resolve()
    config = NodeConfig(
        name=args.node_name,
        pod_cidr=args.pod_cidr,
        state_dir=state_dir,
        host_ip=args.node_ip,
        taints=args.register_with_taints,
    )
    kube = Kube(load_kubeconfig(args.kubeconfig, state_dir / "pki"))
    Agent(kube, config, machine_facts()).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
