"""The pure parts of a reconcile pass: what to apply, what counts as drift."""

from __future__ import annotations

import copy
import datetime
import threading
import time

import pytest

from canaria import reconcile, render, rollout
from canaria.kube import Unavailable
from canaria.reconcile import Observation
from canaria.render import Settings
from tests.unit.conftest import model_deployment

SETTINGS = Settings()
NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def first_plan(md):
    """The plan of the first pass: the first version is stable, no canary."""
    return rollout.decide(md["spec"], {}, rollout.Observation(), NOW)


def desired(md, service_monitor_api=True, plan=None):
    return reconcile.desired_children(md, plan or first_plan(md), SETTINGS, service_monitor_api)


def live_copy(obj, **server_additions):
    live = copy.deepcopy(obj)
    live["metadata"].update({"resourceVersion": "7", "uid": "child"})
    live.update(server_additions)
    return live


def test_children_are_stamped_with_a_hash_of_themselves(md):
    children = desired(md)
    assert [c["kind"] for c in children] == ["ConfigMap", "Deployment", "Service", "ServiceMonitor"]
    for child in children:
        assert reconcile.APPLIED_HASH_ANNOTATION in child["metadata"]["annotations"]


def test_no_service_monitor_without_its_crd_or_when_disabled():
    kinds = [c["kind"] for c in desired(model_deployment(), False)]
    assert "ServiceMonitor" not in kinds
    disabled = model_deployment(monitoring={"serviceMonitor": {"enabled": False}})
    assert "ServiceMonitor" not in [c["kind"] for c in desired(disabled)]


def test_live_object_with_server_defaults_needs_no_apply(md):
    wanted = desired(md)[1]
    live = live_copy(wanted, status={"readyReplicas": 1})
    live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    del live["spec"]["template"]["spec"]["initContainers"][0]["env"]  # the server drops an empty list
    assert reconcile.needs_apply(wanted, live) is False


def test_hand_edits_are_drift(md):
    wanted = desired(md)[1]
    scaled = live_copy(wanted)
    scaled["spec"]["replicas"] = 5
    assert reconcile.needs_apply(wanted, scaled)
    extra_env = live_copy(wanted)
    extra_env["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "X", "value": "1"}]
    assert reconcile.needs_apply(wanted, extra_env)
    assert reconcile.needs_apply(wanted, None)


def test_a_removed_field_changes_the_hash_so_it_is_applied():
    with_selector = model_deployment(serving={"nodeSelector": {"pool": "cpu"}})
    live = live_copy(desired(with_selector)[1])
    wanted = desired(model_deployment())[1]
    assert reconcile.needs_apply(wanted, live)


def test_switched_off_service_monitor_is_deleted():
    md = model_deployment(monitoring={"serviceMonitor": {"enabled": False}})
    observation = Observation(children={("ServiceMonitor", "cifar10"): {"kind": "ServiceMonitor"}})
    assert reconcile.unwanted_children(md, observation, desired(md)) == [
        ("monitoring.coreos.com/v1", "ServiceMonitor", "cifar10")
    ]
    assert reconcile.unwanted_children(model_deployment(), observation, desired(model_deployment())) == []


def test_facts_treat_a_deployment_changed_this_pass_as_not_rolled_out(md):
    name = render.deployment_name(md, render.STABLE)
    done = {
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1},
    }
    observation = Observation(children={("Deployment", name): done}, service_monitor_api=True)
    assert reconcile.facts_of(md, observation, first_plan(md), [], [], SETTINGS).rollout_complete is True
    applied = [{"kind": "Deployment"}]
    assert reconcile.facts_of(md, observation, first_plan(md), applied, [], SETTINGS).rollout_complete is False


def test_requests_during_a_pass_coalesce_into_one_more_pass(monkeypatch):
    started, release, passes = threading.Event(), threading.Event(), []

    def slow_pass(kube, namespace, name, settings):
        passes.append(name)
        started.set()
        release.wait(5)
        return {}

    monkeypatch.setattr(reconcile, "_reconcile", slow_pass)
    first = threading.Thread(target=reconcile.reconcile, args=(None, "ns", "m", SETTINGS))
    first.start()
    started.wait(5)
    for _ in range(10):  # a burst of child events while the first pass runs
        assert reconcile.reconcile(None, "ns", "m", SETTINGS) is None
    release.set()
    first.join(5)
    assert passes == ["m", "m"]
    assert reconcile._requests == {}


def test_retry_delays_back_off_up_to_a_minute():
    assert [reconcile.retry_delay(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


class FlakyAPI:
    """A pass that fails temporarily `failures` times, then succeeds; records when each pass started."""

    def __init__(self, failures: int, hold: threading.Event | None = None) -> None:
        self.failures, self.hold, self.starts = failures, hold, []
        self.done = threading.Event()

    def __call__(self, kube, namespace, name, settings):
        self.starts.append(time.monotonic())
        if self.hold:
            self.hold.wait(5)
            self.hold = None
        if len(self.starts) <= self.failures:
            raise Unavailable("PATCH /api/v1/namespaces/ns/services/m: 503 etcd is down")
        self.done.set()
        return {"phase": "Serving"}


def test_a_temporary_failure_is_retried_with_back_off_until_it_passes(monkeypatch):
    monkeypatch.setattr(reconcile, "RETRY_FIRST_SECONDS", 0.05)
    flaky = FlakyAPI(failures=3)
    monkeypatch.setattr(reconcile, "_reconcile", flaky)
    assert reconcile.reconcile(None, "ns", "m", SETTINGS) is None  # failed: a retry is scheduled
    assert ("ns", "m") in reconcile._requests
    assert flaky.done.wait(5), "the failed pass was never retried"
    gaps = [later - earlier for earlier, later in zip(flaky.starts, flaky.starts[1:], strict=False)]
    assert len(gaps) == 3
    assert all(gap >= delay * 0.9 for gap, delay in zip(gaps, [0.05, 0.1, 0.2], strict=True)), gaps
    wait_until(lambda: reconcile._requests == {})


def test_requests_during_a_failing_pass_wait_for_the_retry_instead_of_running_hot(monkeypatch):
    monkeypatch.setattr(reconcile, "RETRY_FIRST_SECONDS", 0.3)
    hold = threading.Event()
    flaky = FlakyAPI(failures=1, hold=hold)
    monkeypatch.setattr(reconcile, "_reconcile", flaky)
    first = threading.Thread(target=reconcile.reconcile, args=(None, "ns", "m", SETTINGS))
    first.start()
    wait_until(lambda: flaky.starts)
    for _ in range(5):  # child events while the pass runs into the failing API
        reconcile.reconcile(None, "ns", "m", SETTINGS)
    hold.set()
    first.join(5)
    assert flaky.done.wait(5)
    assert len(flaky.starts) == 2 and flaky.starts[1] - flaky.starts[0] >= 0.27
    wait_until(lambda: reconcile._requests == {})


def test_a_new_request_runs_at_once_and_replaces_the_scheduled_retry(monkeypatch):
    monkeypatch.setattr(reconcile, "RETRY_FIRST_SECONDS", 30)
    flaky = FlakyAPI(failures=1)
    monkeypatch.setattr(reconcile, "_reconcile", flaky)
    reconcile.reconcile(None, "ns", "m", SETTINGS)
    retry = reconcile._requests[("ns", "m")].retry
    assert retry is not None and retry.is_alive()
    assert reconcile.reconcile(None, "ns", "m", SETTINGS) == {"phase": "Serving"}  # e.g. a child event
    assert not retry.is_alive() or retry.finished.is_set()
    assert reconcile._requests == {}


def test_the_request_table_forgets_objects_once_their_pass_is_over(monkeypatch):
    monkeypatch.setattr(reconcile, "_reconcile", lambda kube, namespace, name, settings: None)  # object gone
    for index in range(1000):
        reconcile.reconcile(None, "ns", f"m{index}", SETTINGS)
    assert reconcile._requests == {}

    def broken(kube, namespace, name, settings):
        raise KeyError("a bug")

    monkeypatch.setattr(reconcile, "_reconcile", broken)
    with pytest.raises(KeyError):
        reconcile.reconcile(None, "ns", "m", SETTINGS)
    assert reconcile._requests == {}


def wait_until(predicate, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_every_object_is_looked_at_again_by_the_resync_at_the_latest():
    assert reconcile.next_pass_after(None) == reconcile.RESYNC_SECONDS
    assert reconcile.next_pass_after(12.5) == 12.5
    assert reconcile.next_pass_after(10 * reconcile.RESYNC_SECONDS) == reconcile.RESYNC_SECONDS
