"""A node whose pods really run: test tooling standing in for a kubelet (none can run on these machines), no
part of the operator. `python -m devcluster.node` registers the node, runs the pods bound to it as local
processes (each pod in its own network namespace on its own IP from the node's podCIDR, each container in its
own mount namespace) and reports their status as a kubelet does. It must run inside the devcluster's cluster
network namespace. See README.md beside this file.

For devcluster's `up`: `argv(layout)` is the agent's command line (run it with the repository root as the
working directory, inside the cluster namespace), `healthy(state_dir(layout))` says whether it keeps its
node's Lease renewed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..layout import Layout

NODE_NAME = "canaria-node-0"
POD_CIDR = "10.244.1.0/24"
HEALTHZ_FILE = "healthz"
HEALTHZ_MAX_AGE_S = 30.0  # three Lease renewals


def state_dir(layout: Layout) -> Path:
    return layout.node_dir


def argv(
    layout: Layout,
    kubeconfig: Path | None = None,
    node_name: str = NODE_NAME,
    pod_cidr: str = POD_CIDR,
    node_state_dir: Path | None = None,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "devcluster.node",
        f"--kubeconfig={kubeconfig or layout.kubeconfig}",
        f"--node-name={node_name}",
        f"--state-dir={node_state_dir or state_dir(layout)}",
        f"--pod-cidr={pod_cidr}",
    ]


def healthy(node_state_dir: Path) -> bool:
    """True while the agent has renewed its node's Lease recently (it touches a file after each renewal)."""
    try:
        age = time.time() - (node_state_dir / HEALTHZ_FILE).stat().st_mtime
    except OSError:
        return False
    return age < HEALTHZ_MAX_AGE_S
