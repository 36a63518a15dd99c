"""The node agent's pure decisions while a pod runs (restart policy, back-off, init order, probe thresholds)
and its status report (phase, conditions, container states and reasons), checked against what a kubelet
reports in the same situations."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from devcluster.node import lifecycle, podstatus
from devcluster.node.lifecycle import Backoff, InitState, InitStep, ProbeTally
from devcluster.node.podstatus import ContainerFacts, Exit, PodFacts

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(seconds=30)
NOW = T0 + dt.timedelta(minutes=5)


def pod(restart_policy: str = "Always", conditions: list[dict[str, Any]] | None = None, **spec: Any) -> dict:
    return {
        "metadata": {"name": "web-1", "namespace": "models", "uid": "u-1"},
        "spec": {"restartPolicy": restart_policy, **spec},
        "status": {"conditions": conditions or []},
    }


def running(name: str = "main", ready: bool = True, **facts: Any) -> ContainerFacts:
    return ContainerFacts(name=name, image="img", running_since=T0, ready=ready, started=True, **facts)


def exited(code: int, name: str = "main", message: str = "", **facts: Any) -> ContainerFacts:
    return ContainerFacts(name=name, image="img", exits=(Exit(code, T1, T0, message),), **facts)


def status_of(facts: PodFacts, body: dict | None = None) -> dict[str, Any]:
    return podstatus.pod_status(body or pod(), facts, NOW)


def facts(*containers: ContainerFacts, init: tuple[ContainerFacts, ...] = (), **fields: Any) -> PodFacts:
    defaults: dict[str, Any] = {"host_ip": "10.244.0.1", "pod_ip": "10.244.1.7", "start_time": T0}
    return PodFacts(init_containers=init, containers=containers, sandbox_ready=True, **{**defaults, **fields})


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {condition["type"]: condition["status"] for condition in status["conditions"]}


def state(status: dict[str, Any], index: int = 0, key: str = "containerStatuses") -> dict[str, Any]:
    return status[key][index]["state"]


# --- lifecycle --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "code", "init", "restarts"),
    [
        ("Always", 0, False, True),
        ("Always", 1, False, True),
        ("OnFailure", 0, False, False),
        ("OnFailure", 2, False, True),
        ("Never", 1, False, False),
        ("Always", 0, True, False),  # an init container that succeeded is done
        ("Always", 3, True, True),
        ("OnFailure", 3, True, True),
        ("Never", 3, True, False),
    ],
)
def test_restart_policy(policy: str, code: int, init: bool, restarts: bool) -> None:
    assert lifecycle.restarts(policy, code, init=init) is restarts


def test_back_off_is_immediate_then_doubles_from_10s_to_5_minutes_and_resets_after_10_minutes() -> None:
    backoff: Backoff | None = None
    exited_at = 1000.0
    delays = []
    for _ in range(8):
        restart_at, backoff = lifecycle.next_restart(backoff, exited_at)
        delays.append(restart_at - exited_at)
        exited_at = restart_at + 1  # crashes a second after each start
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]
    assert backoff is not None
    restart_at, _ = lifecycle.next_restart(backoff, backoff.restarted_at + 601)  # ran for over 10 minutes
    assert restart_at == backoff.restarted_at + 601


@pytest.mark.parametrize(
    ("states", "policy", "step"),
    [
        ([], "Always", InitStep(done=True)),
        ([InitState.NOT_STARTED, InitState.NOT_STARTED], "Always", InitStep(start=0)),
        ([InitState.SUCCEEDED, InitState.NOT_STARTED], "Always", InitStep(start=1)),
        ([InitState.RUNNING, InitState.NOT_STARTED], "Always", InitStep()),
        ([InitState.SUCCEEDED, InitState.FAILED], "OnFailure", InitStep(start=1)),
        ([InitState.FAILED, InitState.NOT_STARTED], "Never", InitStep(failed=True)),
        ([InitState.SUCCEEDED, InitState.SUCCEEDED], "Never", InitStep(done=True)),
    ],
)
def test_init_containers_run_one_at_a_time_in_order(states: list[InitState], policy: str, step: InitStep) -> None:
    assert lifecycle.init_step(states, policy) == step


def test_probe_result_changes_only_after_enough_consecutive_results() -> None:
    tally = ProbeTally(result=False)
    for succeeded, expected in [(True, False), (False, False), (True, False), (True, True), (False, True)]:
        tally = lifecycle.tally(tally, succeeded, success_threshold=2, failure_threshold=3)
        assert tally.result is expected
    tally = lifecycle.tally(lifecycle.tally(tally, False, 2, 3), False, 2, 3)
    assert tally.result is False and tally.failures == 3


@pytest.mark.parametrize(("returncode", "code"), [(0, 0), (3, 3), (-15, 143), (-9, 137)])
def test_a_process_killed_by_a_signal_exits_with_128_plus_the_signal(returncode: int, code: int) -> None:
    assert lifecycle.exit_code_of(returncode) == code


# --- pod status -------------------------------------------------------------------------------------------


def test_a_running_ready_pod() -> None:
    status = status_of(facts(running()))
    assert status["phase"] == "Running"
    assert conditions(status) == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }
    assert status["podIP"] == "10.244.1.7" and status["podIPs"] == [{"ip": "10.244.1.7"}]
    assert status["hostIP"] == "10.244.0.1" and status["startTime"] == "2026-01-01T12:00:00Z"
    assert state(status) == {"running": {"startedAt": "2026-01-01T12:00:00Z"}}
    assert status["containerStatuses"][0]["ready"] is True


def test_a_container_not_ready_holds_the_pod_ready_condition() -> None:
    status = status_of(facts(running(ready=False), running("sidecar")))
    assert status["phase"] == "Running"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
    assert ready["message"] == "containers with unready status: [main]"


def test_init_containers_pending_and_running() -> None:
    init = (
        ContainerFacts(name="package", image="img", running_since=T0),
        ContainerFacts(name="second", image="img"),
    )
    status = status_of(facts(ContainerFacts(name="main", image="img"), init=init))
    assert status["phase"] == "Pending"
    assert conditions(status)["Initialized"] == "False"
    initialized = next(c for c in status["conditions"] if c["type"] == "Initialized")
    assert initialized["message"] == "containers with incomplete status: [package second]"
    assert "running" in state(status, 0, "initContainerStatuses")
    assert state(status, 1, "initContainerStatuses") == {"waiting": {"reason": "PodInitializing"}}
    assert state(status) == {"waiting": {"reason": "PodInitializing"}}


def test_a_failed_init_container_reports_its_exit_code_and_message() -> None:
    init = (exited(3, name="package", message="sha256 mismatch"),)
    never = status_of(facts(ContainerFacts(name="main", image="img"), init=init), pod("Never"))
    assert never["phase"] == "Failed"
    assert state(never, 0, "initContainerStatuses")["terminated"] == {
        "exitCode": 3,
        "reason": "Error",
        "message": "sha256 mismatch",
        "startedAt": "2026-01-01T12:00:00Z",
        "finishedAt": "2026-01-01T12:00:30Z",
    }
    # Under Always, it is retried after a back-off: Init:CrashLoopBackOff, the pod Pending.
    retrying = (exited(3, name="package", message="sha256 mismatch", restart_after_s=20.0, restart_count=2),)
    status = status_of(facts(ContainerFacts(name="main", image="img"), init=retrying))
    assert status["phase"] == "Pending"
    init_status = status["initContainerStatuses"][0]
    assert init_status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert init_status["state"]["waiting"]["message"].startswith("back-off 20s restarting failed container=package")
    assert init_status["lastState"]["terminated"]["exitCode"] == 3
    assert init_status["restartCount"] == 2


@pytest.mark.parametrize(
    ("policy", "codes", "phase"),
    [
        ("Never", [0, 0], "Succeeded"),
        ("Never", [0, 1], "Failed"),
        ("OnFailure", [0, 0], "Succeeded"),
        ("Always", [0, 0], "Running"),
    ],
)
def test_phase_once_every_container_exited(policy: str, codes: list[int], phase: str) -> None:
    containers = [exited(code, name=f"c{index}") for index, code in enumerate(codes)]
    status = status_of(facts(*containers), pod(policy))
    assert status["phase"] == phase
    reasons = [s["state"]["terminated"]["reason"] for s in status["containerStatuses"]]
    assert reasons == ["Completed" if code == 0 else "Error" for code in codes]


def test_a_crash_looping_container() -> None:
    crashing = ContainerFacts(
        name="main", image="img", exits=(Exit(1, T0), Exit(1, T1, T0, "boom")), restart_count=3, restart_after_s=40.0
    )
    status = status_of(facts(crashing))
    assert status["phase"] == "Running"
    main = status["containerStatuses"][0]
    assert main["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert main["state"]["waiting"]["message"] == (
        "back-off 40s restarting failed container=main pod=web-1_models(u-1)"
    )
    assert main["lastState"]["terminated"]["message"] == "boom"
    assert main["restartCount"] == 3


@pytest.mark.parametrize(
    ("container", "reason"),
    [
        (
            ContainerFacts(name="main", image="img", config_error='configmap "cfg" not found'),
            "CreateContainerConfigError",
        ),
        (ContainerFacts(name="main", image="img"), "ContainerCreating"),
    ],
)
def test_waiting_reasons_before_a_container_runs(container: ContainerFacts, reason: str) -> None:
    status = status_of(facts(container))
    assert status["phase"] == "Pending"
    assert state(status)["waiting"]["reason"] == reason


def test_a_volume_that_cannot_be_made_is_told_in_the_waiting_message() -> None:
    status = status_of(facts(ContainerFacts(name="main", image="img"), volume_error='configmap "cfg" not found'))
    assert state(status) == {"waiting": {"reason": "ContainerCreating", "message": 'configmap "cfg" not found'}}


def test_a_start_error_is_a_terminated_state() -> None:
    failed = ContainerFacts(name="main", image="img", exits=(Exit(128, T1, T0, "exec 'nope': not found", True),))
    assert state(status_of(facts(failed), pod("Never")))["terminated"]["reason"] == "StartError"


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    first = status_of(facts(running(ready=False)))
    later = podstatus.pod_status(pod(conditions=first["conditions"]), facts(running()), NOW + dt.timedelta(minutes=1))
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times["Initialized"] == "2026-01-01T12:05:00Z"  # unchanged since the first report
    assert times["Ready"] == "2026-01-01T12:06:00Z"  # turned True a minute later


def test_readiness_gates_hold_ready_until_their_condition_is_true() -> None:
    gated = pod(readinessGates=[{"conditionType": "example.com/gate"}])
    assert conditions(status_of(facts(running()), gated))["Ready"] == "False"
    gated["status"]["conditions"] = [{"type": "example.com/gate", "status": "True"}]
    assert conditions(status_of(facts(running()), gated))["Ready"] == "True"


@pytest.mark.parametrize(
    ("file_content", "log", "fallback", "code", "message"),
    [
        (b"digest: abc", b"log line", True, 1, "digest: abc"),
        (b"", b"first\nlast\n", True, 1, "first\nlast"),
        (b"", b"first\nlast\n", False, 1, ""),
        (b"", b"first\nlast\n", True, 0, ""),
        (b"x" * 5000, b"", False, 0, "x" * 4096),
    ],
)
def test_termination_message_from_the_file_else_the_log_on_failure(
    file_content: bytes, log: bytes, fallback: bool, code: int, message: str
) -> None:
    assert podstatus.termination_message(file_content, log, fallback, code) == message


def test_log_tail_is_the_last_80_lines_at_most_2048_bytes() -> None:
    log = b"".join(f"line {index}\n".encode() for index in range(200))
    assert podstatus.tail(log).splitlines()[0] == "line 120"
    assert len(podstatus.tail(b"y" * 10_000)) == 2048
