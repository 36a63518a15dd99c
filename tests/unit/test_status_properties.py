"""Property tests of the status logic: invariants that must hold for any facts, in any order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from canaria import schema, status
from canaria.status import Facts, Problem

problems = st.lists(
    st.builds(Problem, st.sampled_from(["PVCNotFound", "PackagingFailed", "CrashLoop"]), st.text(max_size=20)),
    max_size=2,
)
facts = st.builds(
    Facts,
    generation=st.integers(1, 50),
    version=st.sampled_from(["1.0", "2.0"]),
    wanted_replicas=st.integers(0, 5),
    ready_replicas=st.integers(0, 5),
    rollout_complete=st.booleans(),
    unresolved=problems,
    failures=problems,
)
times = st.sampled_from(["2026-11-28T00:00:00Z", "2026-11-28T00:01:00Z", "2026-11-28T00:02:00Z"])


def value(new: dict, type_: str) -> str:
    return status.condition(new, type_)["status"]


@given(st.lists(st.tuples(facts, times), min_size=1, max_size=6))
def test_kstatus_conditions_are_consistent_for_any_history(history):
    current: dict = {}
    for fact, now in history:
        current = status.derive(current, fact, now)
        ready, stalled, reconciling = (value(current, t) for t in ("Ready", "Stalled", "Reconciling"))
        assert [ready, stalled, reconciling].count("True") == 1  # exactly one of the three holds
        assert (current["phase"] in ("Serving", "ScaledToZero")) == (ready == "True")
        assert (current["phase"] == "ScaledToZero") == (ready == "True" and fact.wanted_replicas == 0)
        if value(current, "Available") == "True":
            assert fact.ready_replicas > 0
        assert (stalled == "True") == bool(fact.unresolved or fact.failures)
        assert current["observedGeneration"] == fact.generation
        assert len({c["type"] for c in current["conditions"]}) == len(current["conditions"])


@given(facts, times, times)
def test_deriving_twice_from_the_same_facts_changes_nothing(fact, first, later):
    once = status.derive({}, fact, first)
    assert status.derive(once, fact, later) == once  # so the operator writes no status


@given(facts, facts, times, times)
def test_stable_version_only_moves_to_a_version_that_became_ready(before, after, first, later):
    old = status.derive({}, before, first)
    new = status.derive(old, after, later)
    assert new["stableVersion"] in (old["stableVersion"], after.version)
    if new["stableVersion"] != old["stableVersion"]:
        assert value(new, "Ready") == "True"


def too_long(value, node, path="status"):
    """Every string of `value` longer than the maxLength its node in the CRD's status schema declares."""
    if isinstance(value, str):
        return [path] if len(value) > node.get("maxLength", len(value)) else []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in too_long(v, node.get("properties", {}).get(k, {}), f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in too_long(v, node.get("items", {}), f"{path}[{i}]")]
    return []


long_problems = st.lists(
    st.builds(Problem, st.sampled_from(["PackagingFailed", "Rejected"]), st.text(min_size=0, max_size=6000)),
    max_size=12,
)


@given(long_problems, long_problems, st.lists(st.text(max_size=3000), max_size=3), times)
def test_every_status_string_fits_its_schema_limit(unresolved, failures, waiting, now):
    fact = Facts(
        generation=1,
        version="1.0",
        wanted_replicas=2,
        ready_replicas=0,
        unresolved=unresolved,
        failures=failures,
        waiting=waiting,
        url="http://" + "u" * 2000,
    )
    new = status.derive({}, fact, now)
    assert too_long(new, schema.status_schema()) == []
    assert status.derive(new, fact, now) == new
