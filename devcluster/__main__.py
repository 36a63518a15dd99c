"""`python -m devcluster up|down|status|env|restart <part>`, run from the repository root."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from .cluster import RESTARTABLE, Cluster, DevclusterError, restart, status, stop
from .layout import Layout, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env", "restart"])
    parser.add_argument("part", nargs="?", choices=RESTARTABLE, help="restart: the part to stop and start again")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (default: .)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[devcluster] %(message)s")
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so a half-started cluster is stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    layout = Layout.resolve(args.root, Settings())
    if (args.command == "restart") != (args.part is not None):
        parser.error("restart needs a part (and only restart takes one)")
    try:
        if args.command == "restart":
            started = time.monotonic()
            restart(layout, args.part)
            print(f"{args.part} restarted in {time.monotonic() - started:.1f}s")
            return 0
        return COMMANDS[args.command](args.root, layout)
    except DevclusterError as err:
        print(f"devcluster {args.command} failed: {err}", file=sys.stderr)
        return 1


def _up(root: Path, layout: Layout) -> int:
    started = time.monotonic()
    cluster = Cluster.up(root)
    if cluster.started_here:
        print(f"devcluster up in {time.monotonic() - started:.1f}s: {cluster.server}")
    else:
        print(f"devcluster already up: {cluster.server}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _down(root: Path, layout: Layout) -> int:
    started = time.monotonic()
    stop(layout)
    print(f"devcluster down in {time.monotonic() - started:.1f}s")
    return 0


def _status(root: Path, layout: Layout) -> int:
    state = status(layout)
    for name, pid in state["pids"].items():
        print(f"{name:<24} {'running, pid ' + str(pid) if pid else 'stopped'}")
    print(f"{'api server':<24} {('ready at ' + state['server']) if state['ready'] else 'not ready'}")
    return 0 if state["ready"] else 3


def _env(root: Path, layout: Layout) -> int:
    print(f"export KUBECONFIG={layout.kubeconfig}")
    print(f'export PATH="{layout.bin_dir}:$PATH"')
    return 0


COMMANDS = {"up": _up, "down": _down, "status": _status, "env": _env}

if __name__ == "__main__":
    sys.exit(main())
