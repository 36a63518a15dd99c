"""What a kubelet decides while a pod runs, as pure functions: which init container runs next, whether an
exited container restarts and after how long a back-off, and what consecutive probe results amount to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

INITIAL_BACKOFF_S = 10.0  # kubelet's crash-loop back-off: 10 s, doubling, capped at 5 minutes
MAX_BACKOFF_S = 300.0
BACKOFF_RESET_S = 2 * MAX_BACKOFF_S  # a container that ran this long without restarting starts afresh


def restarts(restart_policy: str, exit_code: int, init: bool = False) -> bool:
    """Whether an exited container is started again. An init container that fails is retried unless the
    pod's policy is Never; one that succeeded is done."""
    if init or restart_policy == "OnFailure":
        return exit_code != 0 and restart_policy != "Never"
    return restart_policy == "Always"


@dataclass(frozen=True)
class Backoff:
    """One container's crash-loop back-off: the wait before its next restart, and when it last restarted."""

    delay_s: float
    restarted_at: float


def next_restart(backoff: Backoff | None, exited_at: float) -> tuple[float, Backoff]:
    """When to restart a container that exited at exited_at (a monotonic time), and the back-off after that
    restart. As kubelet: the first restart is immediate, then 10 s, 20 s, 40 s ... up to 5 minutes; a
    container that ran for 10 minutes since its last restart starts over."""
    if backoff is None or exited_at - backoff.restarted_at > BACKOFF_RESET_S:
        return exited_at, Backoff(INITIAL_BACKOFF_S, exited_at)
    restart_at = exited_at + backoff.delay_s
    return restart_at, Backoff(min(backoff.delay_s * 2, MAX_BACKOFF_S), restart_at)


class InitState(Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # exited non-zero; it may be waiting out a back-off before its retry


@dataclass(frozen=True)
class InitStep:
    """Where a pod's initialisation stands."""

    done: bool = False  # every init container succeeded: the containers may start
    failed: bool = False  # one failed under restartPolicy Never: the pod fails
    start: int | None = None  # the index of the init container to start (or restart) now


def init_step(states: Sequence[InitState], restart_policy: str) -> InitStep:
    """Init containers run one at a time, in order; each must succeed before the next starts."""
    for index, state in enumerate(states):
        if state is InitState.SUCCEEDED:
            continue
        if state is InitState.RUNNING:
            return InitStep()
        if state is InitState.FAILED and restart_policy == "Never":
            return InitStep(failed=True)
        return InitStep(start=index)
    return InitStep(done=True)


@dataclass(frozen=True)
class ProbeTally:
    """A probe's result so far: it changes only after enough consecutive successes or failures."""

    result: bool
    successes: int = 0
    failures: int = 0


def tally(previous: ProbeTally, succeeded: bool, success_threshold: int, failure_threshold: int) -> ProbeTally:
    if succeeded:
        successes = previous.successes + 1
        result = True if successes >= success_threshold else previous.result
        return ProbeTally(result, successes=successes)
    failures = previous.failures + 1
    result = False if failures >= failure_threshold else previous.result
    return ProbeTally(result, failures=failures)


def terminated_reason(exit_code: int, start_error: bool = False) -> str:
    if start_error:
        return "StartError"
    return "Completed" if exit_code == 0 else "Error"


def exit_code_of(returncode: int) -> int:
    """A container runtime's exit code: a process killed by signal N exited with 128 + N."""
    return 128 - returncode if returncode < 0 else returncode
