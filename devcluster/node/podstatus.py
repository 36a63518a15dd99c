"""What a kubelet reports, as pure functions: the facts about a pod's containers (running since, exits, a
scheduled restart, probe results) -> the pod's status: phase, conditions, container states with their
reasons (ContainerCreating, PodInitializing, CrashLoopBackOff, CreateContainerConfigError, Completed, Error,
StartError), exit codes, termination messages and restart counts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .lifecycle import terminated_reason

Object = Mapping[str, Any]

MAX_MESSAGE_BYTES = 4096  # kubelet reads at most this much of a termination-message file
LOG_TAIL_LINES = 80  # FallbackToLogsOnError: the last lines of the log, at most LOG_TAIL_BYTES
LOG_TAIL_BYTES = 2048


@dataclass(frozen=True)
class Exit:
    exit_code: int
    finished_at: dt.datetime
    started_at: dt.datetime | None = None
    message: str = ""
    start_error: bool = False  # the process never started (bad command, a mount failed)


@dataclass(frozen=True)
class ContainerFacts:
    """What the node knows about one container now."""

    name: str
    image: str
    running_since: dt.datetime | None = None
    exits: tuple[Exit, ...] = ()  # newest last; the last two are reported
    restart_count: int = 0
    restart_after_s: float | None = None  # exited and will be started again after this back-off
    config_error: str = ""
    ready: bool = False
    started: bool = False  # its startup probe passed (or it has none) and it still runs
    container_id: str = ""


@dataclass(frozen=True)
class PodFacts:
    host_ip: str
    pod_ip: str | None = None
    start_time: dt.datetime | None = None
    sandbox_ready: bool = False  # the pod's network namespace exists
    init_containers: tuple[ContainerFacts, ...] = ()
    containers: tuple[ContainerFacts, ...] = ()
    volume_error: str = ""


def pod_status(pod: Object, facts: PodFacts, now: dt.datetime) -> dict[str, Any]:
    """The pod's status as a kubelet writes it (conditions keep their lastTransitionTime while unchanged)."""
    initialized = all(_succeeded(container) for container in facts.init_containers)
    # Containers not started yet wait for the pod's volumes, then for its init containers.
    if facts.volume_error:
        init_pending = pending = ("ContainerCreating", facts.volume_error)
    else:
        init_pending = ("PodInitializing", "")
        pending = ("ContainerCreating", "") if initialized else init_pending
    init_statuses = [container_status(container, pod, init_pending) for container in facts.init_containers]
    statuses = [container_status(container, pod, pending) for container in facts.containers]
    phase = pod_phase(pod, init_statuses, statuses)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions(pod, facts, initialized, phase, now),
        "hostIP": facts.host_ip,
        "hostIPs": [{"ip": facts.host_ip}],
        "initContainerStatuses": init_statuses,
        "containerStatuses": statuses,
    }
    if facts.pod_ip:
        status.update(podIP=facts.pod_ip, podIPs=[{"ip": facts.pod_ip}])
    if facts.start_time:
        status["startTime"] = timestamp(facts.start_time)
    return status


def _succeeded(container: ContainerFacts) -> bool:
    return (
        container.running_since is None
        and container.restart_after_s is None
        and bool(container.exits)
        and container.exits[-1].exit_code == 0
    )


def container_status(container: ContainerFacts, pod: Object, not_started: tuple[str, str]) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": container.name,
        "image": container.image,
        "imageID": "",
        "ready": container.ready,
        "started": container.started,
        "restartCount": container.restart_count,
        "state": {},
        "lastState": {},
    }
    if container.container_id:
        status["containerID"] = container.container_id
    last_exit = container.exits[-1] if container.exits else None
    if container.running_since is not None:
        status["state"] = {"running": {"startedAt": timestamp(container.running_since)}}
        status["lastState"] = _terminated(last_exit) if last_exit else {}
    elif container.config_error:
        status["state"] = _waiting("CreateContainerConfigError", container.config_error)
        status["lastState"] = _terminated(last_exit) if last_exit else {}
    elif last_exit and container.restart_after_s is not None:
        status["state"] = (
            _waiting("CrashLoopBackOff", _backoff_message(container, pod))
            if container.restart_after_s > 0
            else _waiting("ContainerCreating")
        )
        status["lastState"] = _terminated(last_exit)
    elif last_exit:
        status["state"] = _terminated(last_exit)
        status["lastState"] = _terminated(container.exits[-2]) if len(container.exits) > 1 else {}
    else:
        status["state"] = _waiting(*not_started)
    return status


def _backoff_message(container: ContainerFacts, pod: Object) -> str:
    metadata = pod.get("metadata", {})
    pod_ref = f"{metadata.get('name')}_{metadata.get('namespace')}({metadata.get('uid')})"
    return f"back-off {container.restart_after_s:.0f}s restarting failed container={container.name} pod={pod_ref}"


def _waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def _terminated(exit: Exit) -> dict[str, Any]:
    terminated: dict[str, Any] = {
        "exitCode": exit.exit_code,
        "reason": terminated_reason(exit.exit_code, exit.start_error),
        "finishedAt": timestamp(exit.finished_at),
    }
    if exit.started_at is not None:
        terminated["startedAt"] = timestamp(exit.started_at)
    if exit.message:
        terminated["message"] = exit.message
    return {"terminated": terminated}


def pod_phase(pod: Object, init_statuses: Sequence[Object], statuses: Sequence[Object]) -> str:
    """kubelet's getPhase, for pods without sidecar init containers."""
    policy = pod.get("spec", {}).get("restartPolicy", "Always")
    pending_init = failed_init = 0
    for status in init_statuses:
        state, last = status["state"], status["lastState"]
        if "terminated" in state:
            failed_init += state["terminated"]["exitCode"] != 0
        elif "waiting" in state and "terminated" in last and last["terminated"]["exitCode"] != 0:
            failed_init += 1
        else:
            pending_init += 1
    running = waiting = stopped = succeeded = 0
    for status in statuses:
        state, last = status["state"], status["lastState"]
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            succeeded += state["terminated"]["exitCode"] == 0
        elif "terminated" in last:
            stopped += 1
        else:
            waiting += 1
    if failed_init and policy == "Never":
        return "Failed"
    if pending_init or failed_init or waiting:
        return "Pending"
    if running:
        return "Running"
    if not stopped:
        return "Pending"
    if policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    return "Failed" if policy == "Never" else "Running"


def conditions(pod: Object, facts: PodFacts, initialized: bool, phase: str, now: dt.datetime) -> list[dict[str, Any]]:
    previous = {condition["type"]: condition for condition in pod.get("status", {}).get("conditions") or []}
    init_pending = [container.name for container in facts.init_containers if not _succeeded(container)]
    unready = [container.name for container in facts.containers if not container.ready]
    if phase == "Succeeded":
        ready: tuple[bool, str, str] = (False, "PodCompleted", "")
    elif unready:
        ready = (False, "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
    else:
        ready = (True, "", "")
    gates = [gate["conditionType"] for gate in pod.get("spec", {}).get("readinessGates") or []]
    closed = [gate for gate in gates if previous.get(gate, {}).get("status") != "True"]
    pod_ready = ready
    if ready[0] and closed:
        pod_ready = (False, "ReadinessGatesNotReady", f"readiness gates not True: {closed}")
    wanted = {
        "PodReadyToStartContainers": (facts.sandbox_ready, "", ""),
        "Initialized": (
            (True, "", "")
            if initialized
            else (False, "ContainersNotInitialized", f"containers with incomplete status: [{' '.join(init_pending)}]")
        ),
        "Ready": pod_ready,
        "ContainersReady": ready,
        "PodScheduled": (True, "", ""),
    }
    return [_condition(kind, *value, previous.get(kind), now) for kind, value in wanted.items()]


def _condition(
    kind: str, true: bool, reason: str, message: str, previous: Object | None, now: dt.datetime
) -> dict[str, Any]:
    status = "True" if true else "False"
    unchanged = previous is not None and previous.get("status") == status and previous.get("lastTransitionTime")
    condition: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": previous["lastTransitionTime"] if unchanged and previous else timestamp(now),
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def termination_message(file_content: bytes, log_tail: bytes, fallback_to_logs: bool, exit_code: int) -> str:
    """The message of an exited container: its termination-message file, else (FallbackToLogsOnError and a
    failure) the end of its log."""
    message = file_content[:MAX_MESSAGE_BYTES].decode(errors="replace")
    if message.strip() or not fallback_to_logs or exit_code == 0:
        return message
    return tail(log_tail)


def tail(log: bytes, lines: int = LOG_TAIL_LINES, max_bytes: int = LOG_TAIL_BYTES) -> str:
    last_lines = b"\n".join(log.rstrip(b"\n").split(b"\n")[-lines:])
    return last_lines[-max_bytes:].decode(errors="replace")


def timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
