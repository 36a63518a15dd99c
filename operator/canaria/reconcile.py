"""One reconcile pass: observe (reads) -> decide (pure) -> apply (writes) -> one status write.

Every pass is idempotent and starts from what the API says now, so the operator may restart at any
point. A pass that finds everything as desired writes nothing.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from canaria import analysis, logs, metrics, render, rollout, schema, spec, status
from canaria.kube import Kube, NamespaceTerminating, Rejected, Unavailable
from canaria.prometheus import Prometheus
from canaria.render import CANARY, STABLE, Settings
from canaria.spec import Object
from canaria.status import Facts, Problem, RolloutFacts

MD_API_VERSION = f"{schema.GROUP}/{schema.VERSION}"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1"
APPLIED_HASH_ANNOTATION = f"{schema.GROUP}/applied-hash"


@dataclass
class Observation:
    """The world as one pass read it."""

    children: dict[tuple[str, str], Object | None] = field(default_factory=dict)  # (kind, name) -> object
    service_monitor_api: bool = False
    unresolved: list[Problem] = field(default_factory=list)
    pods: list[Object] = field(default_factory=list)  # every serving pod of the object, both tracks
    config_maps: list[str] = field(default_factory=list)  # names of the object's ConfigMaps


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


def gateway_mode(md: Object) -> bool:
    return bool(md["spec"]["traffic"]["mode"] == "GatewayAPI")


def desired_children(md: Object, plan: rollout.Plan, settings: Settings, service_monitor_api: bool) -> list[Object]:
    """Each track runs the model the plan gives it; GatewayAPI mode adds a Service per track and the route."""
    tracks = [(STABLE, plan.stable)] + ([(CANARY, plan.canary)] if plan.canary else [])
    children = []
    for track, wanted in tracks:
        children.append(render.config_map(md, track, wanted.model))
        children.append(render.deployment(md, track, wanted.model, wanted.replicas, settings))
    children.append(render.service(md))
    if gateway_mode(md):
        weights = plan.route_weights or {STABLE: 100, CANARY: 0}
        children += [render.track_service(md, STABLE), render.track_service(md, CANARY), render.http_route(md, weights)]
    if md["spec"]["monitoring"]["serviceMonitor"]["enabled"] and service_monitor_api:
        children.append(render.service_monitor(md))
    return [with_applied_hash(child) for child in children]


def config_maps_in_use(pods: list[Object]) -> set[str]:
    return {
        volume["configMap"]["name"]
        for pod in pods
        for volume in (pod.get("spec") or {}).get("volumes") or []
        if volume.get("configMap")
    }


def unwanted_children(md: Object, observation: Observation, desired: list[Object]) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of children that exist but should not: a ServiceMonitor switched off, the canary
    Deployment once no canary runs, the route and track Services after a switch to Service mode, and ConfigMaps
    no desired Deployment and no pod uses any more (a pod of an old ReplicaSet still mounts its own until it
    goes)."""
    wanted = {(child["kind"], child["metadata"]["name"]) for child in desired}
    unwanted = []
    name = render.service_name(md)
    candidates = [
        (SERVICE_MONITOR_API, "ServiceMonitor", name),
        ("apps/v1", "Deployment", render.deployment_name(md, CANARY)),
        (render.GATEWAY_API, "HTTPRoute", name),
        ("v1", "Service", render.track_service_name(md, STABLE)),
        ("v1", "Service", render.track_service_name(md, CANARY)),
    ]
    for api_version, kind, child in candidates:
        if observation.children.get((kind, child)) and (kind, child) not in wanted:
            unwanted.append((api_version, kind, child))
    in_use = config_maps_in_use(observation.pods) | {n for kind, n in wanted if kind == "ConfigMap"}
    unwanted += [("v1", "ConfigMap", n) for n in sorted(observation.config_maps) if n not in in_use]
    return unwanted


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


def pods_of(pods: list[Object], track: str, model_hash: str | None = None) -> list[Object]:
    """A track's pods; with `model_hash`, only those running that model."""
    return [
        pod
        for pod in pods
        if (pod["metadata"].get("labels") or {}).get(render.TRACK_LABEL) == track
        and (
            model_hash is None
            or (pod["metadata"].get("annotations") or {}).get(render.MODEL_HASH_ANNOTATION) == model_hash
        )
    ]


def track_status(md: Object, observation: Observation, track: str) -> rollout.TrackStatus:
    """The model a track's Deployment runs (its pod template's model hash) and its Ready pods running it."""
    deployment = observation.children.get(("Deployment", render.deployment_name(md, track)))
    if deployment is None:
        return rollout.TrackStatus()
    template = deployment["spec"]["template"]["metadata"]
    model_hash = (template.get("annotations") or {}).get(render.MODEL_HASH_ANNOTATION, "")
    ready = sum(status.pod_ready(pod) for pod in pods_of(observation.pods, track, model_hash))
    return rollout.TrackStatus(model_hash, ready)


def canary_failure(md: Object, observation: Observation, state: Object) -> str | None:
    """Why the canary's pods will not become Ready, if so (packaging failed, crash loop, image pull)."""
    canary_model = state.get("canaryModel")
    if not canary_model:
        return None
    pods = pods_of(observation.pods, CANARY, render.content_hash(canary_model))
    problems = status.pod_failures(pods)
    return "; ".join(problem.message for problem in problems) or None


def facts_of(
    md: Object,
    observation: Observation,
    plan: rollout.Plan,
    applied: list[Object],
    rejected: list[Problem],
    settings: Settings,
) -> Facts:
    wanted = plan.stable.replicas
    deployment = observation.children.get(("Deployment", render.deployment_name(md, STABLE)))
    complete, ready = status.deployment_complete(deployment, wanted)
    changed_deployment = any(obj["kind"] == "Deployment" for obj in applied)
    stable_pods = pods_of(observation.pods, STABLE)
    failures = [*rejected, *status.pod_failures(stable_pods)]
    if status.progress_deadline_exceeded(deployment) and not changed_deployment:
        failures.append(
            Problem(
                "ProgressDeadlineExceeded",
                "the new pods did not become ready within 10 "
                "minutes: see `kubectl describe pods -l "
                f"{render.OWNER_LABEL}={md['metadata']['name']}`",
            )
        )
    canary_ready, canary_digest = 0, ""
    if plan.canary is not None:
        canary_pods = pods_of(observation.pods, CANARY, render.content_hash(plan.canary.model))
        canary_ready = sum(status.pod_ready(p) for p in canary_pods)
        canary_version = str(plan.canary.model["version"])
        canary_digest = status.ready_pod_digests(canary_pods, render.VERSION_LABEL).get(canary_version, "")
    return Facts(
        generation=md["metadata"].get("generation", 0),
        version=plan.stable.model["version"],
        wanted_replicas=wanted,
        ready_replicas=ready,
        rollout_complete=complete and not changed_deployment and not observation.unresolved,
        unresolved=observation.unresolved,
        failures=failures,
        waiting=status.pods_waiting(observation.pods),
        service_monitor=service_monitor_problem(md, observation.service_monitor_api),
        url=render.inference_url(md, settings),
        digests=status.ready_pod_digests(stable_pods, render.VERSION_LABEL),
        rollout=RolloutFacts(
            phase=str(plan.phase),
            message=plan.message,
            state=plan.state,
            canary_version=str(plan.canary.model["version"]) if plan.canary else "",
            requested_weight=plan.requested_weight,
            effective_weight=plan.effective_weight,
            canary_ready=canary_ready,
            canary_digest=canary_digest,
        ),
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
    owned = {render.OWNER_LABEL: md["metadata"]["name"], render.MANAGED_BY: "canaria"}
    # Listed, not read by name: the list also finds what no longer belongs (old ConfigMaps, a track's Service
    # left from GatewayAPI mode).
    config_maps = kube.list("v1", "ConfigMap", namespace, owned)
    observation.config_maps = [config_map["metadata"]["name"] for config_map in config_maps]
    services = kube.list("v1", "Service", namespace, owned)
    for kind, listed in [*(("ConfigMap", c) for c in config_maps), *(("Service", s) for s in services)]:
        observation.children[(kind, listed["metadata"]["name"])] = listed
    kinds = [
        ("apps/v1", "Deployment", render.deployment_name(md, STABLE)),
        ("apps/v1", "Deployment", render.deployment_name(md, CANARY)),
    ]
    # The route comes and goes with the track Services: read it only where they are (or should be).
    if gateway_mode(md) or ("Service", render.track_service_name(md, STABLE)) in observation.children:
        kinds.append((render.GATEWAY_API, "HTTPRoute", render.service_name(md)))
    if observation.service_monitor_api:
        kinds.append((SERVICE_MONITOR_API, "ServiceMonitor", render.service_name(md)))
    for api_version, kind, name in kinds:
        observation.children[(kind, name)] = kube.get(api_version, kind, namespace, name)
    observation.unresolved = unresolved_references(kube, md)
    observation.pods = kube.list("v1", "Pod", namespace, owned)
    return observation


class _NoPrometheus:
    """The provider when no Prometheus address is set: every query has no data, and says why."""

    def query(self, promql: str) -> float | analysis.NoData:
        return analysis.NoData(
            analysis.Missing.UNREACHABLE,
            "no Prometheus address: set the operator's CANARIA_PROMETHEUS_URL (Helm prometheus.url) or "
            "spec.rollout.analysis.prometheusUrl",
        )


def measure_canary(md: Object, state: Object, settings: Settings) -> analysis.Assessment:
    """One analysis interval: the canary's and the stable track's numbers from Prometheus, judged."""
    checks = md["spec"]["rollout"]["analysis"]
    url = checks.get("prometheusUrl") or settings.prometheus_url
    provider: analysis.Provider = Prometheus(url) if url else _NoPrometheus()
    interval = analysis.duration_seconds(checks["interval"])

    def target(track: str, model: Object) -> analysis.Target:
        meta = md["metadata"]
        return analysis.Target(meta["namespace"], meta["name"], spec.model_name(md), track, model["version"], interval)

    measurements = analysis.measure(
        provider,
        analysis.checks_of(checks),
        target(CANARY, state.get("canaryModel") or {"version": ""}),
        target(STABLE, state.get("stableModel") or {"version": ""}),
    )
    assessment = analysis.assess(measurements, checks)
    metrics.record_analysis(md["metadata"]["namespace"], md["metadata"]["name"], assessment)
    return assessment


def observe_rollout(
    md: Object, observation: Observation, state: Object, now: datetime.datetime, settings: Settings
) -> rollout.Observation:
    """What decide() needs: each track's model and Ready pods, canary failures, and Prometheus when due."""
    due = rollout.analysis_due(md["spec"], state, now)
    return rollout.Observation(
        stable=track_status(md, observation, STABLE),
        canary=track_status(md, observation, CANARY),
        canary_failure=canary_failure(md, observation, state),
        analysis=measure_canary(md, state, settings) if due else None,
    )


# -- one pass -----------------------------------------------------------------------------------------------

# Requests per object. An entry lives only while a pass runs or a retry waits, so the table holds the objects
# in flight, not every object ever seen.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
# Timers fire a little after the due time: status keeps milliseconds, and a pass a hair early would find
# nothing due and only schedule itself again.
TIMER_SLACK_SECONDS = 0.05
# Every object is looked at again this long after its last pass, even when nothing is due: reads only, it picks
# up what no watch reports (e.g. a Secret created later). Our own timer, not Kopf's: a Kopf timer makes Kopf put
# a finalizer on every object, and an object with a finalizer cannot be deleted while the operator is down.
RESYNC_SECONDS = 300.0


@dataclass
class Requests:
    running: bool = False  # a pass runs now
    pending: bool = False  # a request came in while it ran: run once more
    failures: int = 0  # passes in a row that failed temporarily
    retry: threading.Timer | None = None  # the next try after a temporary failure


_table_lock = threading.Lock()
_requests: dict[tuple[str, str], Requests] = {}
metrics.watch_queue(lambda: len(_requests))
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
            result = _measured_pass(kube, namespace, name, settings)
        except NamespaceTerminating:
            result = None  # the namespace controller is deleting the object and its children
        except Unavailable as error:
            _retry_later(key, entry, error, (kube, namespace, name, settings))
            return None
        except BaseException:
            with _table_lock:
                _settle(key, entry)
            _look_again(kube, namespace, name, settings, RESYNC_SECONDS)  # a bug or a rejection: try again later
            raise
        with _table_lock:  # one critical section: a request cannot slip between the check and the settling
            entry.failures = 0
            if not entry.pending:
                _settle(key, entry)
                return result
            entry.pending = False


def _measured_pass(kube: Kube, namespace: str, name: str, settings: Settings) -> Object | None:
    """One pass, timed and counted by how it ended (canaria_reconcile_total{result})."""
    started, result = time.monotonic(), "error"
    try:
        new = _reconcile(kube, namespace, name, settings)
        result = "success"
        return new
    except NamespaceTerminating:
        result = "success"  # nothing to do: the namespace goes with the object
        raise
    except Unavailable:
        result = "retry"
        raise
    finally:
        metrics.record_pass(result, time.monotonic() - started)


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
    log.warning("%s; retrying in %gs", error, delay, extra=logs.about(*key))


def apply_children(
    kube: Kube, md: Object, observation: Observation, plan: rollout.Plan, settings: Settings
) -> tuple[list[Object], list[Problem]]:
    """Apply what differs from the desired state, then remove what is no longer wanted; returns (applied,
    rejected by the API server)."""
    applied, rejected = [], []
    desired = desired_children(md, plan, settings, observation.service_monitor_api)
    for child in desired:
        if not needs_apply(child, observation.children.get((child["kind"], child["metadata"]["name"]))):
            continue
        try:
            kube.apply(child)
            applied.append(child)
        except Rejected as error:
            rejected.append(
                Problem("Rejected", f"the API server rejected {child['kind']} {child['metadata']['name']}: {error}")
            )
    for api_version, kind, name in unwanted_children(md, observation, desired):
        kube.delete(api_version, kind, md["metadata"]["namespace"], name)
    return applied, rejected


def _reconcile(kube: Kube, namespace: str, name: str, settings: Settings) -> Object | None:
    live = kube.get(MD_API_VERSION, schema.KIND, namespace, name)
    if live is None or live["metadata"].get("deletionTimestamp"):
        _look_again(kube, namespace, name, settings, None)
        metrics.forget(namespace, name)
        return None
    md = spec.defaulted(live)
    old = live.get("status") or {}
    observation = observe(kube, md)
    clock = datetime.datetime.now(datetime.UTC)
    state = old.get("rollout") or {}
    applied: list[Object] = []
    rejected: list[Problem] = []
    if observation.unresolved:  # never touch what serves, nor start a version, while a reference is broken
        plan = rollout.unchanged(md["spec"], state, clock)
    else:
        plan = rollout.decide(md["spec"], state, observe_rollout(md, observation, state, clock, settings), clock)
        applied, rejected = apply_children(kube, md, observation, plan, settings)
    now = utc_now()
    new = status.derive(old, facts_of(md, observation, plan, applied, rejected, settings), now)
    if new != old:
        kube.patch_status(live, new)
        metrics.record_transitions(namespace, name, new, plan.events)  # counted once status holds them
        transition = status.transition_event(old, new)
        for event in plan.events:
            kube.event(live, event.type, event.reason, event.message, now=now)
        if transition and not plan.events:  # the rollout's own Events already say what changed
            kube.event(live, *transition, now=now)
    metrics.record_state(namespace, name, md["spec"], new)
    _look_again(kube, namespace, name, settings, next_pass_after(plan.requeue_after))
    return new


def next_pass_after(requeue_after: float | None) -> float:
    """Seconds until the object's next pass: when something falls due (a step's end, an analysis, a deadline),
    and the periodic resync at the latest."""
    return RESYNC_SECONDS if requeue_after is None else min(requeue_after, RESYNC_SECONDS)


# A step's end, the next analysis, a deadline or the resync: one timer per object, replaced by each pass (which
# knows best). A sleeping timer thread costs about 17 kB (1000 objects: 17 MB, measured).
_timers: dict[tuple[str, str], threading.Timer] = {}


def _look_again(kube: Kube, namespace: str, name: str, settings: Settings, after: float | None) -> None:
    key = (namespace, name)
    with _table_lock:
        previous = _timers.pop(key, None)
        if previous:
            previous.cancel()
        if after is None:
            return
        timer = threading.Timer(after + TIMER_SLACK_SECONDS, _due, args=(kube, namespace, name, settings))
        timer.daemon = True
        _timers[key] = timer
        timer.start()


def _due(kube: Kube, namespace: str, name: str, settings: Settings) -> None:
    try:
        reconcile(kube, namespace, name, settings)
    except Exception:  # a timer thread has no caller to report to: log, the next event or resync runs again
        log.exception("the scheduled pass failed", extra=logs.about(namespace, name))
