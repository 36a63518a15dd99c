"""Service traffic without kube-proxy: the load generator of the tests, the demo and the benchmarks.

The devcluster has no kube-proxy, so a Service's ClusterIP leads nowhere. This client does kube-proxy's job
for its own requests: it watches the Service's EndpointSlices through the API server (from the host: the
API server is on loopback), keeps the ready addresses, and sends each request to one of them chosen
uniformly at random. The requests are sent by worker threads that each entered the pod network namespace
once, so every socket that reaches a pod address belongs to that namespace, and every dial is checked by
podnet.guard_dial first. It can also send to the Gateway (Traefik, devcluster/gateway.py) with a Host header.

    with ServiceEndpoints(api, "ns", "svc", "http") as endpoints:
        report = run(Load(count=1000, duration_s=30, path="/predictions/m"), endpoints, network)
    report.summary.by_endpoint, report.summary.p50_ms

Every run is bounded by a request count and a time limit (both required), optionally by a rate.

CLI: python -m devcluster.traffic --service ns/name --port http --path /x --count N --duration S
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import logging
import math
import random
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import pki
from .api import ApiClient
from .cluster import Cluster
from .gateway import GATEWAY_PORT
from .layout import Settings
from .podnet import GATEWAY_IP, PodNetwork, guard_dial

WATCH_TIMEOUT_S = 30  # the API server ends each watch after this; the watcher then resumes it
RETRY_PAUSE_S = 0.5
BODY_KEEP_BYTES = 64 * 1024  # of each response, enough for a prediction's answer
BODY_SHOWN_CHARS = 200
TOP_BODIES = 10

log = logging.getLogger("devcluster.traffic")


class TrafficError(Exception):
    """A run that cannot start (no such Service, no port of that name), told in one line."""


@dataclass(frozen=True, order=True)
class Endpoint:
    """One address to send to; pod names the Pod behind it when its EndpointSlice says so."""

    address: str
    port: int
    pod: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


# --- what kube-proxy decides (pure) ---


def service_port_name(service: Mapping[str, Any], port: str | int) -> str:
    """The name of the Service port given by name or number: EndpointSlices name their ports after it."""
    ports = service.get("spec", {}).get("ports", [])
    for candidate in ports:
        name = candidate.get("name", "")
        if port == name or (isinstance(port, int) and candidate.get("port") == port):
            return str(name)
    known = ", ".join(f"{p.get('name', '')}:{p.get('port')}" for p in ports) or "none"
    raise TrafficError(f"Service {service['metadata']['name']} has no port {port!r} (ports: {known})")


def ready_endpoints(slices: Iterable[Mapping[str, Any]], port_name: str) -> tuple[Endpoint, ...]:
    """The ready addresses of a Service's EndpointSlices for one of its ports, each once, sorted.

    As kube-proxy reads them: an endpoint whose `ready` condition is missing counts as ready (the API says
    consumers should read an unknown state so), one with ready=false is skipped."""
    found: dict[str, Endpoint] = {}
    for endpoint_slice in slices:
        port = next((p.get("port") for p in endpoint_slice.get("ports") or [] if p.get("name", "") == port_name), None)
        if port is None:
            continue
        for endpoint in endpoint_slice.get("endpoints") or []:
            if endpoint.get("conditions", {}).get("ready", True) is False:
                continue
            pod = endpoint.get("targetRef", {}).get("name", "")
            for address in endpoint.get("addresses", []):
                found.setdefault(address, Endpoint(address, int(port), pod))
    return tuple(sorted(found.values()))


def choose(endpoints: Sequence[Endpoint], rng: random.Random) -> Endpoint | None:
    """One endpoint, each equally likely (kube-proxy's random mode), or None when there is none."""
    return rng.choice(endpoints) if endpoints else None


def due_at(start: float, index: int, rate_per_s: float | None) -> float:
    """When request number index (from 0) may be sent: at once without a rate, else evenly spaced."""
    return start if rate_per_s is None else start + index / rate_per_s


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0 < q <= 100) by nearest rank: a value that was really measured."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Result:
    """One request: when it started (seconds into the run), where it went, what came back."""

    started_s: float
    endpoint: str  # address:port dialled
    pod: str  # the Pod behind that address, when known
    status: int | None  # None when no HTTP answer came back
    latency_s: float
    body: bytes = b""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Summary:
    sent: int
    ok: int
    errors: int  # no HTTP answer at all (refused, reset, timed out, no ready endpoint)
    by_status: dict[str, int]  # "200", "503", ... and "error"
    by_endpoint: dict[str, int]
    by_body: dict[str, int]  # the most common answers, cut to BODY_SHOWN_CHARS
    p50_ms: float | None
    p99_ms: float | None
    elapsed_s: float
    rate_per_s: float


def summarize(results: Sequence[Result], elapsed_s: float) -> Summary:
    """Counts and latency percentiles of answered requests (a refused connection has no latency worth
    ranking with the answered ones)."""
    latencies = sorted(r.latency_s * 1000 for r in results if r.status is not None)
    bodies = collections.Counter(r.body.decode(errors="replace")[:BODY_SHOWN_CHARS] for r in results if r.ok)
    return Summary(
        sent=len(results),
        ok=sum(r.ok for r in results),
        errors=sum(r.status is None for r in results),
        by_status=dict(collections.Counter("error" if r.status is None else str(r.status) for r in results)),
        by_endpoint=dict(collections.Counter(r.endpoint for r in results)),
        by_body=dict(bodies.most_common(TOP_BODIES)),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        elapsed_s=elapsed_s,
        rate_per_s=len(results) / elapsed_s if elapsed_s > 0 else 0.0,
    )


# --- targets: where each request goes ---


class Targets(Protocol):
    def pick(self, rng: random.Random) -> Endpoint | None:
        """The endpoint for the next request, or None when there is none to send to."""
        ...


@dataclass(frozen=True)
class Fixed:
    """Always the same address: the Gateway, or one pod."""

    endpoint: Endpoint

    def pick(self, rng: random.Random) -> Endpoint | None:
        return self.endpoint


GATEWAY = Fixed(Endpoint(GATEWAY_IP, GATEWAY_PORT, "gateway"))


class ServiceEndpoints:
    """A Service's ready endpoints, kept current by a watch on its EndpointSlices (list, then watch from the
    list's resourceVersion; relist when the watch ends in an error). A context manager: the watch thread
    stops on exit."""

    def __init__(self, api: ApiClient, namespace: str, service: str, port: str | int) -> None:
        self.namespace, self.service = namespace, service
        self._api = api
        code, body = api.get(f"/api/v1/namespaces/{namespace}/services/{service}")
        if code != 200:
            raise TrafficError(f"Service {namespace}/{service}: the API answered {code}")
        self.port_name = service_port_name(body, port)
        self._slices: dict[str, Mapping[str, Any]] = {}
        self._endpoints: tuple[Endpoint, ...] = ()
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._stream: http.client.HTTPSConnection | None = None
        self._listed = threading.Event()
        self._thread = threading.Thread(target=self._keep_current, name=f"endpoints {namespace}/{service}", daemon=True)
        self._thread.start()
        if not self._listed.wait(timeout=10):
            self.close()
            raise TrafficError(f"could not list the EndpointSlices of {namespace}/{service} within 10s")

    def __enter__(self) -> ServiceEndpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def current(self) -> tuple[Endpoint, ...]:
        with self._changed:
            return self._endpoints

    def pick(self, rng: random.Random) -> Endpoint | None:
        return choose(self.current(), rng)

    def wait_for(self, condition: Callable[[tuple[Endpoint, ...]], bool], timeout_s: float) -> tuple[Endpoint, ...]:
        """The endpoints once condition holds for them; TrafficError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not condition(self._endpoints):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TrafficError(
                        f"{self.namespace}/{self.service}: endpoints still {[str(e) for e in self._endpoints]} "
                        f"after {timeout_s:.0f}s"
                    )
                self._changed.wait(remaining)
            return self._endpoints

    def close(self) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None and stream.sock is not None:  # unblocks the watch's read
            with contextlib.suppress(OSError):
                stream.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    @property
    def _collection(self) -> str:
        selector = urllib.parse.quote(f"kubernetes.io/service-name={self.service}")
        return f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices?labelSelector={selector}"

    def _publish(self) -> None:
        endpoints = ready_endpoints(self._slices.values(), self.port_name)
        with self._changed:
            if endpoints != self._endpoints:
                log.info("%s/%s endpoints: %s", self.namespace, self.service, ", ".join(map(str, endpoints)))
            self._endpoints = endpoints
            self._changed.notify_all()

    def _keep_current(self) -> None:
        while not self._stopping.is_set():
            try:
                self._watch(self._list())
            except (OSError, http.client.HTTPException, ValueError, TrafficError) as err:
                if not self._stopping.is_set():
                    log.warning("watching %s/%s: %s; listing again", self.namespace, self.service, err)
                    self._stopping.wait(RETRY_PAUSE_S)

    def _list(self) -> str:
        code, body = self._api.get(self._collection)
        if code != 200:
            raise TrafficError(f"listing EndpointSlices answered {code}")
        self._slices = {item["metadata"]["name"]: item for item in body.get("items", [])}
        self._publish()
        self._listed.set()
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, resource_version: str) -> None:
        server = urllib.parse.urlsplit(self._api.server)
        host, port = server.hostname or "", server.port or 443
        guard_dial(host, None)  # the API server is on loopback: dialled from the host
        self._stream = http.client.HTTPSConnection(host, port, context=_tls(self._api), timeout=WATCH_TIMEOUT_S + 10)
        try:
            query = f"&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_S}"
            self._stream.request("GET", f"{self._collection}&resourceVersion={resource_version}{query}")
            response = self._stream.getresponse()
            if self._stopping.is_set():  # close() came before the stream existed
                return
            if response.status != 200:
                raise TrafficError(f"watching EndpointSlices answered {response.status}")
            while line := response.readline():
                event = json.loads(line)
                kind, item = event["type"], event["object"]
                if kind == "ERROR":  # e.g. 410 Gone: the resourceVersion is too old; list again
                    raise TrafficError(f"watch ended: {item.get('message', item)}")
                if kind == "BOOKMARK":
                    continue
                name = item["metadata"]["name"]
                if kind == "DELETED":
                    self._slices.pop(name, None)
                else:
                    self._slices[name] = item
                self._publish()
        finally:
            self._stream.close()
            self._stream = None


def _tls(api: ApiClient) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(api.ca_file))
    context.load_cert_chain(str(api.cert_file), str(api.key_file))
    return context


# --- sending ---


@dataclass(frozen=True)
class Load:
    """What to send, and the bounds: at most count requests, none started after duration_s."""

    count: int
    duration_s: float
    path: str = "/"
    method: str = "GET"
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. {"Host": "model.example"}
    concurrency: int = 4
    rate_per_s: float | None = None  # None: as fast as the workers go
    timeout_s: float = 10.0  # per request

    def __post_init__(self) -> None:
        if self.count <= 0 or self.duration_s <= 0 or self.concurrency <= 0:
            raise ValueError("count, duration_s and concurrency must be positive")
        if self.rate_per_s is not None and self.rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive (or None)")


@dataclass(frozen=True)
class Report:
    results: list[Result]
    summary: Summary


class _PodConnection(http.client.HTTPConnection):
    """An HTTP connection whose every dial is checked first: a pod address only from inside the namespace."""

    def __init__(self, endpoint: Endpoint, network: PodNetwork, timeout: float) -> None:
        super().__init__(endpoint.address, endpoint.port, timeout=timeout)
        self._network = network

    def connect(self) -> None:
        guard_dial(self.host, self._network)
        super().connect()
        assert self.sock is not None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Go's clients, Traefik's included


class _Tickets:
    """Hands out request numbers until the count is reached or the time is up."""

    def __init__(self, load: Load, start: float) -> None:
        self._load, self._start = load, start
        self._deadline = start + load.duration_s
        self._issued = 0
        self._lock = threading.Lock()

    def next_due(self) -> float | None:
        with self._lock:
            if self._issued >= self._load.count:
                return None
            due = due_at(self._start, self._issued, self._load.rate_per_s)
            if max(due, time.monotonic()) >= self._deadline:
                return None
            self._issued += 1
            return due


def run(load: Load, targets: Targets, network: PodNetwork, seed: int | None = None) -> Report:
    """Sends load to targets from load.concurrency threads inside the pod network; returns every result and
    their summary. seed makes the endpoint choices repeatable."""
    start = time.monotonic()
    tickets = _Tickets(load, start)
    results: list[Result] = []
    lock = threading.Lock()
    seeds = random.Random(seed)

    failures: list[BaseException] = []

    def worker(rng: random.Random) -> None:
        connections: dict[Endpoint, _PodConnection] = {}
        try:
            with network.enter():
                while (due := tickets.next_due()) is not None:
                    time.sleep(max(0.0, due - time.monotonic()))
                    result = _send(load, targets.pick(rng), connections, network, start)
                    with lock:
                        results.append(result)
        except BaseException as err:  # e.g. cannot enter the namespace: the caller must hear of it
            failures.append(err)
        finally:
            for connection in connections.values():
                connection.close()

    threads = [
        threading.Thread(target=worker, args=(random.Random(seeds.random()),), name=f"traffic-{i}", daemon=True)
        for i in range(load.concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    elapsed = time.monotonic() - start
    ordered = sorted(results, key=lambda r: r.started_s)
    return Report(ordered, summarize(ordered, elapsed))


def _send(
    load: Load,
    endpoint: Endpoint | None,
    connections: dict[Endpoint, _PodConnection],
    network: PodNetwork,
    start: float,
) -> Result:
    began = time.monotonic()
    if endpoint is None:  # kube-proxy rejects such a connection at once
        return Result(began - start, "", "", None, 0.0, error="no ready endpoint")
    connection = connections.get(endpoint)
    reused = connection is not None and connection.sock is not None
    if connection is None:
        connection = connections[endpoint] = _PodConnection(endpoint, network, load.timeout_s)
    try:
        try:
            status, body = _exchange(connection, load)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The server closed an idle keep-alive connection before reading this request: send it again.
            connection.close()
            status, body = _exchange(connection, load)
    except (OSError, http.client.HTTPException) as err:
        connection.close()
        return Result(began - start, str(endpoint), endpoint.pod, None, time.monotonic() - began, error=_describe(err))
    return Result(began - start, str(endpoint), endpoint.pod, status, time.monotonic() - began, body)


def _exchange(connection: _PodConnection, load: Load) -> tuple[int, bytes]:
    connection.request(load.method, load.path, body=load.body, headers=dict(load.headers))
    response = connection.getresponse()
    body = response.read()
    return response.status, body[:BODY_KEEP_BYTES]


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


# --- CLI ---


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"header {text!r}: write it as 'Name: value'")
    return name.strip(), value.strip()


def _port(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devcluster.traffic",
        description="Send HTTP requests to a Service's ready endpoints (or the Gateway) from inside the pod "
        "network, bounded by a count and a time limit; prints a JSON summary.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--service", help="namespace/name of the Service")
    target.add_argument("--gateway-host", help="send to the Gateway with this Host header instead")
    parser.add_argument("--port", type=_port, default="http", help="the Service port, by name or number")
    parser.add_argument("--path", default="/")
    parser.add_argument("--method", help="default: POST with a body, else GET")
    parser.add_argument("--body-file", type=Path)
    parser.add_argument("--header", type=_header, action="append", default=[], help="'Name: value'")
    parser.add_argument("--count", type=int, required=True, help="at most this many requests")
    parser.add_argument("--duration", type=float, required=True, help="start no request after this many seconds")
    parser.add_argument("--rate", type=float, help="requests per second (default: as fast as possible)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--results", type=Path, help="also write every request as a JSON line here")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (default: .)")
    parser.add_argument("--state-dir", type=Path, help="the devcluster's state dir (default: <root>/.devcluster)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[traffic] %(message)s")

    cluster = Cluster.attach(args.root, Settings(state_dir=args.state_dir))
    if cluster is None:
        print("no running devcluster here: start it with `make cluster`", file=sys.stderr)
        return 1
    body = args.body_file.read_bytes() if args.body_file else None
    headers = dict(args.header)
    if args.gateway_host:
        headers["Host"] = args.gateway_host
    load = Load(
        count=args.count,
        duration_s=args.duration,
        path=args.path,
        method=args.method or ("POST" if body is not None else "GET"),
        body=body,
        headers=headers,
        concurrency=args.concurrency,
        rate_per_s=args.rate,
    )
    try:
        if args.gateway_host:
            report = run(load, GATEWAY, cluster.pod_network)
        else:
            namespace, _, name = args.service.rpartition("/")
            with ServiceEndpoints(admin_api(cluster), namespace or "default", name, args.port) as endpoints:
                report = run(load, endpoints, cluster.pod_network)
    except TrafficError as err:
        print(f"traffic: {err}", file=sys.stderr)
        return 1
    if args.results:
        with open(args.results, "w") as out:
            for result in report.results:
                out.write(json.dumps({**asdict(result), "body": result.body.decode(errors="replace")}) + "\n")
    print(json.dumps(asdict(report.summary), indent=2))
    return 0 if report.summary.ok == report.summary.sent else 2


def admin_api(cluster: Cluster) -> ApiClient:
    """The cluster's API as its admin (the identity of the admin kubeconfig)."""
    files = pki.Pki(cluster.layout.pki_dir)
    return ApiClient(
        server=cluster.server,
        ca_file=files.ca_cert,
        cert_file=files.client_cert(pki.ADMIN),
        key_file=files.client_key(pki.ADMIN),
    )


if __name__ == "__main__":
    sys.exit(main())
