"""The rollout state machine: why a new model version moves on, waits, is promoted or rolled back.

`decide(spec, state, observation, now) -> Plan` is pure. `state` is status.rollout (plain JSON: everything a
restarted operator needs), `observation` what one pass saw (pods of each track, the interval's analysis
from canaria.analysis), and the Plan says what each track runs and how many pods, the traffic weights,
the Events, and when to look again. `analysis_due` tells the pass whether to query Prometheus first.

The stable track runs `stableModel` from the state, never spec.model directly: spec.model is what the user
wants next, and the stable Deployment changes only by promotion (or when it serves the first version).

Decision table, first match wins (R = spec.serving.replicas, V = the canary's version). Each row: situation
-> next phase [Event type and reason].
  1. no stable version yet (the first version)                -> Serving, spec.model is stable [none]
  2. spec.model equals the stable model (reverted)             -> Serving, canary removed, no analysis
                                                                  [Normal RolloutReverted]
  3. spec.model is new (not the canary) and not Promoting      -> Progressing at step 0, or Promoting if Immediate
                                                                  [Normal RolloutStarted]; while Promoting, the
                                                                  promotion ends first (rows 4, 7, 8), and the new
                                                                  version starts in that same pass
  4. spec.rollout.abort == V, rollout under way                -> Aborted [Warning Aborted]
  5. spec.rollout.promote == V, under way, not Promoting yet   -> Promoting [Normal PromotionStarted]; to promote
                                                                  a rolled-back version, retry it with promote set
  6. RolledBack or Aborted, spec.rollout.retry newly set to V  -> Progressing at step 0, counts reset
                                                                  [Normal RolloutRetried]; else it stays ended
  7. Promoting, the stable track runs V on R Ready pods        -> Succeeded, canary removed [Normal Promoted]
  8. Promoting, no new Ready pod for progressDeadline          -> RolledBack: stable back to its old model
                                                                  [Warning RolledBack]
  9. spec.rollout.paused, or R is 0 (nothing to judge)         -> Paused: weights, analysis and deadline frozen
                                                                  [Normal Paused]; when neither holds any more,
                                                                  clocks shift by the pause [Normal Resumed]
 10. canary pods fail (crash loop, packaging, image pull)      -> RolledBack [Warning RolledBack]
 11. fewer Ready canary pods than the step needs               -> Waiting, reason CanaryNotReady [Normal Waiting]
 12. a check counted Fail failureLimit times in a row          -> RolledBack with each failing check's evidence
                                                                  [Warning RolledBack]
 13. the interval's verdict is Wait (no data, see analysis.py) -> Waiting, reason NoData [Normal Waiting]
 14. Waiting with no progress for progressDeadline             -> RolledBack, reason ProgressDeadlineExceeded
                                                                  [Warning RolledBack]
 15. the pause elapsed and an analysis at or after its end     -> the next step [Normal StepPassed with the checks'
     passed (no checks: the pause elapsed)                        values, StepStarted], or Promoting after the last
                                                                  [Normal StepPassed, PromotionStarted]
Progress, for the deadline: a step or promotion starting, one more ready pod, a Pass or Fail verdict.
A rolled-back or aborted version stays so (canary at zero pods) until spec.model changes or a retry.

Steps. Canary: spec.rollout.steps (pause defaults to stepInterval). Linear: stepWeight, 2 x stepWeight, ...
up to maxWeight, each for stepInterval. Immediate: none, straight to Promoting (a rolling update of the
stable track, no analysis). A step's bake (its pause) starts once the canary has all the step's pods Ready;
analyses run every analysis.interval from then, plus one at the end of the bake; the step ends at the first
analysis at or after the bake's end that passes. Traffic moves only to Ready pods (GatewayAPI: the route
keeps the previous step's weight until the step's canary pods are Ready).

Traffic (see canary_replicas): GatewayAPI mode splits exactly by the HTTPRoute's weights; the canary runs
ceil(weight x R / 100) pods, and once a step's bake starts, already the next step's (they start while the
route still holds them out, so the next step need not wait for them). Service mode splits by pod count:
the stable track keeps R pods until promotion and the canary gets the pod count c whose share c / (c + R) is
closest to the step's weight, with 1 <= c <= 4 R and no share above the last step's weight unless c = 1. The
effective weight (in status beside the requested one: the Ready canary pods' share of all Ready pods, so it
grows as a step's pods become Ready) is therefore, once they are, one of a few values (R = 2: 33, 50, 60,
67, 71, 75, 78, 80 %): it differs from the requested weight by at most half the gap between two neighbours,
except below the one-pod share or above the 4 R cap. The share is an average over requests spread evenly over
Ready pods.

Promotion never leaves a capacity gap: the stable track rolls to V (its Deployment adds a pod before it
removes one) while the canary keeps its pods and weight; the canary goes only once R stable pods run V.

Control fields read here: spec.rollout.paused, promote, abort; spec.rollout.retry and progressDeadline are
read when present (not yet in the CRD: retry acts once each time it is set to V; progressDeadline defaults
to DEFAULT_PROGRESS_DEADLINE).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from dataclasses import dataclass, field, replace
from enum import StrEnum
from fractions import Fraction
from typing import Any

from canaria.analysis import Assessment, Verdict, checks_of, duration_seconds

Object = dict[str, Any]

STABLE, CANARY = "stable", "canary"
DEFAULT_PROGRESS_DEADLINE = "10m"
SERVICE_MODE_CANARY_PODS_PER_STABLE_POD = 4  # Service mode never runs more canary pods than this times R
HISTORY_LIMIT = 20  # verdicts of the current step kept in status


class Phase(StrEnum):
    SERVING = "Serving"  # no rollout: the stable version takes all traffic
    PROGRESSING = "Progressing"  # a canary takes its step's share of traffic and is analysed
    WAITING = "Waiting"  # a step holds: canary pods not Ready, or no data; the progress deadline runs
    PAUSED = "Paused"  # spec.rollout.paused: weights, analysis and deadline frozen
    PROMOTING = "Promoting"  # the stable track rolls to the canary's version; the canary serves until it is done
    SUCCEEDED = "Succeeded"  # the last rollout promoted its version: one track, which serves everything
    ROLLED_BACK = "RolledBack"  # the canary failed (analysis, deadline, pods): 100 % stable, canary at zero pods
    ABORTED = "Aborted"  # spec.rollout.abort named the canary: 100 % stable, canary at zero pods


UNDER_WAY = (Phase.PROGRESSING, Phase.WAITING, Phase.PAUSED, Phase.PROMOTING)
ENDED_BADLY = (Phase.ROLLED_BACK, Phase.ABORTED)
NOT_READY = "CanaryNotReady"


def model_hash(model: Object) -> str:
    return hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:16]


# -- time: status keeps RFC 3339 UTC with milliseconds, so a replay from status computes the same ----------


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def _seconds(delta: datetime.timedelta) -> float:
    return round(delta.total_seconds(), 3)


# -- the state in status.rollout ----------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    phase: Phase = Phase.SERVING
    stable_model: Object | None = None
    canary_model: Object | None = None
    started_at: str | None = None  # when this rollout (or its retry) began
    step: int = 0
    step_started_at: str | None = None  # None: held before the step (paused since the rollout began)
    bake_started_at: str | None = None  # when the step's canary pods were all Ready
    traffic_weight: int = 0  # the canary's route weight: the weight of the last step whose bake started
    progress_at: str | None = None  # last progress, for the deadline
    ready_seen: int = 0  # most ready pods seen while waiting for them (canary, or stable while promoting)
    paused_at: str | None = None
    last_analysis_at: str | None = None
    last_verdict: str | None = None  # of this step
    failures: dict[str, int] = field(default_factory=dict)  # consecutive failures per check
    checks: list[Object] = field(default_factory=list)  # the last analysis' evidence per check
    history: list[Object] = field(default_factory=list)  # this step's verdicts
    reason: str = ""  # why it waits or ended
    message: str = ""
    retried: str | None = None  # spec.rollout.retry as last seen: a retry acts when it changes to V

    def to_dict(self) -> Object:
        """JSON for status.rollout: camelCase, empty fields left out (as the API server returns them)."""
        result: Object = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value:  # None, "", 0, [] and {} are the defaults from_dict restores
                result[_camel(item.name)] = value
        if self.canary_model is not None:
            result["canaryHash"] = model_hash(self.canary_model)  # shown to users; derived, not read back
        return json.loads(json.dumps(result))

    @classmethod
    def from_dict(cls, data: Object) -> State:
        values = {item.name: data[_camel(item.name)] for item in dataclasses.fields(cls) if _camel(item.name) in data}
        if "phase" in values:
            values["phase"] = Phase(values["phase"])
        return cls(**values)

    @property
    def version(self) -> str:
        return str((self.canary_model or {}).get("version", ""))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# -- observation and plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackStatus:
    model_hash: str = ""  # model_hash() of the model the track's Deployment runs ("" when it has none)
    ready: int = 0  # its Ready pods running that model (a Deployment mid-update: the updated ones)


@dataclass(frozen=True)
class Observation:
    stable: TrackStatus = TrackStatus()
    canary: TrackStatus = TrackStatus()
    canary_failure: str | None = None  # why the canary's pods will not become Ready (crash loop, ...), if so
    analysis: Assessment | None = None  # this interval's, when analysis_due() said to run one


@dataclass(frozen=True)
class Track:
    model: Object
    replicas: int


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    state: Object  # the new status.rollout
    phase: Phase
    stable: Track
    canary: Track | None  # None: no canary Deployment
    requested_weight: int  # the step's weight
    effective_weight: int  # the canary's share once the plan's pods are Ready (Service mode: by pod count)
    route_weights: dict[str, int] | None  # the HTTPRoute's backend weights (GatewayAPI mode), else None
    events: tuple[Event, ...]
    requeue_after: float | None  # seconds until something is due (a step, an analysis, a deadline)
    message: str


# -- steps and weights (pure arithmetic) -----------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    weight: int
    pause_s: float


def rollout_steps(rollout: Object) -> list[Step]:
    interval = duration_seconds(rollout["stepInterval"])
    if rollout["strategy"] == "Canary":
        return [Step(s["weight"], duration_seconds(s["pause"]) if "pause" in s else interval) for s in rollout["steps"]]
    if rollout["strategy"] == "Linear":
        weights = [*range(rollout["stepWeight"], rollout["maxWeight"], rollout["stepWeight"]), rollout["maxWeight"]]
        return [Step(weight, interval) for weight in weights]
    return []  # Immediate


def service_weight(canary: int, stable: int) -> int:
    """The canary's percent of requests when both tracks' pods share one Service (rounded half up)."""
    total = canary + stable
    return 0 if total == 0 else (200 * canary + total) // (2 * total)


def service_canary_replicas(weight: int, stable: int, max_weight: int) -> int:
    """Canary pods beside `stable` pods whose share is closest to `weight` (ties: fewer pods), at least one,
    at most SERVICE_MODE_CANARY_PODS_PER_STABLE_POD x stable, and no share above `max_weight` but for one pod."""
    if weight <= 0 or stable <= 0:
        return 0
    allowed = [
        c
        for c in range(1, SERVICE_MODE_CANARY_PODS_PER_STABLE_POD * stable + 1)
        if c == 1 or Fraction(100 * c, c + stable) <= max_weight
    ]
    return min(allowed, key=lambda c: (abs(Fraction(100 * c, c + stable) - weight), c))


def gateway_canary_replicas(weight: int, stable: int) -> int:
    """Canary pods for `weight` percent of the traffic `stable` pods serve in full (as Argo Rollouts)."""
    return 0 if weight <= 0 or stable <= 0 else max(1, -(-weight * stable // 100))


def canary_replicas(spec: Object, weight: int) -> int:
    replicas = spec["serving"]["replicas"]
    if spec["traffic"]["mode"] == "GatewayAPI":
        return gateway_canary_replicas(weight, replicas)
    steps = rollout_steps(spec["rollout"])
    return service_canary_replicas(weight, replicas, max((s.weight for s in steps), default=weight))


def target_weight(spec: Object, state: State) -> int:
    """The weight the canary's pods are sized for: the current step's, once it began."""
    steps = rollout_steps(spec["rollout"])
    if state.phase not in UNDER_WAY or state.step_started_at is None or not steps:
        return 0
    return steps[min(state.step, len(steps) - 1)].weight


# -- timing ---------------------------------------------------------------------------------------------------


def _deadline(spec: Object, state: State) -> datetime.datetime | None:
    if state.progress_at is None:
        return None
    seconds = duration_seconds(spec["rollout"].get("progressDeadline", DEFAULT_PROGRESS_DEADLINE))
    return _at(state.progress_at) + datetime.timedelta(seconds=seconds)


def _bake_end(spec: Object, state: State) -> datetime.datetime | None:
    steps = rollout_steps(spec["rollout"])
    if state.bake_started_at is None or state.step >= len(steps):
        return None
    return _at(state.bake_started_at) + datetime.timedelta(seconds=steps[state.step].pause_s)


def _next_analysis_at(spec: Object, state: State) -> datetime.datetime | None:
    bake_end = _bake_end(spec, state)
    if bake_end is None or not checks_of(spec["rollout"]["analysis"]):
        return None
    base = _at(state.last_analysis_at or state.bake_started_at or "")
    due = base + datetime.timedelta(seconds=duration_seconds(spec["rollout"]["analysis"]["interval"]))
    return min(due, bake_end) if base < bake_end else due


def analysis_due(spec: Object, state: Object, now: datetime.datetime) -> bool:
    """Whether this pass should query Prometheus for decide(): an analysis of the step is due by the clock.
    (decide() uses it only if the step's canary pods are all Ready.)"""
    current = State.from_dict(state)
    if current.phase not in (Phase.PROGRESSING, Phase.WAITING):
        return False
    due = _next_analysis_at(spec, current)
    return due is not None and _at(_iso(now)) >= due


def _requeue_after(spec: Object, state: State, now: datetime.datetime) -> float | None:
    times = []
    if state.phase in (Phase.PROGRESSING, Phase.WAITING) and state.reason != NOT_READY:
        times.append(_next_analysis_at(spec, state) or _bake_end(spec, state))
    if state.phase in (Phase.WAITING, Phase.PROMOTING):
        times.append(_deadline(spec, state))
    known = [moment for moment in times if moment is not None]
    return max(0.0, _seconds(min(known) - now)) if known else None


# -- the decision ----------------------------------------------------------------------------------------------


def decide(spec: Object, state: Object, observation: Observation, now: datetime.datetime) -> Plan:
    """The next rollout state and what the tracks should run, from the defaulted spec, status.rollout,
    what this pass observed, and the time."""
    now = _at(_iso(now))  # status keeps milliseconds: decide as a pass replayed from status would
    run = _Pass(spec, observation, now, analysis_due(spec, state, now))
    new = run.transition(State.from_dict(state))
    return run.plan(new)


def unchanged(spec: Object, state: Object, now: datetime.datetime) -> Plan:
    """The plan of a pass that must not move the rollout: spec.model names a PVC or Secret that does not exist,
    so nothing is applied and no version starts, steps or ends until it does (the stable track keeps
    serving). The first version, with nothing serving yet, is decided as usual."""
    current = State.from_dict(state)
    if current.stable_model is None:
        return decide(spec, state, Observation(), now)
    run = _Pass(spec, Observation(), _at(_iso(now)), analysis_due=False)
    return replace(run.plan(current), requeue_after=None)


def hold_reason(spec: Object) -> str:
    """Why a rollout must hold, if it must: the user paused it, or nothing serves (so nothing to judge)."""
    if spec["rollout"]["paused"]:
        return "spec.rollout.paused"
    return "" if spec["serving"]["replicas"] else "spec.serving.replicas is 0"


def consecutive_failures(old: dict[str, int], assessment: Assessment) -> dict[str, int]:
    """Failures in a row per check: a Fail adds one, a Pass resets, a Wait leaves the count as it was."""
    counts = {}
    for check in assessment.checks:
        before = old.get(check.name, 0)
        counts[check.name] = {Verdict.FAIL: before + 1, Verdict.PASS: 0}.get(check.counted, before)
    return counts


class _Pass:
    """One decision: the table of the module's docstring, in order. Collects the Events it causes."""

    def __init__(self, spec: Object, observation: Observation, now: datetime.datetime, analysis_due: bool) -> None:
        self.spec, self.rollout, self.observation = spec, spec["rollout"], observation
        self.now, self.stamp, self.analysis_due = now, _iso(now), analysis_due
        self.replicas: int = spec["serving"]["replicas"]
        self.gateway = spec["traffic"]["mode"] == "GatewayAPI"
        self.held = hold_reason(spec)
        self.events: list[Event] = []

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def transition(self, state: State) -> State:
        model, retry = self.spec["model"], self.rollout.get("retry")
        retry_set = retry is not None and retry != state.retried
        state = replace(state, retried=retry)
        wanted = model_hash(model)
        if state.stable_model is None:
            return State(stable_model=model, retried=retry)
        if wanted == model_hash(state.stable_model):
            if state.phase in UNDER_WAY or state.phase in ENDED_BADLY:
                self.event(
                    "Normal",
                    "RolloutReverted",
                    f"spec.model is the stable version {model['version']} "
                    f"again: the rollout of version {state.version} ends, canary removed",
                )
                return State(stable_model=state.stable_model, retried=retry)
            return state
        new_version = state.canary_model is None or model_hash(state.canary_model) != wanted
        if new_version and state.phase is not Phase.PROMOTING:
            return self.controls(self.start(state, model, "RolloutStarted"), retry_set=False)
        decided = self.controls(state, retry_set)
        if new_version and decided.phase is not Phase.PROMOTING:
            return self.transition(decided)  # the promotion is over, either way: the version edited in starts now
        return decided

    def controls(self, state: State, retry_set: bool) -> State:
        version = state.version
        if self.rollout.get("abort") == version and state.phase in UNDER_WAY:
            return self.end(state, Phase.ABORTED, "Aborted", f"spec.rollout.abort is {version}")
        # Only a rollout under way: a promotion rolled back at its deadline must not start again by itself.
        if self.rollout.get("promote") == version and state.phase in (Phase.PROGRESSING, Phase.WAITING, Phase.PAUSED):
            return self.promote(state, f"spec.rollout.promote is {version}: promoted without further steps or analysis")
        if state.phase in ENDED_BADLY:
            if retry_set and self.rollout.get("retry") == version:
                return self.controls(self.start(state, state.canary_model or {}, "RolloutRetried"), retry_set=False)
            return state
        if state.phase is Phase.PROMOTING:
            return self.promoting(state)
        if state.phase not in UNDER_WAY:
            return state
        if self.held:
            if state.phase is Phase.PAUSED:
                return state
            self.event(
                "Normal",
                "Paused",
                f"{self.held}: the rollout of version {version} holds at step {state.step + 1}; traffic stays as it is",
            )
            return replace(state, phase=Phase.PAUSED, paused_at=self.stamp)
        if state.phase is Phase.PAUSED:
            state = self.resume(state)
        if self.observation.canary_failure:
            return self.end(state, Phase.ROLLED_BACK, "CanaryFailing", self.observation.canary_failure)
        return self.progress(state)

    # -- transitions --

    def start(self, state: State, model: Object, reason: str) -> State:
        steps = rollout_steps(self.rollout)
        immediate = not steps
        replaced = f" (replaces the canary of version {state.version})" if state.phase in UNDER_WAY else ""
        how = "a rolling update, no analysis" if immediate else f"{len(steps)} steps up to {steps[-1].weight}%"
        held = f" (held: {self.held})" if self.held and not immediate else ""
        self.event("Normal", reason, f"version {model['version']} rolls out{replaced}: {how}{held}")
        paused = bool(self.held) and not immediate
        return State(
            phase=Phase.PROMOTING if immediate else Phase.PAUSED if paused else Phase.PROGRESSING,
            stable_model=state.stable_model,
            canary_model=model,
            started_at=self.stamp,
            step_started_at=None if paused else self.stamp,
            progress_at=self.stamp,
            paused_at=self.stamp if paused else None,
            retried=state.retried,
        )

    def resume(self, state: State) -> State:
        """Continue where the pause left off: every clock of the step moves on by the pause's length."""
        pause = self.now - _at(state.paused_at or self.stamp)

        def shifted(stamp: str | None) -> str | None:
            return None if stamp is None else _iso(_at(stamp) + pause)

        self.event("Normal", "Resumed", f"the rollout of version {state.version} continues at step {state.step + 1}")
        return replace(
            state,
            phase=Phase.PROGRESSING,
            paused_at=None,
            step_started_at=shifted(state.step_started_at) or self.stamp,
            bake_started_at=shifted(state.bake_started_at),
            last_analysis_at=shifted(state.last_analysis_at),
            progress_at=shifted(state.progress_at),
            reason="",
            message="",
        )

    def promote(self, state: State, why: str) -> State:
        self.event("Normal", "PromotionStarted", f"version {state.version}: {why}; the stable track rolls to it")
        return replace(
            state, phase=Phase.PROMOTING, progress_at=self.stamp, ready_seen=0, paused_at=None, reason="", message=""
        )

    def promoting(self, state: State) -> State:
        stable = self.observation.stable
        running = stable.ready if stable.model_hash == model_hash(state.canary_model or {}) else 0
        if running >= self.replicas:
            self.event("Normal", "Promoted", f"version {state.version} is stable: {running} pods serve it")
            return State(phase=Phase.SUCCEEDED, stable_model=state.canary_model, retried=state.retried)
        if running > state.ready_seen:
            return replace(state, ready_seen=running, progress_at=self.stamp)
        deadline = _deadline(self.spec, state)
        if deadline is not None and self.now >= deadline:
            return self.end(
                state,
                Phase.ROLLED_BACK,
                "ProgressDeadlineExceeded",
                f"the stable track had {running} "
                f"of {self.replicas} pods of version {state.version} ready after "
                f"{self.rollout.get('progressDeadline', DEFAULT_PROGRESS_DEADLINE)} without progress",
            )
        return state

    def progress(self, state: State) -> State:
        steps = rollout_steps(self.rollout)
        if state.step >= len(steps):  # the steps were shortened under it
            return self.promote(state, "all steps passed")
        step = steps[state.step]
        wanted = canary_replicas(self.spec, step.weight)
        ready = self.canary_ready(state)
        if ready < wanted:
            if ready > state.ready_seen:
                state = replace(state, ready_seen=ready, progress_at=self.stamp)
            return self.wait(state, NOT_READY, f"{ready} of {wanted} pods of canary version {state.version} Ready")
        if state.bake_started_at is None:
            state = replace(
                state, bake_started_at=self.stamp, traffic_weight=step.weight, progress_at=self.stamp, ready_seen=ready
            )
            self.event(
                "Normal",
                "StepStarted",
                f"step {state.step + 1} of {len(steps)}: version {state.version} "
                f"takes {step.weight}% of requests ({self.effective(state)}% effective) for "
                f"{step.pause_s:g}s",
            )
        metrics = checks_of(self.rollout["analysis"])
        if metrics and self.analysis_due and self.observation.analysis is not None:
            state = self.record(state, self.observation.analysis)
            limit = self.rollout["analysis"]["failureLimit"]
            failing = [check for check in state.checks if state.failures.get(check["name"], 0) >= limit]
            if failing:
                evidence = "; ".join(check["message"] for check in failing)
                return self.end(
                    state, Phase.ROLLED_BACK, "AnalysisFailed", f"failed {limit} times in a row: {evidence}"
                )
        if state.last_verdict == Verdict.WAIT:
            return self.wait(state, "NoData", "; ".join(c["message"] for c in state.checks if c["counted"] == "Wait"))
        state = replace(state, phase=Phase.PROGRESSING, reason="", message="")
        bake_end = _bake_end(self.spec, state)
        assert bake_end is not None  # the bake started above
        judged_after_bake = state.last_analysis_at is not None and _at(state.last_analysis_at) >= bake_end
        if self.now < bake_end or (metrics and not (judged_after_bake and state.last_verdict == Verdict.PASS)):
            return state
        passed = "; ".join(check["message"] for check in state.checks) if metrics else f"{step.pause_s:g}s elapsed"
        self.event("Normal", "StepPassed", f"step {state.step + 1} of {len(steps)} passed: {passed}")
        if state.step + 1 < len(steps):
            following = replace(
                state,
                step=state.step + 1,
                step_started_at=self.stamp,
                bake_started_at=None,
                progress_at=self.stamp,
                last_analysis_at=None,
                last_verdict=None,
                history=[],
            )
            return self.progress(following)  # its pods may be Ready already: its bake starts now
        return self.promote(state, f"all {len(steps)} steps passed")

    def record(self, state: State, assessment: Assessment) -> State:
        if assessment.verdict != state.last_verdict:
            type_ = "Warning" if assessment.verdict is Verdict.FAIL else "Normal"
            self.event(type_, f"Analysis{assessment.verdict}", assessment.message or "every check passed")
        conclusive = assessment.verdict in (Verdict.PASS, Verdict.FAIL)
        return replace(
            state,
            last_analysis_at=self.stamp,
            last_verdict=str(assessment.verdict),
            failures=consecutive_failures(state.failures, assessment),
            checks=[check.evidence() for check in assessment.checks],
            history=[*state.history, {"at": self.stamp, "verdict": str(assessment.verdict)}][-HISTORY_LIMIT:],
            progress_at=self.stamp if conclusive else state.progress_at,
        )

    def wait(self, state: State, reason: str, message: str) -> State:
        deadline = _deadline(self.spec, state)
        if deadline is not None and self.now >= deadline:
            limit = self.rollout.get("progressDeadline", DEFAULT_PROGRESS_DEADLINE)
            return self.end(state, Phase.ROLLED_BACK, "ProgressDeadlineExceeded", f"no progress for {limit}: {message}")
        if (state.phase, state.reason) != (Phase.WAITING, reason):
            self.event("Normal", "Waiting", f"version {state.version}, step {state.step + 1}: {message}")
        return replace(state, phase=Phase.WAITING, reason=reason, message=message)

    def end(self, state: State, phase: Phase, reason: str, message: str) -> State:
        outcome = "rolled back" if phase is Phase.ROLLED_BACK else "aborted"
        self.event(
            "Warning",
            str(phase),
            f"version {state.version} {outcome} ({reason}): {message}; all traffic goes to the stable version",
        )
        return replace(
            state,
            phase=phase,
            reason=reason,
            message=message,
            traffic_weight=0,
            step_started_at=None,
            bake_started_at=None,
            paused_at=None,
            ready_seen=0,
        )

    # -- the plan --

    def effective(self, state: State) -> int:
        """The canary's share of requests now: the route's weight (GatewayAPI), or its Ready pods' share of all
        Ready pods of both tracks (Service mode: a step's pods take their share as they become Ready). While
        promoting, the stable track's pods change version under it: the last step's share, as planned."""
        if self.gateway:
            return state.traffic_weight
        if state.phase is Phase.PROMOTING:
            return service_weight(canary_replicas(self.spec, target_weight(self.spec, state)), self.replicas)
        return service_weight(self.canary_ready(state), self.observation.stable.ready)

    def canary_ready(self, state: State) -> int:
        """The canary track's Ready pods running the rollout's canary model (not an older canary's)."""
        canary = self.observation.canary
        return canary.ready if canary.model_hash == model_hash(state.canary_model or {}) else 0

    def canary_pods(self, state: State, requested: int) -> int:
        """The step's canary pods. GatewayAPI mode starts the next step's pods once this step's bake runs: they
        take no requests until the route moves, and the next step then begins without waiting for pods to
        start. (Service mode cannot: there a pod is a share of the requests.)"""
        pods = canary_replicas(self.spec, requested)
        steps = rollout_steps(self.rollout)
        if self.gateway and state.bake_started_at is not None and state.step + 1 < len(steps):
            pods = max(pods, canary_replicas(self.spec, steps[state.step + 1].weight))
        return pods

    def plan(self, state: State) -> Plan:
        stable_model = state.canary_model if state.phase is Phase.PROMOTING else state.stable_model
        assert stable_model is not None
        requested = target_weight(self.spec, state)
        canary: Track | None = None
        if state.canary_model is not None and state.phase in ENDED_BADLY:
            canary = Track(state.canary_model, 0)
        elif state.canary_model is not None and state.phase in UNDER_WAY and requested > 0:
            canary = Track(state.canary_model, self.canary_pods(state, requested))
        return Plan(
            state=state.to_dict(),
            phase=state.phase,
            stable=Track(stable_model, self.replicas),
            canary=canary,
            requested_weight=requested,
            effective_weight=self.effective(state) if canary and canary.replicas else 0,
            route_weights={STABLE: 100 - state.traffic_weight, CANARY: state.traffic_weight} if self.gateway else None,
            events=tuple(self.events),
            requeue_after=_requeue_after(self.spec, state, self.now),
            message=describe(state, requested),
        )


def describe(state: State, requested: int) -> str:
    """One line for status.message."""
    version = state.version
    if state.phase is Phase.PROGRESSING:
        return f"version {version}: step {state.step + 1} at {requested}%"
    if state.phase in (Phase.WAITING, Phase.ROLLED_BACK, Phase.ABORTED):
        words = {Phase.WAITING: "waiting", Phase.ROLLED_BACK: "rolled back", Phase.ABORTED: "aborted"}[state.phase]
        return f"version {version} {words} ({state.reason}): {state.message}"
    if state.phase is Phase.PAUSED:
        return f"version {version}: paused at step {state.step + 1} (spec.rollout.paused)"
    if state.phase is Phase.PROMOTING:
        return f"version {version}: promoting, the stable track rolls to it"
    return f"version {(state.stable_model or {}).get('version', '')} serves all traffic"
