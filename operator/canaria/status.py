"""Pure status logic: conditions that keep lastTransitionTime, and Ready derived from the parts.

Condition types follow kstatus: `Reconciling` and `Stalled` are abnormal-true; `Ready` is what
`kubectl wait --for=condition=Ready` waits for. The parts: `ResolvedRefs` (PVC, Secret exist),
`Available` (the stable pods serve the model), `ServiceMonitorReady`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from canaria import schema
from canaria.spec import Object

STATUS_SCHEMA = schema.status_schema()
PACKAGER_CONTAINER = "package"  # the init container that builds the archive (canaria.render)
TRUNCATION_MARK = " [...]"


def set_condition(
    conditions: list[Object], type_: str, status: bool | None, reason: str, message: str, generation: int, now: str
) -> list[Object]:
    """A new list with `type_` set; lastTransitionTime changes only when the status value changes."""
    value = {True: "True", False: "False", None: "Unknown"}[status]
    old = next((c for c in conditions if c["type"] == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value else now
    new = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }
    return [c for c in conditions if c["type"] != type_] + [new]


def condition(status: Object, type_: str) -> Object | None:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


@dataclass(frozen=True)
class Problem:
    """Something that keeps the ModelDeployment from its spec, with the fix in the message."""

    reason: str
    message: str


@dataclass
class Facts:
    """What one reconcile pass saw and did, reduced to what status needs."""

    generation: int
    version: str
    wanted_replicas: int
    ready_replicas: int = 0
    rollout_complete: bool = False  # the stable Deployment runs the current template everywhere
    unresolved: list[Problem] = field(default_factory=list)  # missing PVC/Secret: nothing was applied
    failures: list[Problem] = field(default_factory=list)  # packaging failed, crash loop, rejected child
    waiting: list[str] = field(default_factory=list)  # pods waiting for something that may come by itself
    service_monitor: Problem | None = None  # why there is no ServiceMonitor, if there is none
    url: str = ""
    digests: dict[str, str] = field(default_factory=dict)  # version -> archive digest its ready pods report
    rollout: RolloutFacts | None = None  # the rollout's plan for this pass (canaria.rollout), if any


@dataclass(frozen=True)
class RolloutFacts:
    """What status shows of the rollout's plan (canaria.rollout.Plan), as plain values."""

    phase: str  # canaria.rollout.Phase
    message: str
    state: Object  # the new status.rollout, written whole
    canary_version: str = ""
    requested_weight: int = 0
    effective_weight: int = 0
    canary_ready: int = 0
    canary_digest: str = ""  # the archive the canary's ready pods loaded, as their packager reported it


# Rollout phases shown as is; Succeeded shows as Serving (the promoted version serves everything).
ROLLOUT_UNDER_WAY = ("Progressing", "Waiting", "Paused", "Promoting")
ROLLOUT_ENDED_BADLY = ("RolledBack", "Aborted")


# Container waiting reasons that no amount of waiting fixes, with the status reason they map to.
STUCK_WAITING = {
    "CrashLoopBackOff": "CrashLoop",
    "ErrImagePull": "ImagePullFailed",
    "ImagePullBackOff": "ImagePullFailed",
    "InvalidImageName": "ImagePullFailed",
    "CreateContainerConfigError": "InvalidPodConfig",
}


def pod_failures(pods: list[Object]) -> list[Problem]:
    """Failures of serving pods that waiting will not fix: the init container (packaging) failed, an image
    cannot be pulled, or a container crash-loops. The packager's termination message carries its reason."""
    problems: list[Problem] = []
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        for init in status.get("initContainerStatuses") or []:
            terminated = _terminated(init)
            if terminated and terminated.get("exitCode", 0) != 0:
                message = (terminated.get("message") or terminated.get("reason") or "").strip()
                problems.append(Problem("PackagingFailed", f"packaging the model failed in pod {name}: {message}"))
        for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = STUCK_WAITING.get(waiting.get("reason", ""))
            if reason is None or (reason == "CrashLoop" and container["name"] == PACKAGER_CONTAINER):
                continue  # a crash-looping packager is already reported as PackagingFailed
            last = _terminated(container) or {}
            detail = (waiting.get("message") or last.get("message") or last.get("reason") or "").strip()
            problems.append(
                Problem(reason, f"container {container['name']} of pod {name}: {waiting['reason']}: {detail}")
            )
    return _unique(problems)


def pods_waiting(pods: list[Object]) -> list[str]:
    """Why pods wait that may resolve by itself (e.g. unschedulable until a node or volume appears)."""
    notes = []
    for pod in pods:
        for condition_ in (pod.get("status") or {}).get("conditions") or []:
            if condition_.get("type") == "PodScheduled" and condition_.get("reason") == "Unschedulable":
                notes.append(f"pod {pod['metadata']['name']} is unschedulable: {condition_.get('message', '')}")
    return notes[:1]


DIGEST_PATTERN = re.compile(r"^[a-z0-9]+:[0-9a-f]{32,120}$")


def archive_digest(pod: Object) -> str | None:
    """The digest the packager reported on success: its termination message is {"digest": "blake3:...", ...}."""
    for init in (pod.get("status") or {}).get("initContainerStatuses") or []:
        terminated = (init.get("state") or {}).get("terminated") or {}
        if init.get("name") != PACKAGER_CONTAINER or terminated.get("exitCode") != 0:
            continue
        try:
            digest = json.loads(terminated.get("message") or "").get("digest")
        except (ValueError, AttributeError):
            return None  # an older packager, or a message that is not ours
        return digest if isinstance(digest, str) and DIGEST_PATTERN.match(digest) else None
    return None


def ready_pod_digests(pods: list[Object], version_label: str) -> dict[str, str]:
    """version (the pods' `version_label`) -> the archive digest reported by its newest ready pod (after a
    repackaging of the same version, the newest pods are the ones the rollout keeps)."""
    digests: dict[str, str] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        version = (pod["metadata"].get("labels") or {}).get(version_label)
        digest = archive_digest(pod)
        if version and digest and pod_ready(pod):
            digests[version] = digest
    return digests


def pod_ready(pod: Object) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _terminated(container_status: Object) -> Object | None:
    state = container_status.get("state") or {}
    return state.get("terminated") or (container_status.get("lastState") or {}).get("terminated")


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: dict[str, Problem] = {}
    for problem in problems:
        seen.setdefault(problem.reason, problem)
    return list(seen.values())


def deployment_complete(deployment: Object | None, wanted: int) -> tuple[bool, int]:
    """(rolled out and fully ready, ready pods) of a Deployment as read from the API."""
    if deployment is None:
        return False, 0
    status = deployment.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    complete = (
        status.get("observedGeneration") == deployment["metadata"].get("generation")
        and int(status.get("updatedReplicas") or 0) == wanted
        and int(status.get("replicas") or 0) == wanted
        and ready == wanted
    )
    return complete, ready


def progress_deadline_exceeded(deployment: Object | None) -> bool:
    conditions = ((deployment or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded" for c in conditions)


def derive(old: Object, facts: Facts, now: str) -> Object:
    """The new status from the old one and this pass's facts."""
    generation = facts.generation
    conditions = list(old.get("conditions", []))

    def put(type_: str, status: bool | None, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, status, reason, message, generation, now)

    unresolved = facts.unresolved
    put(
        "ResolvedRefs",
        not unresolved,
        unresolved[0].reason if unresolved else "AllResolved",
        "; ".join(p.message for p in unresolved) or "the model's PVC and Secret references exist",
    )
    serving = facts.ready_replicas > 0
    # Scaled to zero is a state the user asked for: reconciled (Ready) while nothing serves (not Available).
    scaled_to_zero = facts.wanted_replicas == 0
    put(
        "Available",
        serving,
        "ModelLoaded" if serving else "ScaledToZero" if scaled_to_zero else "NoReadyPods",
        f"{facts.ready_replicas} of {facts.wanted_replicas} pods have the model loaded",
    )
    monitor = facts.service_monitor
    put(
        "ServiceMonitorReady",
        monitor is None,
        monitor.reason if monitor else "Created",
        monitor.message if monitor else "the ServiceMonitor exists",
    )

    stable_blocking = blocking = unresolved + facts.failures
    ready = not blocking and facts.rollout_complete
    rollout = facts.rollout
    under_way = rollout is not None and rollout.phase in ROLLOUT_UNDER_WAY
    ended_badly = rollout is not None and rollout.phase in ROLLOUT_ENDED_BADLY
    if rollout is not None and (under_way or ended_badly) and not unresolved:
        # A rollout under way is not yet what the spec asks (Reconciling); one that failed needs the user (Stalled).
        ready = False
        blocking = [*blocking, Problem(rollout.phase, rollout.message)] if ended_badly else blocking
    if ready and scaled_to_zero:
        reason, message = (
            "ScaledToZero",
            f"spec.serving.replicas is 0: no pod serves version {facts.version}",
        )
    elif ready:
        reason, message = (
            "Serving",
            f"version {facts.version} serves: {facts.ready_replicas} of {facts.wanted_replicas} pods ready",
        )
    elif blocking:
        reason, message = blocking[0].reason, "; ".join(p.message for p in blocking)
    elif under_way and rollout is not None:
        reason, message = rollout.phase, rollout.message
    else:
        reason, message = (
            "RollingOut",
            "; ".join(
                [
                    f"waiting for the pods of version {facts.version}: "
                    f"{facts.ready_replicas} of {facts.wanted_replicas} ready",
                    *facts.waiting,
                ]
            ),
        )
    put("Ready", ready, reason, message)
    put("Stalled", bool(blocking), reason if blocking else "NotStalled", message if blocking else "")
    put(
        "Reconciling",
        not ready and not blocking,
        reason if not ready and not blocking else "Reconciled",
        message if not ready and not blocking else "",
    )

    if ready:
        phase = "ScaledToZero" if scaled_to_zero else "Serving"
    elif rollout is not None and (under_way or ended_badly) and not stable_blocking:
        phase = rollout.phase
    elif blocking:
        phase = "Degraded" if serving else "Failed"
    else:
        phase = "Progressing" if old.get("stableVersion") and serving else "Pending"

    new: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "message": message,
        # The version that last served with every wanted pod ready; scaling to zero proves nothing new.
        "stableVersion": facts.version if ready and not scaled_to_zero else old.get("stableVersion", ""),
        "canaryVersion": rollout.canary_version if rollout else "",
        "canaryWeight": rollout.effective_weight if rollout else 0,
        "replicas": facts.wanted_replicas,
        "readyReplicas": facts.ready_replicas,
        "ready": f"{facts.ready_replicas}/{facts.wanted_replicas}",
        "url": facts.url,
        "conditions": sorted(conditions, key=lambda c: c["type"]),
    }
    # The archive of the stable version, as its ready pods report it; kept while they are not observed
    # (scaled to zero, restarting) as long as the stable version is the same.
    digest = facts.digests.get(new["stableVersion"])
    if not digest and new["stableVersion"] == old.get("stableVersion"):
        digest = old.get("modelDigest")
    if digest:
        new["modelDigest"] = digest
    if rollout is not None:
        new["requestedWeight"] = rollout.requested_weight
        new["canaryReadyReplicas"] = rollout.canary_ready
        if rollout.canary_version and rollout.canary_digest:
            new["canaryModelDigest"] = rollout.canary_digest
        new["rollout"] = rollout.state
    elif "rollout" in old:
        new["rollout"] = old["rollout"]
    return fitted(new, STATUS_SCHEMA)


def truncated(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, marked as cut. The API server counts characters (runes), as
    `len` does, and rejects the whole status write when one string is too long."""
    if len(text) <= limit:
        return text
    return (text[: max(0, limit - len(TRUNCATION_MARK))] + TRUNCATION_MARK)[:limit]


def fitted(value: Any, node: schema.Schema) -> Any:
    """`value` with every string cut to the maxLength its schema node declares."""
    if isinstance(value, str) and "maxLength" in node:
        return truncated(value, node["maxLength"])
    if isinstance(value, dict):
        properties = node.get("properties", {})
        return {key: fitted(item, properties.get(key, {})) for key, item in value.items()}
    if isinstance(value, list):
        return [fitted(item, node.get("items", {})) for item in value]
    return value


def transition_event(old: Object, new: Object) -> tuple[str, str, str] | None:
    """(type, reason, message) of an Event when the phase or the Ready reason changed, else None."""
    old_ready, new_ready = condition(old, "Ready") or {}, condition(new, "Ready") or {}
    if old.get("phase") == new["phase"] and old_ready.get("reason") == new_ready.get("reason"):
        return None
    warning = new["phase"] in ("Degraded", "Failed")
    return ("Warning" if warning else "Normal", str(new_ready.get("reason", new["phase"])), str(new["message"]))
