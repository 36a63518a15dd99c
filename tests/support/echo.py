"""A tiny HTTP backend for traffic tests, run as real pods: each answers `<track> <its own address>`, so a test
sees which pod answered, and turns unready on request, so a test can watch an endpoint leave its Service.

GET /ready   -> 200 until POST /unready, then 503 (the readiness probe)
GET /<any>   -> 200 "<TRACK> <the address the request arrived at>"
"""

from __future__ import annotations

from typing import Any

import yaml

PORT = 8080
SERVICE_PORT = 80
READY_TIMEOUT_S = 120  # scheduling, the node agent's start and the first passing probe, on a loaded machine

SERVER = f"""
import http.server, os
TRACK = os.environ.get("TRACK", "")
ready = [True]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # headers and body leave in one segment (two small ones meet Nagle and delayed ACK: +40 ms)

    def answer(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/ready":
            self.answer(200 if ready[0] else 503, "ready" if ready[0] else "unready")
        else:
            self.answer(200, TRACK + " " + self.connection.getsockname()[0])

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/unready":
            ready[0] = False
        self.answer(200, TRACK + " " + self.connection.getsockname()[0])

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("", {PORT}), Handler).serve_forever()
"""


def deployment(name: str, replicas: int, track: str = "") -> dict[str, Any]:
    """Pods that really run (the node agent's node): python3 with SERVER, ready while /ready says so."""
    labels = {"app": name}
    container = {
        "name": "echo",
        "image": "python:3.11",
        "command": ["python3", "-c", SERVER],
        "env": [{"name": "TRACK", "value": track}],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": PORT},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 2},
            },
        },
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http"}],
        },
    }


def manifests(name: str, replicas: int, track: str = "") -> str:
    """The Deployment and its Service, as YAML for `kubectl apply -f -`."""
    return yaml.safe_dump_all([deployment(name, replicas, track), service(name)])


def answered_by(body: bytes) -> tuple[str, str]:
    """(track, address) from an answer of SERVER."""
    track, _, address = body.decode().partition(" ")
    return track, address
