"""The rollout wired into a pass: what each track runs, which children go, and what status and the patch say."""

from __future__ import annotations

import datetime

from canaria import kube, reconcile, render, rollout, status
from canaria.reconcile import Observation
from canaria.render import CANARY, STABLE, Settings
from tests.unit.conftest import model_deployment

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
V1 = model_deployment(model={"version": "1.0", "storageUri": "https://models/a.mar"})["spec"]["model"]  # defaulted
V2 = model_deployment(model={"version": "2.0", "storageUri": "https://models/b.mar"})["spec"]["model"]


def canary_plan(md):
    """Version 2.0 edited in over a stable 1.0: the first step's plan."""
    state = rollout.decide(md["spec"], {}, rollout.Observation(), NOW).state
    md["spec"]["model"] = V2
    return rollout.decide(md["spec"], state, rollout.Observation(), NOW)


def by_name(children):
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


def test_each_track_runs_its_own_model_from_its_own_immutable_config_map():
    md = model_deployment(model=V1)
    children = by_name(reconcile.desired_children(md, canary_plan(md), Settings(), False))
    stable, canary = children[("Deployment", "cifar10-stable")], children[("Deployment", "cifar10-canary")]
    for deployment, model in ((stable, V1), (canary, V2)):
        template = deployment["spec"]["template"]
        assert template["metadata"]["annotations"][render.MODEL_HASH_ANNOTATION] == rollout.model_hash(model)
        volume = next(v for v in template["spec"]["volumes"] if v["name"] == "config")
        config_map = children[("ConfigMap", volume["configMap"]["name"])]
        assert config_map["immutable"] is True
        assert f'"{model["version"]}"' in config_map["data"]["config.properties"]
    assert canary["spec"]["replicas"] == 1


def test_a_config_map_is_named_by_its_content():
    md = model_deployment(model=V1)
    same = render.config_map_name(md, STABLE, V1)
    assert same == render.config_map_name(model_deployment(model=V1), STABLE, V1)
    assert same != render.config_map_name(md, STABLE, V2)
    assert same != render.config_map_name(model_deployment(model=V1, serving={"workers": {"min": 2}}), STABLE, V1)


def test_gateway_mode_routes_by_the_plans_weights_to_a_service_per_track():
    parents = [{"name": "canaria", "namespace": "default"}]
    md = model_deployment(model=V1, traffic={"mode": "GatewayAPI", "gateway": {"parentRefs": parents}})
    plan = canary_plan(md)
    children = by_name(reconcile.desired_children(md, plan, Settings(), False))
    route = children[("HTTPRoute", "cifar10")]
    assert route["spec"]["parentRefs"] == parents
    backends = route["spec"]["rules"][0]["backendRefs"]
    assert {b["name"]: b["weight"] for b in backends} == {"cifar10-stable": 100, "cifar10-canary": 0}  # not Ready yet
    for track in (STABLE, CANARY):
        selector = children[("Service", f"cifar10-{track}")]["spec"]["selector"]
        assert selector[render.TRACK_LABEL] == track
    assert render.TRACK_LABEL not in children[("Service", "cifar10")]["spec"]["selector"]  # one Service over both


def test_unused_config_maps_and_a_finished_canary_are_removed_but_mounted_ones_stay():
    md = model_deployment(model=V1)
    plan = rollout.decide(md["spec"], {}, rollout.Observation(), NOW)
    wanted = reconcile.desired_children(md, plan, Settings(), False)
    current = render.config_map_name(md, STABLE, V1)
    mounted = {"metadata": {"name": "p"}, "spec": {"volumes": [{"configMap": {"name": "cifar10-stable-config-old"}}]}}
    observation = Observation(
        children={("Deployment", "cifar10-canary"): {"kind": "Deployment"}},
        pods=[mounted],
        config_maps=[current, "cifar10-stable-config-old", "cifar10-canary-config-gone"],
    )
    assert reconcile.unwanted_children(md, observation, wanted) == [
        ("apps/v1", "Deployment", "cifar10-canary"),
        ("v1", "ConfigMap", "cifar10-canary-config-gone"),
    ]


def test_a_track_counts_only_ready_pods_running_its_deployments_model():
    md = model_deployment(model=V1)
    deployment = render.deployment(md, CANARY, V2, 2, Settings())

    def pod(model, ready):
        annotations = {render.MODEL_HASH_ANNOTATION: rollout.model_hash(model)}
        conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
        labels = {render.TRACK_LABEL: CANARY}
        return {"metadata": {"labels": labels, "annotations": annotations}, "status": {"conditions": conditions}}

    observation = Observation(
        children={("Deployment", "cifar10-canary"): deployment}, pods=[pod(V2, True), pod(V2, False), pod(V1, True)]
    )
    assert reconcile.track_status(md, observation, CANARY) == rollout.TrackStatus(rollout.model_hash(V2), 1)
    assert reconcile.track_status(md, observation, STABLE) == rollout.TrackStatus()


def test_the_status_patch_nulls_keys_dropped_at_any_depth():
    old = {"phase": "Paused", "rollout": {"phase": "Paused", "pausedAt": "t", "failures": {"a": 1}}, "x": 1}
    new = {"phase": "Progressing", "rollout": {"phase": "Progressing", "failures": {}}}
    patch = kube.replacing_merge_patch(old, new)
    assert patch == {
        "phase": "Progressing",
        "x": None,
        "rollout": {"phase": "Progressing", "pausedAt": None, "failures": {"a": None}},
    }


def test_status_shows_a_rollout_under_way_and_one_that_failed():
    facts = status.Facts(generation=2, version="1.0", wanted_replicas=2, ready_replicas=2, rollout_complete=True)
    for phase, ready in (("Progressing", "False"), ("RolledBack", "False"), ("Succeeded", "True")):
        facts.rollout = status.RolloutFacts(phase, "m", {"phase": phase}, "2.0" if phase != "Succeeded" else "", 10, 33)
        new = status.derive({}, facts, "2026-11-28T12:00:00Z")
        assert new["phase"] == ("Serving" if phase == "Succeeded" else phase)
        assert status.condition(new, "Ready")["status"] == ready
        assert new["rollout"] == {"phase": phase}
    assert (new["canaryVersion"], new["canaryWeight"]) == ("", 33)
    facts.rollout = status.RolloutFacts("RolledBack", "analysis failed", {}, "2.0")
    assert status.condition(status.derive({}, facts, "t"), "Stalled")["reason"] == "RolledBack"
