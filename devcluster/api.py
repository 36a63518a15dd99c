"""A few HTTP(S) calls against the control plane: health endpoints and the handful of API requests `up` makes.

Standard library only, so the devcluster needs no Kubernetes client library to start.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUEST_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.2


@dataclass(frozen=True)
class ApiClient:
    """Talks to the API server as the identity of a client certificate."""

    server: str
    ca_file: Path
    cert_file: Path
    key_file: Path

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """(status, decoded JSON or text); HTTP error statuses are returned, not raised."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S, context=self._context()) as resp:
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, _decode(err.read())

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def create(self, path: str, body: dict[str, Any]) -> None:
        """POSTs body; an object that already exists counts as created."""
        status, reply = self.request("POST", path, body)
        if status not in (200, 201, 202, 409):
            raise RuntimeError(f"POST {path} answered {status}: {reply}")


def probe(url: str, client: ApiClient | None = None) -> bool:
    """True if url answers 200 now. Without a client, TLS is not verified: the controller-manager and
    scheduler serve health checks on self-signed certificates of their own."""
    if client is not None:
        try:
            return client.get(url.removeprefix(client.server))[0] == 200
        except OSError:
            return False
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S, context=context) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def wait_until(condition: Callable[[], bool], timeout_s: float, still_running: Callable[[], bool]) -> bool:
    """Polls condition until true (True), the deadline passes or still_running() turns false (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if not still_running():
            return False
        time.sleep(POLL_INTERVAL_S)
    return condition()


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
