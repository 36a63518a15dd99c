"""One reconcile pass: observe (reads) -> decide (pure) -> apply (writes) -> one status write.

Every pass is idempotent and starts from what the API says now, so the operator may restart at any
point. A pass that finds everything as desired writes nothing.
"""

from __future__ import annotations

import datetime
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from canaria import render, schema, spec, status
from canaria.kube import Kube, NamespaceTerminating, Rejected, Unavailable
from canaria.render import STABLE, Settings
from canaria.spec import Object
from canaria.status import Facts, Problem

MD_API_VERSION = f"{schema.GROUP}/{schema.VERSION}"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1"
APPLIED_HASH_ANNOTATION = f"{schema.GROUP}/applied-hash"


@dataclass
class Observation:
    """The world as one pass read it."""

    children: dict[tuple[str, str], Object | None] = field(default_factory=dict)  # (kind, name) -> object
    service_monitor_api: bool = False
    unresolved: list[Problem] = field(default_factory=list)
    pods: list[Object] = field(default_factory=list)


# -- decide (pure) ----------------------------------------------------------------------------------------


def with_applied_hash(obj: Object) -> Object:
    """Stamp the object with a hash of itself: a changed desired state (a removed field included) shows
    as a changed hash, which a comparison with the live object alone would miss."""
    stamped = {**obj, "metadata": {**obj["metadata"]}}
    annotations = dict(stamped["metadata"].get("annotations") or {})
    annotations[APPLIED_HASH_ANNOTATION] = render.content_hash(obj)
    stamped["metadata"]["annotations"] = annotations
    return stamped


def is_subset(desired: Any, live: Any) -> bool:
    """Whether every field we set has the same value in the live object (server defaults may add more;
    the server drops empty lists and maps). Lists must have the same length: an element added by hand is
    drift too."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            is_subset(v, live[k]) if k in live else v in ([], {}) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, x) for d, x in zip(desired, live, strict=True))
        )
    return bool(desired == live)


def needs_apply(desired: Object, live: Object | None) -> bool:
    return live is None or not is_subset(desired, live)


def desired_children(md: Object, settings: Settings, service_monitor_api: bool) -> list[Object]:
    model = md["spec"]["model"]
    replicas = md["spec"]["serving"]["replicas"]
    children = [
        render.config_map(md, STABLE, model),
        render.deployment(md, STABLE, model, replicas, settings),
        render.service(md),
    ]
    if md["spec"]["monitoring"]["serviceMonitor"]["enabled"] and service_monitor_api:
        children.append(render.service_monitor(md))
    return [with_applied_hash(child) for child in children]


def unwanted_children(md: Object, observation: Observation) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of children that exist but should not (a ServiceMonitor switched off)."""
    name = render.service_name(md)
    switched_off = not md["spec"]["monitoring"]["serviceMonitor"]["enabled"]
    if switched_off and observation.children.get(("ServiceMonitor", name)):
        return [(SERVICE_MONITOR_API, "ServiceMonitor", name)]
    return []


def service_monitor_problem(md: Object, api_served: bool) -> Problem | None:
    if not md["spec"]["monitoring"]["serviceMonitor"]["enabled"]:
        return Problem("Disabled", "spec.monitoring.serviceMonitor.enabled is false")
    if not api_served:
        return Problem(
            "CRDNotInstalled",
            "the ServiceMonitor CRD (monitoring.coreos.com/v1) is not installed: "
            "install the Prometheus Operator's CRDs, or set spec.monitoring.serviceMonitor.enabled "
            "to false",
        )
    return None


def facts_of(
    md: Object, observation: Observation, applied: list[Object], rejected: list[Problem], settings: Settings
) -> Facts:
    wanted = md["spec"]["serving"]["replicas"]
    deployment = observation.children.get(("Deployment", render.deployment_name(md, STABLE)))
    complete, ready = status.deployment_complete(deployment, wanted)
    changed_deployment = any(obj["kind"] == "Deployment" for obj in applied)
    failures = [*rejected, *status.pod_failures(observation.pods)]
    if status.progress_deadline_exceeded(deployment) and not changed_deployment:
        failures.append(
            Problem(
                "ProgressDeadlineExceeded",
                "the new pods did not become ready within 10 "
                "minutes: see `kubectl describe pods -l "
                f"{render.OWNER_LABEL}={md['metadata']['name']}`",
            )
        )
    return Facts(
        generation=md["metadata"].get("generation", 0),
        version=md["spec"]["model"]["version"],
        wanted_replicas=wanted,
        ready_replicas=ready,
        rollout_complete=complete and not changed_deployment and not observation.unresolved,
        unresolved=observation.unresolved,
        failures=failures,
        waiting=status.pods_waiting(observation.pods),
        service_monitor=service_monitor_problem(md, observation.service_monitor_api),
        url=render.inference_url(md, settings),
        digests=status.ready_pod_digests(observation.pods, render.VERSION_LABEL),
    )


# -- observe (reads only) ---------------------------------------------------------------------------------


def unresolved_references(kube: Kube, md: Object) -> list[Problem]:
    namespace = md["metadata"]["namespace"]
    model = md["spec"]["model"]
    problems = []
    pvc = spec.pvc_source(model)
    if pvc and kube.get("v1", "PersistentVolumeClaim", namespace, pvc[0]) is None:
        problems.append(
            Problem(
                "PVCNotFound",
                f"spec.model.storageUri: PersistentVolumeClaim {pvc[0]!r} "
                f"does not exist in namespace {namespace}: create it or fix the URI",
            )
        )
    secret = (model.get("s3") or {}).get("credentialsSecret")
    if secret and kube.get("v1", "Secret", namespace, secret) is None:
        problems.append(
            Problem(
                "SecretNotFound",
                f"spec.model.s3.credentialsSecret: Secret {secret!r} does "
                f"not exist in namespace {namespace}: create it or fix the name",
            )
        )
    return problems


def observe(kube: Kube, md: Object) -> Observation:
    namespace = md["metadata"]["namespace"]
    observation = Observation(service_monitor_api=kube.serves(SERVICE_MONITOR_API, "ServiceMonitor"))
    kinds = [
        ("v1", "ConfigMap", render.config_map_name(md, STABLE)),
        ("apps/v1", "Deployment", render.deployment_name(md, STABLE)),
        ("v1", "Service", render.service_name(md)),
    ]
    if observation.service_monitor_api:
        kinds.append((SERVICE_MONITOR_API, "ServiceMonitor", render.service_name(md)))
    for api_version, kind, name in kinds:
        observation.children[(kind, name)] = kube.get(api_version, kind, namespace, name)
    observation.unresolved = unresolved_references(kube, md)
    observation.pods = kube.list("v1", "Pod", namespace, render.track_labels(md, STABLE))
    return observation


# -- one pass -----------------------------------------------------------------------------------------------

# Requests per object. An entry lives only while a pass runs or a retry waits, so the table holds the objects
# in flight, not every object ever seen.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


@dataclass
class Requests:
    running: bool = False  # a pass runs now
    pending: bool = False  # a request came in while it ran: run once more
    failures: int = 0  # passes in a row that failed temporarily
    retry: threading.Timer | None = None  # the next try after a temporary failure


_table_lock = threading.Lock()
_requests: dict[tuple[str, str], Requests] = {}
log = logging.getLogger(__name__)


def retry_delay(failures: int) -> float:
    """Back-off after `failures` temporary failures in a row: 1, 2, 4, ... seconds, at most a minute."""
    return float(min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** max(0, failures - 1)))


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(kube: Kube, namespace: str, name: str, settings: Settings) -> Object | None:
    """Bring one ModelDeployment's children and status in line with its spec. Returns the new status.

    Every caller (Kopf handler, child or PVC event, retry) comes through here. Requests for an object that is
    being reconciled coalesce: a burst of child events costs one more pass, not one pass each. A pass that
    fails temporarily (the API did not answer) is retried with back-off, and the retry stands for every
    request that came in meanwhile: Kopf never retries event handlers, so nothing else would."""
    key = (namespace, name)
    with _table_lock:
        entry = _requests.setdefault(key, Requests())
        if entry.running:
            entry.pending = True
            return None  # the pass in progress sees the pending mark and runs again
        entry.running = True
        if entry.retry:  # this request runs now: the scheduled retry is not needed unless it fails again
            entry.retry.cancel()
            entry.retry = None
    while True:
        try:
            result = _reconcile(kube, namespace, name, settings)
        except NamespaceTerminating:
            result = None  # the namespace controller is deleting the object and its children
        except Unavailable as error:
            _retry_later(key, entry, error, (kube, namespace, name, settings))
            return None
        except BaseException:
            with _table_lock:
                _settle(key, entry)
            raise
        with _table_lock:  # one critical section: a request cannot slip between the check and the settling
            entry.failures = 0
            if not entry.pending:
                _settle(key, entry)
                return result
            entry.pending = False


def _settle(key: tuple[str, str], entry: Requests) -> None:
    """The pass is over (called under the table lock): forget the object unless a retry waits."""
    entry.running = False
    entry.pending = False
    if entry.retry is None:
        _requests.pop(key, None)


def _retry_later(key: tuple[str, str], entry: Requests, error: Unavailable, args: tuple[Any, ...]) -> None:
    with _table_lock:
        entry.failures += 1
        entry.pending = False  # the retry covers the requests that came in meanwhile
        delay = retry_delay(entry.failures)
        entry.retry = threading.Timer(delay, reconcile, args=args)
        entry.retry.daemon = True
        entry.retry.start()
        _settle(key, entry)
    log.warning("%s/%s: %s; retrying in %gs", key[0], key[1], error, delay)


def apply_children(
    kube: Kube, md: Object, observation: Observation, settings: Settings
) -> tuple[list[Object], list[Problem]]:
    """Apply what differs from the desired state; returns (applied, rejected by the API server)."""
    applied, rejected = [], []
    for desired in desired_children(md, settings, observation.service_monitor_api):
        if not needs_apply(desired, observation.children.get((desired["kind"], desired["metadata"]["name"]))):
            continue
        try:
            kube.apply(desired)
            applied.append(desired)
        except Rejected as error:
            rejected.append(
                Problem("Rejected", f"the API server rejected {desired['kind']} {desired['metadata']['name']}: {error}")
            )
    for api_version, kind, child in unwanted_children(md, observation):
        kube.delete(api_version, kind, md["metadata"]["namespace"], child)
    return applied, rejected


def _reconcile(kube: Kube, namespace: str, name: str, settings: Settings) -> Object | None:
    live = kube.get(MD_API_VERSION, schema.KIND, namespace, name)
    if live is None or live["metadata"].get("deletionTimestamp"):
        return None
    md = spec.defaulted(live)
    observation = observe(kube, md)
    applied: list[Object] = []
    rejected: list[Problem] = []
    if not observation.unresolved:  # never touch what serves while a reference is broken
        applied, rejected = apply_children(kube, md, observation, settings)
    now = utc_now()
    old = live.get("status") or {}
    new = status.derive(old, facts_of(md, observation, applied, rejected, settings), now)
    if new != old:
        kube.patch_status(live, new)
        event = status.transition_event(old, new)
        if event:
            kube.event(live, *event, now=now)
    return new
