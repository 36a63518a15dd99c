"""Leader election: of the operator's replicas, only the holder of a coordination.k8s.io/v1 Lease runs Kopf.

The rules are client-go's (controller-runtime's defaults). A standby reads the Lease every RETRY_PERIOD and
takes it over once it has seen the same record, unrenewed, for the record's leaseDurationSeconds: time is
measured on the standby's own clock from when *it* first saw that record, never by comparing the record's
renewTime with a wall clock, so clock skew between nodes cannot shorten the lease. Every write is an update with
the resourceVersion that was read, so of two standbys that both see a lease expire only one wins.

The leader renews in a background thread. A leader that has not renewed for RENEW_DEADLINE exits at once
(its pod restarts it as a standby): since RENEW_DEADLINE < LEASE_DURATION, it is gone before any standby may
take over, so two replicas are never active together. A leader does not release the Lease when it stops: the
next one waits out the lease (as controller-runtime does by default), because reconcile passes started by
timers may still be writing until the process is gone.

Why not Kopf's peering: operators of equal priority all freeze (the cluster goes unserved) until one of them is
given a higher priority, so replicas of one Deployment cannot use it as an election, and it needs peering CRDs.

Decisions are pure functions of (lease, identity, clock readings); the classes at the end are the thin layer
that reads and writes the Lease and runs the loops.
"""

from __future__ import annotations

import datetime
import enum
import http.server
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from canaria.kube import USER_AGENT, new_api_client
from canaria.spec import Object

LEASE_DURATION = 15.0  # seconds a standby waits, after it last saw the leader renew, before it takes over
RENEW_DEADLINE = 10.0  # seconds after its last renewal at which a leader gives up and exits (< LEASE_DURATION)
RETRY_PERIOD = 2.0  # seconds between a leader's renewals, and between a standby's reads
LOST_LEASE_EXIT_CODE = 3  # the process's exit status when it stops leading (its container restarts)
STANDBY_STALE_SECONDS = 30.0  # the standby's liveness fails when its loop has not come round for this long
LEASE_API = "coordination.k8s.io/v1"

log = logging.getLogger(__name__)


# -- settings -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElectionSettings:
    """From the environment the Helm chart sets; off unless CANARIA_LEADER_ELECTION=true (a laptop run)."""

    enabled: bool = False
    identity: str = ""  # the pod's name (POD_NAME, from the downward API)
    lease_name: str = "canaria"
    lease_namespace: str = ""  # the release namespace (CANARIA_LEASE_NAMESPACE, from the downward API)


def parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"{name} must be true or false, not {value!r}")
    return lowered == "true"


def settings_from(environ: Mapping[str, str]) -> ElectionSettings:
    enabled = parse_bool("CANARIA_LEADER_ELECTION", environ.get("CANARIA_LEADER_ELECTION", "false"))
    namespace = environ.get("CANARIA_LEASE_NAMESPACE", "")
    if enabled and not namespace:
        raise ValueError("CANARIA_LEADER_ELECTION=true needs CANARIA_LEASE_NAMESPACE (the namespace of the Lease)")
    # Without a pod name, a name no other process has (client-go's choice); a pod keeps its name across container
    # restarts, so a restarted leader finds its own lease and takes it back at once.
    identity = environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4()}"
    return ElectionSettings(
        enabled=enabled,
        identity=identity,
        lease_name=environ.get("CANARIA_LEASE_NAME", ElectionSettings.lease_name),
        lease_namespace=namespace,
    )


# -- decisions (pure) ---------------------------------------------------------------------------------------------


class Action(enum.Enum):
    CREATE = "create"  # there is no Lease: create it, naming us
    ACQUIRE = "acquire"  # free (no holder) or expired: take it over
    RENEW = "renew"  # ours (also when a restarted process finds its own name): renew it
    WAIT = "wait"  # another holder's, and it may still be renewing


@dataclass(frozen=True)
class Sighting:
    """A Lease's spec as this process last read it, and when (monotonic) it first read it in that form."""

    spec: Object | None
    since: float


def holder_of(lease: Object | None) -> str:
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def sighted(previous: Sighting | None, lease: Object | None, now: float) -> Sighting:
    """The clock of a lease restarts whenever its record changes (a renewal changes renewTime)."""
    spec = (lease or {}).get("spec") if lease is not None else None
    if previous is not None and previous.spec == spec:
        return previous
    return Sighting(spec, now)


def lease_duration(lease: Object) -> float:
    declared = (lease.get("spec") or {}).get("leaseDurationSeconds")
    return float(declared) if isinstance(declared, int) and declared > 0 else LEASE_DURATION


def decide(lease: Object | None, identity: str, now: float, seen_since: float) -> Action:
    """What to do with the Lease as read at `now`, unchanged since `seen_since` (both on this process's monotonic
    clock). Expired means: not renewed for a whole lease duration, counted from our own first sighting."""
    if lease is None:
        return Action.CREATE
    holder = holder_of(lease)
    if holder == identity:
        return Action.RENEW
    if not holder or now - seen_since >= lease_duration(lease):
        return Action.ACQUIRE
    return Action.WAIT


def wait_left(lease: Object, now: float, seen_since: float) -> float:
    """Seconds until a lease another process holds expires for us, if it is not renewed meanwhile."""
    return max(0.0, seen_since + lease_duration(lease) - now)


def micro_time(at: datetime.datetime) -> str:
    """A Kubernetes MicroTime."""
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claimed(lease: Object | None, settings: ElectionSettings, action: Action, at: datetime.datetime) -> Object:
    """The Lease that names us holder, as `action` writes it: a new holder gets a new acquireTime and counts a
    transition; a renewal (ours, also after a restart) keeps both. Metadata (resourceVersion) is kept, so the
    update fails if anyone wrote the Lease since we read it."""
    stamp = micro_time(at)
    if lease is None:
        metadata: Object = {"name": settings.lease_name, "namespace": settings.lease_namespace}
        spec: Object = {"leaseTransitions": 0}
    else:
        metadata, spec = dict(lease["metadata"]), dict(lease.get("spec") or {})
    if action is not Action.RENEW or not spec.get("acquireTime"):
        spec["acquireTime"] = stamp
    if action is Action.ACQUIRE:
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
    spec.update(holderIdentity=settings.identity, leaseDurationSeconds=int(LEASE_DURATION), renewTime=stamp)
    return {"apiVersion": LEASE_API, "kind": "Lease", "metadata": metadata, "spec": spec}


def must_step_down(last_renewed: float, now: float) -> bool:
    """A leader whose last successful renewal (the time its request was sent) is RENEW_DEADLINE old stops
    leading: standbys may take over LEASE_DURATION after they saw that renewal, which is later."""
    return now - last_renewed >= RENEW_DEADLINE


def request_timeout(last_renewed: float, now: float) -> float:
    """A renewal request may not outlast the renew deadline."""
    return max(0.1, min(RETRY_PERIOD * 2, last_renewed + RENEW_DEADLINE - now))


# -- the API ------------------------------------------------------------------------------------------------------


class LeaseUnavailable(Exception):
    """The API server did not answer, or refused in a way a later try may not see (timeout, 5xx, 429, 403)."""


class LeaseApi:
    """Reads and writes one Lease: get, create, update (the chart's Role grants exactly these)."""

    def __init__(self, settings: ElectionSettings, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or new_api_client()
        self.api.user_agent = USER_AGENT
        self.collection = f"/apis/{LEASE_API}/namespaces/{settings.lease_namespace}/leases"
        self.path = f"{self.collection}/{settings.lease_name}"

    def _call(self, method: str, path: str, body: Object | None, timeout: float) -> tuple[int, Any]:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        method, url, headers, _, _ = self.api.param_serialize(
            method, path, header_params=headers, auth_settings=["BearerToken"]
        )
        try:
            response = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=timeout)
            data = response.read()
        except (ApiException, urllib3.exceptions.HTTPError) as error:
            raise LeaseUnavailable(f"{method} {path}: {error}") from error
        return response.status, json.loads(data) if data else None

    def _written(self, method: str, path: str, body: Object, timeout: float) -> bool:
        """True if written; False if someone else wrote first (409: created it, or changed it since we read)."""
        status, data = self._call(method, path, body, timeout)
        if status == 409:
            return False
        if not 200 <= status < 300:
            raise LeaseUnavailable(f"{method} {path}: {status} {(data or {}).get('message', '')}")
        return True

    def read(self, timeout: float) -> Object | None:
        status, data = self._call("GET", self.path, None, timeout)
        if status == 404:
            return None
        if status != 200:
            raise LeaseUnavailable(f"GET {self.path}: {status} {(data or {}).get('message', '')}")
        result: Object = data
        return result

    def create(self, lease: Object, timeout: float) -> bool:
        return self._written("POST", self.collection, lease, timeout)

    def update(self, lease: Object, timeout: float) -> bool:
        return self._written("PUT", self.path, lease, timeout)


# -- the loops ----------------------------------------------------------------------------------------------------


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def exit_process(reason: str) -> None:
    """Stop leading the only safe way: the whole process, at once (Kopf, its handlers, every timer thread)."""
    log.error("leader election: %s; exiting so that this replica restarts as a standby", reason)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(LOST_LEASE_EXIT_CODE)


class Renewer:
    """The leader's background renewals, and a watchdog that exits the process once RENEW_DEADLINE has passed
    without one (a hung request included)."""

    def __init__(
        self,
        api: LeaseApi,
        settings: ElectionSettings,
        acquired_at: float,
        clock: Callable[[], float] = time.monotonic,
        step_down: Callable[[str], None] = exit_process,
    ) -> None:
        self.api, self.settings, self.clock, self.step_down = api, settings, clock, step_down
        self.last_renewed = acquired_at
        self.stopped = threading.Event()

    def start(self) -> None:
        for target, name in ((self._renew_loop, "lease-renewer"), (self._watchdog, "lease-watchdog")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()

    def renew_once(self) -> None:
        sent = self.clock()
        timeout = request_timeout(self.last_renewed, sent)
        lease = self.api.read(timeout)
        holder = holder_of(lease)
        if holder != self.settings.identity:
            self.step_down(f"the Lease is now held by {holder or 'nobody'}")
            return
        if self.api.update(claimed(lease, self.settings, Action.RENEW, utc_now()), timeout):
            self.last_renewed = sent  # when sent, not when answered: the server may have stamped it any time since

    def _renew_loop(self) -> None:
        while not self.stopped.wait(RETRY_PERIOD):
            try:
                self.renew_once()
            except LeaseUnavailable as error:
                log.warning("leader election: renewal failed (%s); %.1fs left", error, self._left())

    def _left(self) -> float:
        return self.last_renewed + RENEW_DEADLINE - self.clock()

    def _watchdog(self) -> None:
        while not self.stopped.wait(min(0.5, RETRY_PERIOD)):
            if must_step_down(self.last_renewed, self.clock()):
                self.step_down(f"no renewal of the Lease for {RENEW_DEADLINE:g}s")
                return


class StandbyHealth:
    """The liveness endpoint while this replica waits (Kopf serves it once we lead): 200 while the election loop
    comes round, so a healthy standby is not restarted."""

    def __init__(self, endpoint: str, clock: Callable[[], float] = time.monotonic) -> None:
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme != "http":
            raise ValueError(f"unsupported liveness endpoint {endpoint!r}: only http")
        self.clock = clock
        self.beat = clock()
        self.holder = ""
        path = parts.path or "/"
        health = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != path:
                    code = 404
                else:
                    code = 200 if health.clock() - health.beat < STANDBY_STALE_SECONDS else 503
                body = json.dumps({"role": "standby", "leader": health.holder}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no access log
                pass

        self.server = http.server.ThreadingHTTPServer((parts.hostname or "localhost", parts.port or 80), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="standby-liveness", daemon=True).start()

    def heartbeat(self, holder: str) -> None:
        self.beat, self.holder = self.clock(), holder

    def close(self) -> None:
        """Free the port for Kopf's own liveness endpoint."""
        self.server.shutdown()
        self.server.server_close()


def acquire(api: LeaseApi, settings: ElectionSettings, health: StandbyHealth | None = None) -> float:
    """Block until this process holds the Lease; returns when (monotonic) the winning request was sent."""
    sighting: Sighting | None = None
    reported = None
    while True:
        sent = time.monotonic()
        try:
            lease = api.read(RETRY_PERIOD * 2)
            # The lease's clock starts when we saw it, after the read returned: the later, the safer.
            sighting = sighted(sighting, lease, time.monotonic())
            action = decide(lease, settings.identity, time.monotonic(), sighting.since)
            if action is Action.WAIT:
                holder = holder_of(lease)
                if holder != reported:
                    log.info("leader election: %s leads; this replica (%s) waits", holder, settings.identity)
                    reported = holder
            else:
                body = claimed(lease, settings, action, utc_now())
                won = api.create(body, RETRY_PERIOD * 2) if lease is None else api.update(body, RETRY_PERIOD * 2)
                if won:
                    log.info("leader election: %s leads now (%s)", settings.identity, action.value)
                    return sent
        except LeaseUnavailable as error:
            log.warning("leader election: %s", error)
        if health:
            health.heartbeat(reported or "")
        time.sleep(max(0.0, sent + RETRY_PERIOD - time.monotonic()))


def lead(settings: ElectionSettings, liveness: str | None) -> Renewer:
    """Wait as a standby (answering liveness) until we hold the Lease, then keep renewing it in the background.
    Call before kopf.run: the process runs Kopf only as the leader."""
    api = LeaseApi(settings)
    health = StandbyHealth(liveness) if liveness else None
    where = f"{settings.lease_namespace}/{settings.lease_name}"
    log.info("leader election: this replica is %s; Lease %s", settings.identity, where)
    try:
        acquired_at = acquire(api, settings, health)
    finally:
        if health:
            health.close()
    renewer = Renewer(api, settings, acquired_at)
    renewer.start()
    return renewer
