"""The node agent's API client: plain HTTPS with the kubeconfig's client certificate (or token), JSON in and
out, and a watch that yields events. Standard library only; a new connection per request keeps it safe to
share between threads."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REQUEST_TIMEOUT_S = 10.0
WATCH_TIMEOUT_S = 60  # the server ends each watch after this; the agent watches again from where it was

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        self.status = status
        message = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: {status} {message}")


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None


def load_kubeconfig(kubeconfig: Path, private_dir: Path) -> Credentials:
    """The current context's server and identity. Inline certificates are written to private_dir (0600), since
    Python's ssl module loads a client key only from a file."""
    config = yaml.safe_load(kubeconfig.read_text())
    context_name = config.get("current-context") or config["contexts"][0]["name"]
    context = next(item["context"] for item in config["contexts"] if item["name"] == context_name)
    cluster = next(item["cluster"] for item in config["clusters"] if item["name"] == context["cluster"])
    user = next(item["user"] for item in config["users"] if item["name"] == context["user"])
    private_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def materialize(entry: Mapping[str, Any], key: str, file_name: str) -> Path | None:
        if f"{key}-data" in entry:
            path = private_dir / file_name
            path.touch(mode=0o600)
            path.write_bytes(base64.b64decode(entry[f"{key}-data"]))
            return path
        return Path(entry[key]) if key in entry else None

    ca_file = materialize(cluster, "certificate-authority", "ca.crt")
    if ca_file is None:
        raise ValueError(f"{kubeconfig}: the cluster has no certificate-authority")
    return Credentials(
        server=cluster["server"],
        ca_file=ca_file,
        cert_file=materialize(user, "client-certificate", "client.crt"),
        key_file=materialize(user, "client-key", "client.key"),
        token=user.get("token"),
    )


class Kube:
    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        url = urllib.parse.urlsplit(credentials.server)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 443
        self.context = ssl.create_default_context(cafile=str(credentials.ca_file))
        if credentials.cert_file and credentials.key_file:
            self.context.load_cert_chain(str(credentials.cert_file), str(credentials.key_file))

    def _connection(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "canaria-node"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.credentials.token:
            headers["Authorization"] = f"Bearer {self.credentials.token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        ok_missing: bool = False,
    ) -> Any:
        """The decoded reply; raises ApiError on an error status (None for 404 when ok_missing)."""
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        connection = self._connection(REQUEST_TIMEOUT_S)
        try:
            connection.request(method, url, body=data, headers=self._headers(content_type if data else None))
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        reply = _decode(raw)
        if response.status == 404 and ok_missing:
            return None
        if response.status >= 400:
            raise ApiError(response.status, method, path, reply)
        return reply

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """The object, or None when it does not exist."""
        return self.request("GET", path, params=params, ok_missing=True)

    def watch(self, path: str, params: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """Events of one watch request, until the server ends it. Raises Gone when the version is too old."""
        query = {**params, "watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_TIMEOUT_S)}
        connection = self._connection(WATCH_TIMEOUT_S + REQUEST_TIMEOUT_S)
        try:
            connection.request("GET", f"{path}?{urllib.parse.urlencode(query)}", headers=self._headers(None))
            response = connection.getresponse()
            if response.status == 410:
                raise Gone()
            if response.status >= 400:
                raise ApiError(response.status, "WATCH", path, _decode(response.read()))
            for line in iter(response.readline, b""):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    if status.get("code") == 410:
                        raise Gone()
                    raise ApiError(int(status.get("code") or 500), "WATCH", path, status)
                yield event
        finally:
            connection.close()


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
