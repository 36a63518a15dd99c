"""A real HTTP server that serves a directory, for http(s) sources: on loopback, or inside the devcluster's pod
network (at its gateway address, which every pod reaches) for pods that really run."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from devcluster.podnet import GATEWAY_IP, PodNetwork


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving_directory(directory: Path, network: PodNetwork | None = None) -> Iterator[str]:
    """Serve `directory` over HTTP on a free port, of loopback or (given the pod network) of the pod network's
    gateway address; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    if network is None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    else:
        with network.enter():  # the listening socket belongs to the namespace; so do the connections it accepts
            server = ThreadingHTTPServer((GATEWAY_IP, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{server.server_address[0]}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
