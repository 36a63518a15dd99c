"""Property tests of the rollout state machine: invariants over any spec and any history of passes.

A history is a list of passes; each pass lets time go by, may edit the spec the way a user can (pause,
resume, promote, abort, retry, a new version, a revert), and observes a world that did some of what the last
plan asked (pods Ready or not, canary pods failing) with some analysis verdict.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from canaria import rollout, spec
from canaria.analysis import Assessment, CheckResult, Outcome, Verdict
from canaria.rollout import Observation, Phase, Plan, TrackStatus
from tests.support.manifests import example_model_deployment

T0 = datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.UTC)
UNDER_WAY = (Phase.PROGRESSING, Phase.WAITING, Phase.PAUSED, Phase.PROMOTING)
ENDED_BADLY = (Phase.ROLLED_BACK, Phase.ABORTED)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    strategy = draw(st.sampled_from(["Canary", "Linear", "Immediate"]))
    pauses = st.sampled_from([None, "0s", "5s", "20s"])
    weights = sorted(draw(st.lists(st.integers(1, 99), min_size=1, max_size=4)))
    steps = [{"weight": w, **({"pause": p} if (p := draw(pauses)) else {})} for w in weights]
    step_weight = draw(st.integers(1, 60))
    rollout_spec = {
        "strategy": strategy,
        "steps": steps,
        "stepWeight": step_weight,
        "maxWeight": draw(st.integers(step_weight, 99)),
        "stepInterval": "10s",
        "progressDeadline": "1m",
        "analysis": {
            "interval": draw(st.sampled_from(["5s", "10s"])),
            "failureLimit": draw(st.integers(1, 3)),
            "metrics": draw(st.sampled_from([[], [{"name": "m", "builtin": "ErrorRate", "max": 1}]])),
        },
    }
    mode = draw(st.sampled_from(["Service", "GatewayAPI"]))
    traffic = {"mode": mode, **({"gateway": {"parentRefs": [{"name": "web"}]}} if mode == "GatewayAPI" else {})}
    body = example_model_deployment(
        serving={"replicas": draw(st.integers(1, 4))}, rollout=rollout_spec, traffic=traffic
    )
    return spec.defaulted(body)["spec"]


@dataclass(frozen=True)
class Pass:
    seconds: int  # time since the previous pass
    edit: str
    canary_ready: str  # "all", "some" or "none" of the pods the last plan asked for
    stable_ready: bool
    canary_failing: bool
    verdict: Verdict


EDITS = ["none"] * 6 + ["pause", "resume", "promote", "abort", "retry", "unretry", "new-version", "revert"]
passes = st.builds(
    Pass,
    seconds=st.sampled_from([0, 1, 3, 5, 10, 30, 70]),
    edit=st.sampled_from(EDITS),
    canary_ready=st.sampled_from(["all", "all", "some", "none"]),
    stable_ready=st.booleans(),
    canary_failing=st.sampled_from([False] * 9 + [True]),
    verdict=st.sampled_from([Verdict.PASS, Verdict.PASS, Verdict.FAIL, Verdict.WAIT]),
)


def edited(current: dict[str, Any], edit: str, plan: Plan, new: int) -> dict[str, Any]:
    """The spec after a user's edit; promote, abort and retry name the canary of the last plan."""
    result = copy.deepcopy(current)
    canary_version = plan.state.get("canaryModel", {}).get("version", "")
    controls = result["rollout"]
    if edit in ("pause", "resume"):
        controls["paused"] = edit == "pause"
    elif edit in ("promote", "abort", "retry"):
        controls.pop("promote", None)
        controls.pop("abort", None)
        if canary_version:
            controls[edit] = canary_version
    elif edit == "unretry":
        controls.pop("retry", None)
    elif edit == "new-version":
        result["model"]["version"] = f"{new}.0"
    elif edit == "revert":
        result["model"]["version"] = plan.state["stableModel"]["version"]
    return result


def observed(plan: Plan, step: Pass, analysis_due: bool) -> Observation:
    """The world some time after `plan`: the pods it asked for, Ready or not, and the interval's verdict when
    an analysis is due (the operator queries Prometheus only then)."""
    canary = plan.canary
    canary_status = TrackStatus()
    if canary is not None:
        ready = {"all": canary.replicas, "some": canary.replicas // 2, "none": 0}[step.canary_ready]
        canary_status = TrackStatus(rollout.model_hash(canary.model), ready)
    stable = TrackStatus(rollout.model_hash(plan.stable.model), plan.stable.replicas if step.stable_ready else 0)
    outcome = Outcome.NO_DATA if step.verdict is Verdict.WAIT else Outcome(step.verdict.value)
    check = CheckResult("m", outcome, step.verdict, f"m: {step.verdict}", "q", value=0.5, threshold="<= 1")
    return Observation(
        stable=stable,
        canary=canary_status,
        canary_failure="CrashLoopBackOff" if step.canary_failing else None,
        analysis=Assessment(step.verdict, (check,), check.message) if analysis_due else None,
    )


def run(spec_: dict[str, Any], history: list[Pass], restart_at: int | None = None) -> list[Plan]:
    """Every pass's plan. With `restart_at`, the operator restarts before that pass: it has only status,
    which went through the API as JSON."""
    current = copy.deepcopy(spec_)
    plan = rollout.decide(current, {}, Observation(), T0)
    now = T0
    plans = []
    for index, step in enumerate(history):
        now += datetime.timedelta(seconds=step.seconds)
        current = edited(current, step.edit, plan, new=index + 2)
        state = json.loads(json.dumps(plan.state, allow_nan=False)) if index == restart_at else plan.state
        observation = observed(plan, step, rollout.analysis_due(current, state, now))
        plan = rollout.decide(current, state, observation, now)
        plans.append(plan)
    return plans


def max_weight(spec_: dict[str, Any]) -> int:
    return max((s.weight for s in rollout.rollout_steps(spec_["rollout"])), default=0)


def same_rollout(before: Plan, after: Plan) -> bool:
    keys = ("startedAt", "canaryHash")
    return (
        before.phase in UNDER_WAY
        and after.phase in UNDER_WAY
        and all(before.state.get(k) == after.state.get(k) for k in keys)
    )


common = settings(max_examples=150, deadline=None)


def planned_share(spec_: dict[str, Any], plan: Plan) -> int:
    """The canary's share the plan asks for (status' effective weight is what the world's Ready pods give it)."""
    if plan.route_weights is not None:
        return plan.route_weights["canary"]
    canary_pods = plan.canary.replicas if plan.canary else 0
    return rollout.service_weight(canary_pods, spec_["serving"]["replicas"])


histories = st.lists(passes, min_size=1, max_size=30)


@common
@given(specs(), histories)
def test_weights_never_decrease_within_a_rollout_and_never_exceed_the_highest_step(spec_, history):
    plans = run(spec_, history)
    highest = max_weight(spec_)
    for before, after in itertools.pairwise(plans):
        assert after.requested_weight <= highest
        canary_pods = after.canary.replicas if after.canary else 0
        assert planned_share(spec_, after) <= highest or (spec_["traffic"]["mode"] == "Service" and canary_pods == 1)
        if after.route_weights is not None:
            assert after.route_weights["canary"] <= after.requested_weight or after.phase is Phase.PROMOTING
            assert sum(after.route_weights.values()) == 100
        if same_rollout(before, after):
            assert after.requested_weight >= before.requested_weight
            assert planned_share(spec_, after) >= planned_share(spec_, before)
            if after.route_weights and before.route_weights:
                assert after.route_weights["canary"] >= before.route_weights["canary"]


@common
@given(specs(), histories)
def test_abort_and_rollback_end_at_100_percent_stable_and_never_touch_the_stable_track(spec_, history):
    first = rollout.decide(spec_, {}, Observation(), T0)
    for before, after in itertools.pairwise([first, *run(spec_, history)]):
        # The stable model changes only when a promotion completes (the next rollout may start in that pass).
        if after.state["stableModel"] != before.state["stableModel"]:
            assert before.phase is Phase.PROMOTING and after.state["stableModel"] == before.state["canaryModel"]
        if after.phase is not Phase.PROMOTING:
            assert after.stable == rollout.Track(after.state["stableModel"], spec_["serving"]["replicas"])
        if after.phase in ENDED_BADLY:
            assert after.canary is not None and after.canary.replicas == 0
            assert (after.requested_weight, after.effective_weight) == (0, 0)
            assert after.route_weights in (None, {"stable": 100, "canary": 0})
            assert after.requeue_after is None


@common
@given(specs(), histories)
def test_a_promotion_always_ends_with_one_track_running_the_promoted_version(spec_, history):
    plans = run(spec_, history)
    for before, after in itertools.pairwise(plans):
        if after.phase is Phase.SUCCEEDED and before.phase is not Phase.SUCCEEDED:
            assert before.phase is Phase.PROMOTING
            assert after.canary is None and after.effective_weight == 0
            assert after.stable.model == before.state["canaryModel"]
            assert after.route_weights in (None, {"stable": 100, "canary": 0})


@common
@given(specs(), histories, st.data())
def test_a_restart_at_any_pass_continues_exactly_as_the_uninterrupted_run(spec_, history, data):
    restart = data.draw(st.integers(0, len(history) - 1))
    assert run(spec_, history, restart_at=restart) == run(spec_, history)


@common
@given(specs(), histories)
def test_a_second_pass_in_the_same_world_at_the_same_instant_changes_nothing_and_emits_nothing(spec_, history):
    current = copy.deepcopy(spec_)
    plan = rollout.decide(current, {}, Observation(), T0)
    now = T0
    for index, step in enumerate(history):
        now += datetime.timedelta(seconds=step.seconds)
        current = edited(current, step.edit, plan, new=index + 2)
        world = plan  # the pods as the previous plan left them; they do not change in no time
        plan = rollout.decide(
            current, plan.state, observed(world, step, rollout.analysis_due(current, plan.state, now)), now
        )
        again = rollout.decide(
            current, plan.state, observed(world, step, rollout.analysis_due(current, plan.state, now)), now
        )
        assert again.state == plan.state and again.events == ()
