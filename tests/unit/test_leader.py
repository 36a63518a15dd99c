"""Leader election (canaria.leader): the pure decisions, their clock edges, the claim written, the settings, and
the standby's liveness endpoint. The real Lease, two operator processes and a failover are in
tests/integration/test_failover.py."""

from __future__ import annotations

import datetime
import json
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canaria import leader
from canaria.leader import (
    LEASE_DURATION,
    RENEW_DEADLINE,
    RETRY_PERIOD,
    Action,
    ElectionSettings,
    Sighting,
    claimed,
    decide,
    must_step_down,
    sighted,
)

ME, OTHER = "canaria-7d9f-a", "canaria-7d9f-b"
T = 1000.0  # a monotonic clock reading
AT = datetime.datetime(2026, 12, 6, 1, 30, 0, 123456, tzinfo=datetime.UTC)
SETTINGS = ElectionSettings(enabled=True, identity=ME, lease_name="canaria", lease_namespace="canaria-system")


def lease(holder: str, renew: str = "2026-12-06T01:29:58.000000Z", duration: int = 15, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "canaria", "namespace": "canaria-system", "resourceVersion": "42"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": "2026-12-06T01:00:00.000000Z",
            "renewTime": renew,
            "leaseTransitions": 4,
            **spec,
        },
    }


# -- decide ----------------------------------------------------------------------------------------------------


def test_no_lease_is_created() -> None:
    assert decide(None, ME, T, T) is Action.CREATE


def test_another_holders_lease_is_waited_for_until_it_expires() -> None:
    held = lease(OTHER)
    assert decide(held, ME, T, T) is Action.WAIT
    assert decide(held, ME, T + LEASE_DURATION - 0.001, T) is Action.WAIT


def test_a_lease_expires_exactly_at_its_duration() -> None:
    assert decide(lease(OTHER), ME, T + LEASE_DURATION, T) is Action.ACQUIRE
    assert decide(lease(OTHER), ME, T + LEASE_DURATION + 0.001, T) is Action.ACQUIRE


def test_the_duration_is_the_one_the_holder_declared() -> None:
    slow = lease(OTHER, duration=30)
    assert decide(slow, ME, T + 29.9, T) is Action.WAIT
    assert decide(slow, ME, T + 30, T) is Action.ACQUIRE
    assert decide(lease(OTHER, duration=0), ME, T + LEASE_DURATION, T) is Action.ACQUIRE  # nonsense: ours


def test_our_own_lease_after_a_restart_is_renewed_at_once() -> None:
    """A pod keeps its name across container restarts: the restarted process finds its own name as holder and
    leads again without waiting, whether the lease is still valid or long expired."""
    assert decide(lease(ME), ME, T, T) is Action.RENEW
    assert decide(lease(ME), ME, T + 3600, T) is Action.RENEW


def test_a_released_lease_is_taken_at_once() -> None:
    assert decide(lease(""), ME, T, T) is Action.ACQUIRE


def test_time_counts_from_our_own_sighting_not_from_the_records_renew_time() -> None:
    """A renewTime an hour old on our wall clock (skewed clocks, or a standby that just started) does not make the
    lease expired: we wait a whole duration from when we first saw the record."""
    stale = lease(OTHER, renew="2026-12-06T00:30:00.000000Z")
    first = sighted(None, stale, T)
    assert decide(stale, ME, T, first.since) is Action.WAIT
    assert decide(stale, ME, T + LEASE_DURATION, first.since) is Action.ACQUIRE


def test_a_renewal_restarts_the_clock_and_an_unchanged_record_does_not() -> None:
    first = sighted(None, lease(OTHER), T)
    same = sighted(first, lease(OTHER), T + 10)
    assert same == first
    renewed = sighted(same, lease(OTHER, renew="2026-12-06T01:30:00.000000Z"), T + 12)
    assert renewed == Sighting(lease(OTHER, renew="2026-12-06T01:30:00.000000Z")["spec"], T + 12)
    assert decide(lease(OTHER), ME, T + LEASE_DURATION + 1, renewed.since) is Action.WAIT
    gone = sighted(renewed, None, T + 13)
    assert gone.since == T + 13 and gone.spec is None


# -- the claim -------------------------------------------------------------------------------------------------


def test_a_created_lease_names_us_with_the_settings_duration() -> None:
    body = claimed(None, SETTINGS, Action.CREATE, AT)
    assert body["metadata"] == {"name": "canaria", "namespace": "canaria-system"}
    assert body["spec"] == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-06T01:30:00.123456Z",
        "renewTime": "2026-12-06T01:30:00.123456Z",
        "leaseTransitions": 0,
    }


def test_a_takeover_counts_a_transition_and_keeps_the_resource_version() -> None:
    body = claimed(lease(OTHER), SETTINGS, Action.ACQUIRE, AT)
    assert body["metadata"]["resourceVersion"] == "42"  # the update fails if anyone wrote since we read
    assert body["spec"]["holderIdentity"] == ME
    assert body["spec"]["leaseTransitions"] == 5
    assert body["spec"]["acquireTime"] == body["spec"]["renewTime"] == "2026-12-06T01:30:00.123456Z"


def test_a_renewal_moves_only_the_renew_time() -> None:
    before = lease(ME)
    body = claimed(before, SETTINGS, Action.RENEW, AT)
    assert body["spec"] == {**before["spec"], "renewTime": "2026-12-06T01:30:00.123456Z"}
    assert before["spec"]["renewTime"] == "2026-12-06T01:29:58.000000Z", "the lease read is not modified"


# -- the leader's deadline -------------------------------------------------------------------------------------


def test_a_leader_steps_down_exactly_at_the_renew_deadline() -> None:
    assert not must_step_down(T, T + RENEW_DEADLINE - 0.001)
    assert must_step_down(T, T + RENEW_DEADLINE)


def test_the_settings_leave_room_between_stepping_down_and_a_takeover() -> None:
    # A leader's watchdog looks every 0.5 s; a renewal request lasts at most until the deadline.
    assert RENEW_DEADLINE + 0.5 + RETRY_PERIOD < LEASE_DURATION
    assert (LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD) == (15, 10, 2)  # controller-runtime's defaults
    assert leader.request_timeout(T, T + RENEW_DEADLINE - 1) == pytest.approx(1)
    assert leader.request_timeout(T, T) == 2 * RETRY_PERIOD


@given(
    renewal_landed_after=st.floats(0, RENEW_DEADLINE),  # how long the server took to record the renewal
    seen_after=st.floats(0, 5),  # how much later the standby read it
    standby_now=st.floats(0, 60),
)
def test_never_two_leaders(renewal_landed_after: float, seen_after: float, standby_now: float) -> None:
    """The leader counts its last renewal from when it sent the request; the server records it later and the
    standby sees it later still. Whenever the standby would take over, the leader has already stepped down."""
    sent = T
    seen = sent + renewal_landed_after + seen_after
    now = seen + standby_now
    takes_over = decide(lease(OTHER), ME, now, seen) is Action.ACQUIRE
    leader_watchdog_fired = must_step_down(sent, now - 0.5)  # its watchdog looks every 0.5 s
    assert not takes_over or leader_watchdog_fired


# -- settings ----------------------------------------------------------------------------------------------------


def test_election_is_off_without_the_environment_the_chart_sets() -> None:
    assert not leader.settings_from({}).enabled
    assert not leader.settings_from({"CANARIA_LEADER_ELECTION": "False"}).enabled


def test_settings_from_the_charts_environment() -> None:
    settings = leader.settings_from(
        {
            "CANARIA_LEADER_ELECTION": "true",
            "CANARIA_LEASE_NAME": "ml-canaria",
            "CANARIA_LEASE_NAMESPACE": "ops",
            "POD_NAME": ME,
        }
    )
    assert settings == ElectionSettings(enabled=True, identity=ME, lease_name="ml-canaria", lease_namespace="ops")


def test_without_a_pod_name_each_process_is_someone_else() -> None:
    environ = {"CANARIA_LEADER_ELECTION": "true", "CANARIA_LEASE_NAMESPACE": "ops"}
    first, second = leader.settings_from(environ).identity, leader.settings_from(environ).identity
    assert first != second and first.startswith(socket.gethostname())


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CANARIA_LEADER_ELECTION": "yes"}, "CANARIA_LEADER_ELECTION must be true or false"),
        ({"CANARIA_LEADER_ELECTION": "true"}, "needs CANARIA_LEASE_NAMESPACE"),
    ],
)
def test_bad_settings_are_refused_with_a_reason(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        leader.settings_from(environ)


# -- the leader's renewals, on a Lease kept in memory --------------------------------------------------------------


class LeaseInMemory(leader.LeaseApi):
    """The Lease API's contract (resourceVersion checked on update), without a server."""

    def __init__(self, stored: dict[str, Any] | None) -> None:
        self.stored, self.fail = stored, False

    def read(self, timeout: float) -> dict[str, Any] | None:
        if self.fail:
            raise leader.LeaseUnavailable("no answer")
        return json.loads(json.dumps(self.stored)) if self.stored else None

    def update(self, lease: dict[str, Any], timeout: float) -> bool:
        assert self.stored is not None
        if self.fail:
            raise leader.LeaseUnavailable("no answer")
        if lease["metadata"]["resourceVersion"] != self.stored["metadata"]["resourceVersion"]:
            return False
        version = str(int(self.stored["metadata"]["resourceVersion"]) + 1)
        self.stored = {**lease, "metadata": {**lease["metadata"], "resourceVersion": version}}
        return True


class Clock:
    def __init__(self) -> None:
        self.now = T

    def __call__(self) -> float:
        return self.now


def renewer(api: LeaseInMemory, clock: Clock, reasons: list[str]) -> leader.Renewer:
    return leader.Renewer(api, SETTINGS, acquired_at=clock.now, clock=clock, step_down=reasons.append)


def test_a_renewal_writes_the_lease_and_moves_the_deadline() -> None:
    api, clock, reasons = LeaseInMemory(lease(ME)), Clock(), []
    renewing = renewer(api, clock, reasons)
    clock.now += RETRY_PERIOD
    renewing.renew_once()
    assert renewing.last_renewed == T + RETRY_PERIOD and not reasons
    assert api.stored is not None and api.stored["metadata"]["resourceVersion"] == "43"


def test_a_leader_whose_lease_was_taken_steps_down_at_once() -> None:
    api, clock, reasons = LeaseInMemory(lease(OTHER)), Clock(), []
    renewer(api, clock, reasons).renew_once()
    assert reasons == [f"the Lease is now held by {OTHER}"]


def test_failed_renewals_do_not_move_the_deadline() -> None:
    api, clock, reasons = LeaseInMemory(lease(ME)), Clock(), []
    renewing = renewer(api, clock, reasons)
    api.fail = True
    clock.now += RETRY_PERIOD
    with pytest.raises(leader.LeaseUnavailable):
        renewing.renew_once()
    assert renewing.last_renewed == T
    assert must_step_down(renewing.last_renewed, T + RENEW_DEADLINE)


# -- the standby's liveness endpoint -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


def test_the_standby_answers_liveness_while_its_loop_comes_round_and_frees_the_port() -> None:
    port, clock = free_port(), Clock()
    health = leader.StandbyHealth(f"http://127.0.0.1:{port}/healthz", clock=clock)
    try:
        health.heartbeat(OTHER)
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, {"role": "standby", "leader": OTHER})
        assert get(f"http://127.0.0.1:{port}/other")[0] == 404
        clock.now += leader.STANDBY_STALE_SECONDS
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 503
    finally:
        health.close()
    with socket.socket() as sock:  # Kopf's own endpoint binds the same address next
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
