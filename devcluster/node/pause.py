"""A pod's "pause" process: `python pause.py <hostname>` moves itself into a new network namespace and a new
UTS namespace (hostname = the pod's name), prints `ready` and sleeps until it is signalled. The pod's
containers join both namespaces; killing this process frees them once the containers are gone.

Run by its file path (standard library only), so it starts without importing the devcluster package.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import sys

CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000


def main(argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET | CLONE_NEWUTS) != 0:
        errno = ctypes.get_errno()
        print(f"unshare: errno {errno}", file=sys.stderr)
        return 1
    socket.sethostname(argv[1])
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print("ready", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
