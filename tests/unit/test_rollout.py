"""The rollout state machine, row by row of its decision table, and its weight arithmetic."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from canaria import rollout, spec
from canaria.analysis import Assessment, CheckResult, Outcome, Verdict
from canaria.rollout import Observation, Phase, Plan, TrackStatus
from tests.support.manifests import example_model_deployment

T0 = datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.UTC)


def make_spec(**sections: Any) -> dict[str, Any]:
    """A defaulted spec: 2 stable pods, steps 10 % and 50 % of 30 s each, analysis every 10 s."""
    base = {
        "serving": {"replicas": 2},
        "rollout": {"steps": [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "30s"}]},
    }
    merged = {key: {**base.get(key, {}), **sections.get(key, {})} for key in {*base, *sections}}
    merged["rollout"].setdefault(
        "analysis", {"interval": "10s", "metrics": [{"name": "error-rate", "builtin": "ErrorRate", "max": 1}]}
    )
    return spec.defaulted(example_model_deployment(**merged))["spec"]


def version(spec_: dict[str, Any], number: str) -> dict[str, Any]:
    edited = copy.deepcopy(spec_)
    edited["model"]["version"] = number
    return edited


def assessment(verdict: Verdict, name: str = "error-rate", message: str = "") -> Assessment:
    outcome = {Verdict.PASS: Outcome.PASS, Verdict.FAIL: Outcome.FAIL, Verdict.WAIT: Outcome.NO_DATA}[verdict]
    text = message or f"{name}: {verdict}"
    check = CheckResult(name, outcome, verdict, text, "q", value=1.0, threshold="<= 1")
    return Assessment(verdict, (check,), text)


PASS, FAIL, WAIT = (assessment(v) for v in (Verdict.PASS, Verdict.FAIL, Verdict.WAIT))


class Run:
    """A ModelDeployment's rollout over time. By default the world does what the last plan asked: every
    planned pod becomes Ready at once. Each call to `at` is one reconcile pass."""

    def __init__(self, spec_: dict[str, Any]) -> None:
        self.spec = spec_
        self.plan = rollout.decide(spec_, {}, Observation(), T0)
        self.state = self.plan.state

    def world(self) -> Observation:
        stable, canary = self.plan.stable, self.plan.canary
        return Observation(
            stable=TrackStatus(rollout.model_hash(stable.model), stable.replicas),
            canary=TrackStatus(rollout.model_hash(canary.model), canary.replicas) if canary else TrackStatus(),
        )

    def at(self, seconds: float, spec_: dict[str, Any] | None = None, **observed: Any) -> Plan:
        """One pass `seconds` after T0; `observed` replaces fields of the world's observation."""
        self.spec = spec_ or self.spec
        now = T0 + datetime.timedelta(seconds=seconds)
        observation = self.world()
        fields = {"stable": observation.stable, "canary": observation.canary, **observed}
        self.plan = rollout.decide(self.spec, self.state, Observation(**fields), now)
        self.state = self.plan.state
        return self.plan

    def plan_events_text(self, reason: str) -> list[str]:
        return [event.message for event in self.plan.events if event.reason == reason]

    def due(self, seconds: float) -> bool:
        return rollout.analysis_due(self.spec, self.state, T0 + datetime.timedelta(seconds=seconds))


def reasons(plan: Plan) -> list[str]:
    return [event.reason for event in plan.events]


def shipped(spec_: dict[str, Any] | None = None, number: str = "2.0") -> Run:
    """Version 1.0 serving, then `number` shipped at t=1 s with its canary pods Ready at t=2 s."""
    run = Run(spec_ or make_spec())
    plan = run.at(1, version(run.spec, number), canary=TrackStatus())
    assert plan.phase is Phase.WAITING and reasons(plan) == ["RolloutStarted", "Waiting"]
    plan = run.at(2)
    assert plan.phase is Phase.PROGRESSING and reasons(plan) == ["StepStarted"]
    return run


# -- first version and the happy path ------------------------------------------------------------------


def test_the_first_version_is_stable_at_once_with_one_track():
    run = Run(make_spec())
    assert run.plan.phase is Phase.SERVING and run.plan.events == ()
    assert run.plan.stable == rollout.Track(run.spec["model"], 2) and run.plan.canary is None
    assert (run.plan.requested_weight, run.plan.effective_weight, run.plan.requeue_after) == (0, 0, None)
    assert run.state == {"phase": "Serving", "stableModel": run.spec["model"]}


def test_a_new_version_goes_through_every_step_on_passing_analyses_and_is_promoted():
    run = Run(make_spec())
    v1, v2 = run.spec["model"], version(run.spec, "2.0")["model"]
    plan = run.at(1, version(run.spec, "2.0"), canary=TrackStatus())
    assert (plan.phase, plan.state["reason"]) == (Phase.WAITING, "CanaryNotReady")
    assert plan.stable == rollout.Track(v1, 2) and plan.canary == rollout.Track(v2, 1)
    assert (plan.requested_weight, plan.effective_weight) == (10, 0)  # its one pod is not Ready: no share yet
    assert plan.requeue_after == 600  # the progress deadline; pod events come sooner
    assert run.at(2).phase is Phase.PROGRESSING and run.plan.requeue_after == 10
    assert not run.due(11.999) and run.due(12)
    for t in (12, 22):
        assert run.at(t, analysis=PASS).phase is Phase.PROGRESSING and run.plan.requeue_after == 10
    plan = run.at(32, analysis=PASS)  # the bake's end: the next step, whose pods are not there yet
    assert (plan.phase, plan.requested_weight, plan.canary) == (Phase.WAITING, 50, rollout.Track(v2, 2))
    assert run.state["step"] == 1 and reasons(plan) == ["StepPassed", "Waiting"]
    assert plan.effective_weight == 33, "step 1's pod still takes its share while step 2's start"
    assert run.plan_events_text("StepPassed") == ["step 1 of 2 passed: error-rate: Pass"]
    plan = run.at(33)
    assert reasons(plan) == ["StepStarted"] and plan.effective_weight == 50
    assert plan.message == "version 2.0: step 2 at 50%"
    for t in (43, 53):
        run.at(t, analysis=PASS)
    plan = run.at(63, analysis=PASS)
    assert plan.phase is Phase.PROMOTING and reasons(plan) == ["StepPassed", "PromotionStarted"]
    assert plan.stable == rollout.Track(v2, 2) and plan.canary == rollout.Track(v2, 2)  # no capacity gap
    plan = run.at(64, stable=TrackStatus(rollout.model_hash(v2), 1))  # one new stable pod of two
    assert plan.phase is Phase.PROMOTING and plan.canary is not None
    plan = run.at(65)
    assert plan.phase is Phase.SUCCEEDED and reasons(plan) == ["Promoted"]
    assert plan.stable == rollout.Track(v2, 2) and plan.canary is None and plan.effective_weight == 0
    assert run.state == {"phase": "Succeeded", "stableModel": v2}


def test_analysis_before_it_is_due_is_ignored():
    run = shipped()
    run.at(5, analysis=FAIL)
    assert "failures" not in run.state and "lastVerdict" not in run.state


def test_a_pass_with_nothing_due_changes_nothing_and_emits_nothing():
    run = shipped()
    before = run.state
    plan = run.at(7)
    assert plan.state == before and plan.events == ()
    assert run.at(7).state == before  # and the same pass again


def test_an_analysis_at_the_end_of_a_bake_shorter_than_the_interval():
    spec_ = make_spec(
        rollout={
            "steps": [{"weight": 20, "pause": "5s"}],
            "analysis": {"interval": "1m", "metrics": [{"name": "e", "query": "x", "max": 1}]},
        }
    )
    run = shipped(spec_)
    assert run.plan.requeue_after == 5 and run.due(7)
    assert run.at(7, analysis=PASS).phase is Phase.PROMOTING


def test_without_checks_a_step_ends_when_its_pause_does():
    run = shipped(make_spec(rollout={"analysis": {"metrics": []}}))
    assert run.plan.requeue_after == 30 and not run.due(40)
    assert run.at(32).state["step"] == 1


# -- rollback --------------------------------------------------------------------------------------------


def assert_rolled_back(plan: Plan, stable_model: dict[str, Any], reason: str) -> None:
    assert (plan.phase, plan.state["reason"]) == (Phase.ROLLED_BACK, reason)
    assert plan.stable == rollout.Track(stable_model, 2)
    assert plan.canary is not None and plan.canary.replicas == 0
    assert (plan.requested_weight, plan.effective_weight, plan.requeue_after) == (0, 0, None)
    assert [(e.type, e.reason) for e in plan.events][-1] == ("Warning", "RolledBack")


def test_failure_limit_consecutive_failures_roll_back_with_the_evidence():
    run = shipped()
    v1 = run.state["stableModel"]
    bad = assessment(Verdict.FAIL, message="error-rate: 12.5 is not <= 1")
    plan = run.at(12, analysis=bad)
    assert plan.phase is Phase.PROGRESSING and plan.state["failures"] == {"error-rate": 1}
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "AnalysisFail")]
    plan = run.at(22, analysis=bad)
    assert_rolled_back(plan, v1, "AnalysisFailed")
    assert "failed 2 times in a row: error-rate: 12.5 is not <= 1" in plan.state["message"]
    assert plan.message.startswith("version 2.0 rolled back (AnalysisFailed): failed 2 times in a row")
    assert plan.state["checks"][0]["value"] == 1.0 and plan.state["checks"][0]["threshold"] == "<= 1"
    assert "12.5 is not <= 1" in plan.events[-1].message
    later = run.at(500, analysis=PASS)  # stays rolled back: nothing is due, nothing changes
    assert later.state == plan.state and later.events == ()


def test_a_pass_between_failures_resets_the_count():
    run = shipped()
    for t, result in ((12, FAIL), (22, PASS), (32, FAIL)):
        plan = run.at(t, analysis=result)
    assert plan.phase is Phase.PROGRESSING and plan.state["failures"] == {"error-rate": 1}
    assert plan.state.get("step", 0) == 0  # the bake's end was judged Fail: the step holds
    assert [h["verdict"] for h in plan.state["history"]] == ["Fail", "Pass", "Fail"]


def test_no_data_waits_says_so_and_rolls_back_at_the_progress_deadline():
    run = shipped()
    waiting = assessment(Verdict.WAIT, message="error-rate: no data (noData: Wait): fewer than minRequests")
    plan = run.at(12, analysis=waiting)
    assert (plan.phase, plan.state["reason"]) == (Phase.WAITING, "NoData")
    assert "fewer than minRequests" in plan.state["message"] and reasons(plan) == ["AnalysisWait", "Waiting"]
    assert plan.requeue_after == 10
    for t in range(22, 602, 10):
        plan = run.at(t, analysis=waiting)
        assert plan.phase is Phase.WAITING
    assert plan.requeue_after == 10  # the deadline: 10 min after the bake started at t=2 s
    assert_rolled_back(run.at(602), run.state["stableModel"], "ProgressDeadlineExceeded")


def test_a_canary_that_never_becomes_ready_rolls_back_at_the_deadline_and_each_new_ready_pod_extends_it():
    run = Run(make_spec(rollout={"steps": [{"weight": 50}]}))  # 2 canary pods beside 2
    v1 = run.spec["model"]
    run.at(1, version(run.spec, "2.0"), canary=TrackStatus())
    canary_hash = rollout.model_hash(version(run.spec, "2.0")["model"])
    plan = run.at(300, canary=TrackStatus(canary_hash, 1))
    assert plan.phase is Phase.WAITING and plan.requeue_after == 600
    assert run.at(899, canary=TrackStatus(canary_hash, 1)).phase is Phase.WAITING
    assert_rolled_back(run.at(900, canary=TrackStatus(canary_hash, 1)), v1, "ProgressDeadlineExceeded")
    assert "1 of 2 pods of canary version 2.0 Ready" in run.state["message"]


def test_ready_pods_of_another_model_do_not_count():
    run = Run(make_spec())
    plan = run.at(1, version(run.spec, "2.0"), canary=TrackStatus(rollout.model_hash(run.spec["model"]), 5))
    assert plan.phase is Phase.WAITING


def test_failing_canary_pods_roll_back_at_once():
    run = shipped()
    plan = run.at(3, canary_failure="container torchserve of pod cifar10-canary-x: CrashLoopBackOff: exit 1")
    assert_rolled_back(plan, run.state["stableModel"], "CanaryFailing")
    assert "CrashLoopBackOff" in plan.events[-1].message


# -- control by editing the object ------------------------------------------------------------------------


def edit(spec_: dict[str, Any], **rollout_fields: Any) -> dict[str, Any]:
    edited = copy.deepcopy(spec_)
    edited["rollout"].update(rollout_fields)
    return edited


def test_pause_freezes_weights_analysis_and_deadline_and_resume_continues_the_bake():
    run = shipped()
    run.at(12, analysis=PASS)
    plan = run.at(15, edit(run.spec, paused=True))
    assert plan.phase is Phase.PAUSED and reasons(plan) == ["Paused"]
    assert plan.requeue_after is None and plan.requested_weight == 10 and plan.canary is not None
    assert not run.due(5000)
    assert run.at(5000, analysis=FAIL, canary=TrackStatus()).state == plan.state  # nothing moves while paused
    plan = run.at(6015, edit(run.spec, paused=False))
    assert plan.phase is Phase.PROGRESSING and reasons(plan) == ["Resumed"]
    assert plan.requeue_after == 7  # the analysis due at t=22 before the pause of 6000 s
    assert run.state["bakeStartedAt"] == "2026-11-28T13:40:02.000Z"  # t = 2 + 6000
    assert not run.due(6021.9) and run.due(6022)


def test_a_rollout_shipped_while_paused_holds_before_its_first_step():
    run = Run(make_spec(rollout={"paused": True}))
    plan = run.at(1, version(run.spec, "2.0"))
    assert plan.phase is Phase.PAUSED and plan.canary is None and plan.requested_weight == 0
    assert "held: spec.rollout.paused" in plan.events[0].message
    plan = run.at(100, edit(run.spec, paused=False), canary=TrackStatus())
    assert plan.phase is Phase.WAITING and plan.requested_weight == 10 and plan.canary is not None


def test_zero_replicas_hold_the_rollout():
    run = shipped()
    scaled = copy.deepcopy(run.spec)
    scaled["serving"]["replicas"] = 0
    plan = run.at(5, scaled)
    assert plan.phase is Phase.PAUSED and "spec.serving.replicas is 0" in plan.events[0].message
    assert plan.stable.replicas == 0 and plan.canary is not None and plan.canary.replicas == 0


def test_promote_skips_the_remaining_steps_and_analysis():
    run = shipped()
    v2 = run.state["canaryModel"]
    plan = run.at(5, edit(run.spec, promote="2.0"))
    assert plan.phase is Phase.PROMOTING and reasons(plan) == ["PromotionStarted"]
    assert "spec.rollout.promote is 2.0" in plan.events[0].message
    assert plan.stable.model == v2 and plan.canary == rollout.Track(v2, 1)
    assert run.at(6).phase is Phase.SUCCEEDED


def test_promote_and_abort_for_another_version_are_ignored():
    run = shipped()
    before = run.state
    assert run.at(5, edit(run.spec, promote="9.9", abort="1.0")).state == before


def test_abort_ends_at_100_percent_stable():
    run = shipped()
    plan = run.at(5, edit(run.spec, abort="2.0"))
    assert (plan.phase, plan.state["reason"]) == (Phase.ABORTED, "Aborted")
    assert plan.stable == rollout.Track(run.state["stableModel"], 2) and plan.canary.replicas == 0  # type: ignore[union-attr]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "Aborted")]


def test_abort_during_promotion_returns_the_stable_track_to_its_model():
    run = shipped()
    run.at(5, edit(run.spec, promote="2.0"))
    plan = run.at(6, edit(run.spec, abort="2.0", promote=None), stable=TrackStatus())
    assert plan.phase is Phase.ABORTED and plan.stable.model == run.state["stableModel"]


def test_retry_acts_once_each_time_it_is_set():
    run = shipped()
    run.at(12, analysis=FAIL)
    run.at(22, analysis=FAIL)
    assert run.plan.phase is Phase.ROLLED_BACK
    plan = run.at(30, edit(run.spec, retry="2.0"), canary=TrackStatus())
    assert plan.phase is Phase.WAITING and reasons(plan) == ["RolloutRetried", "Waiting"]
    assert "failures" not in plan.state and "step" not in plan.state and "checks" not in plan.state
    run.at(31)
    run.at(41, analysis=FAIL)
    assert run.at(51, analysis=FAIL).phase is Phase.ROLLED_BACK
    assert run.at(60).phase is Phase.ROLLED_BACK  # retry still says 2.0: no endless retrying
    run.at(70, edit(run.spec, retry=None))
    assert run.at(80, edit(run.spec, retry="2.0")).phase is Phase.WAITING


def test_a_new_version_mid_rollout_replaces_the_canary_and_starts_from_the_first_step():
    run = shipped()
    run.at(12, analysis=PASS)
    run.at(22, analysis=PASS)
    run.at(32, analysis=PASS)
    run.at(33)
    assert run.state["step"] == 1
    v1 = run.state["stableModel"]
    plan = run.at(40, version(run.spec, "3.0"), canary=TrackStatus())
    assert plan.phase is Phase.WAITING and run.state.get("step", 0) == 0 and plan.requested_weight == 10
    assert plan.canary is not None and plan.canary.model["version"] == "3.0"
    assert plan.stable == rollout.Track(v1, 2)
    assert "replaces the canary of version 2.0" in plan.events[0].message


def test_a_new_version_during_promotion_starts_once_the_promotion_is_done():
    run = shipped()
    run.at(5, edit(run.spec, promote="2.0"), stable=TrackStatus())
    v3 = version(run.spec, "3.0")
    plan = run.at(6, v3, stable=TrackStatus())
    assert plan.phase is Phase.PROMOTING and plan.stable.model["version"] == "2.0"
    plan = run.at(7, canary=TrackStatus())
    assert reasons(plan) == ["Promoted", "RolloutStarted", "Waiting"]
    assert plan.stable.model["version"] == "2.0" and plan.canary.model["version"] == "3.0"  # type: ignore[union-attr]


def test_a_promotion_rolled_back_at_its_deadline_does_not_start_again_while_promote_stays_set():
    run = shipped()
    run.at(5, edit(run.spec, promote="2.0"), stable=TrackStatus())
    assert run.at(605, stable=TrackStatus()).phase is Phase.ROLLED_BACK
    plan = run.at(606, stable=TrackStatus())
    assert plan.phase is Phase.ROLLED_BACK and plan.events == ()


def test_a_version_edited_in_during_a_promotion_that_fails_starts_in_the_same_pass():
    run = Run(make_spec(rollout={"strategy": "Immediate"}))
    run.at(1, version(run.spec, "2.0"), stable=TrackStatus())
    plan = run.at(601, version(run.spec, "3.0"), stable=TrackStatus())
    assert reasons(plan) == ["RolledBack", "RolloutStarted"]
    assert plan.phase is Phase.PROMOTING and plan.stable.model["version"] == "3.0"


def test_reverting_spec_model_to_the_stable_version_ends_the_rollout_at_once_without_analysis():
    run = shipped()
    plan = run.at(12, version(run.spec, "1.0"), analysis=FAIL)
    assert plan.phase is Phase.SERVING and plan.canary is None and reasons(plan) == ["RolloutReverted"]
    assert plan.state == {"phase": "Serving", "stableModel": version(run.spec, "1.0")["model"]}


def test_promotion_that_makes_no_progress_rolls_back_to_the_old_stable_model():
    run = shipped()
    v1 = run.state["stableModel"]
    run.at(5, edit(run.spec, promote="2.0"), stable=TrackStatus())
    v2_hash = rollout.model_hash(run.state["canaryModel"])
    assert run.at(300, stable=TrackStatus(v2_hash, 1)).phase is Phase.PROMOTING  # progress: the deadline moves
    assert run.at(899, stable=TrackStatus(v2_hash, 1)).phase is Phase.PROMOTING
    plan = run.at(900, stable=TrackStatus(v2_hash, 1))
    assert plan.phase is Phase.ROLLED_BACK and plan.stable == rollout.Track(v1, 2)


# -- strategies and traffic modes ---------------------------------------------------------------------------


def test_immediate_is_a_rolling_update_of_the_stable_track_without_canary_or_analysis():
    run = Run(make_spec(rollout={"strategy": "Immediate"}))
    plan = run.at(1, version(run.spec, "2.0"), stable=TrackStatus())
    assert plan.phase is Phase.PROMOTING and plan.canary is None and plan.stable.model["version"] == "2.0"
    assert "a rolling update, no analysis" in plan.events[0].message
    assert run.at(2).phase is Phase.SUCCEEDED


def test_linear_steps_by_step_weight_up_to_max_weight():
    linear = {"strategy": "Linear", "stepWeight": 30, "maxWeight": 80, "stepInterval": "2m"}
    assert rollout.rollout_steps(make_spec(rollout=linear)["rollout"]) == [
        rollout.Step(30, 120),
        rollout.Step(60, 120),
        rollout.Step(80, 120),
    ]
    canary = {"strategy": "Canary", "steps": [{"weight": 5}, {"weight": 25, "pause": "10s"}], "stepInterval": "1m"}
    assert rollout.rollout_steps(make_spec(rollout=canary)["rollout"]) == [rollout.Step(5, 60), rollout.Step(25, 10)]


def test_gateway_api_moves_the_route_only_once_the_steps_pods_are_ready():
    gateway = {"mode": "GatewayAPI", "gateway": {"parentRefs": [{"name": "web"}]}}
    run = Run(make_spec(traffic=gateway, serving={"replicas": 4}))
    plan = run.at(1, version(run.spec, "2.0"), canary=TrackStatus())
    assert plan.route_weights == {"stable": 100, "canary": 0} and plan.canary.replicas == 1  # type: ignore[union-attr]
    plan = run.at(2)
    assert plan.route_weights == {"stable": 90, "canary": 10} and plan.effective_weight == 10
    assert plan.canary.replicas == 2, "the next step's pods start during this step's bake"  # type: ignore[union-attr]
    for t in (12, 22):
        run.at(t, analysis=PASS)
    plan = run.at(32, analysis=PASS, canary=TrackStatus(rollout.model_hash(run.state["canaryModel"]), 1))
    assert plan.canary.replicas == 2 and plan.route_weights == {"stable": 90, "canary": 10}  # type: ignore[union-attr]
    assert run.at(33).route_weights == {"stable": 50, "canary": 50}
    for t in (43, 53, 63):
        run.at(t, analysis=PASS)
    assert run.plan.phase is Phase.PROMOTING and run.plan.route_weights == {"stable": 50, "canary": 50}
    assert run.at(64).route_weights == {"stable": 100, "canary": 0}


# -- weight arithmetic ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight", "stable", "max_weight", "canary", "effective"),
    [
        (10, 2, 50, 1, 33),  # one pod is the least a canary has
        (50, 2, 50, 2, 50),
        (60, 2, 80, 3, 60),
        (75, 1, 80, 3, 75),
        (80, 2, 80, 8, 80),
        (90, 2, 90, 8, 80),  # at most 4 canary pods per stable pod
        (60, 3, 60, 4, 57),  # 5 pods (62.5 %) would be closer but above the highest weight
        (20, 10, 80, 3, 23),  # 3 pods (23.1 %) are closer than 2 (16.7 %)
        (25, 3, 80, 1, 25),
        (0, 2, 80, 0, 0),
    ],
)
def test_service_mode_canary_replicas_and_effective_weight(weight, stable, max_weight, canary, effective):
    assert rollout.service_canary_replicas(weight, stable, max_weight) == canary
    assert rollout.service_weight(canary, stable) == effective


def test_service_mode_ties_go_to_fewer_pods():
    assert rollout.service_canary_replicas(55, 2, 80) == 2  # 50 % and 60 % are both 5 points away


@pytest.mark.parametrize(("weight", "stable", "canary"), [(10, 4, 1), (50, 4, 2), (51, 4, 3), (99, 4, 4), (0, 4, 0)])
def test_gateway_mode_canary_replicas_carry_their_share_at_the_stable_pods_load(weight, stable, canary):
    assert rollout.gateway_canary_replicas(weight, stable) == canary


def test_state_is_plain_json_in_camel_case_with_the_canary_hash():
    run = shipped()
    state = run.state
    assert {"phase", "stableModel", "canaryModel", "canaryHash", "startedAt", "stepStartedAt", "bakeStartedAt"} <= set(
        state
    )
    assert state["canaryHash"] == rollout.model_hash(state["canaryModel"])
    assert rollout.State.from_dict(state).to_dict() == state


def test_gateway_api_prescaled_pods_let_the_next_step_start_when_the_bake_ends():
    gateway = {"mode": "GatewayAPI", "gateway": {"parentRefs": [{"name": "web"}]}}
    run = Run(make_spec(traffic=gateway, serving={"replicas": 4}))
    run.at(1, version(run.spec, "2.0"), canary=TrackStatus())
    run.at(2)
    for t in (12, 22):
        run.at(t, analysis=PASS)
    plan = run.at(32, analysis=PASS)  # the world ran the 2 pods planned at t=2: no wait for pods to start
    assert plan.phase is Phase.PROGRESSING and "StepStarted" in reasons(plan)
    assert plan.route_weights == {"stable": 50, "canary": 50}
    assert run.state["bakeStartedAt"] == run.state["stepStartedAt"]


def test_service_mode_runs_only_the_current_steps_pods():
    run = shipped(make_spec(serving={"replicas": 2}))
    assert run.plan.canary.replicas == 1 and run.plan.effective_weight == 33  # type: ignore[union-attr]


def test_a_pass_that_must_not_move_keeps_the_state_and_the_stable_track():
    run = Run(make_spec())
    edited = version(run.spec, "2.0")
    plan = rollout.unchanged(edited, run.state, T0 + datetime.timedelta(seconds=5))
    assert plan.state == run.state and plan.phase is Phase.SERVING and plan.canary is None and not plan.events
    assert plan.stable.model["version"] == run.spec["model"]["version"]
    mid = shipped()
    held = rollout.unchanged(version(mid.spec, "3.0"), mid.state, T0 + datetime.timedelta(seconds=500))
    assert held.state == mid.state and held.phase is Phase.PROGRESSING and held.requeue_after is None
    assert held.canary.model["version"] == "2.0"  # type: ignore[union-attr]


def test_service_mode_effective_weight_follows_ready_pods_and_holds_while_promoting():
    run = shipped(make_spec(serving={"replicas": 2}))
    v2 = rollout.model_hash(run.state["canaryModel"])
    assert run.at(3, canary=TrackStatus(v2, 0)).effective_weight == 0  # its pod stopped being Ready
    assert run.at(4).effective_weight == 33
    assert run.at(5, edit(run.spec, promote="2.0")).phase is Phase.PROMOTING
    # The stable track rolls to 2.0: none of its new pods Ready yet, its old ones still serve.
    plan = run.at(6, stable=TrackStatus(v2, 0))
    assert plan.phase is Phase.PROMOTING and plan.effective_weight == 33
