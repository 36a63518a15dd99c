from __future__ import annotations

import json

from canaria import status
from canaria.status import Facts, Problem

T0, T1 = "2026-11-28T00:00:00Z", "2026-11-28T00:05:00Z"


def facts(**overrides) -> Facts:
    base = {
        "generation": 2,
        "version": "1.0",
        "wanted_replicas": 2,
        "ready_replicas": 2,
        "rollout_complete": True,
        "url": "http://cifar10.models.svc.cluster.local:8080/predictions/cifar10",
    }
    return Facts(**{**base, **overrides})


def conditions(new) -> dict[str, str]:
    return {c["type"]: c["status"] for c in new["conditions"]}


def test_ready_when_the_rollout_is_complete_and_nothing_blocks():
    new = status.derive({}, facts(), T0)
    assert new["phase"] == "Serving" and new["stableVersion"] == "1.0" and new["ready"] == "2/2"
    assert conditions(new) == {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
        "Available": "True",
        "ResolvedRefs": "True",
        "ServiceMonitorReady": "True",
    }
    assert new["observedGeneration"] == 2


def test_pending_then_reconciling_while_pods_load():
    new = status.derive({}, facts(ready_replicas=0, rollout_complete=False), T0)
    assert new["phase"] == "Pending"
    assert conditions(new)["Ready"] == "False" and conditions(new)["Reconciling"] == "True"
    assert status.condition(new, "Ready")["reason"] == "RollingOut"


def test_an_unresolved_reference_stalls_and_names_the_field_while_old_pods_serve():
    problem = Problem("PVCNotFound", "spec.model.storageUri: PersistentVolumeClaim 'x' does not exist")
    old = status.derive({}, facts(), T0)
    new = status.derive(old, facts(unresolved=[problem], rollout_complete=False), T1)
    assert new["phase"] == "Degraded"
    assert new["stableVersion"] == "1.0"  # still serving the old version
    stalled = status.condition(new, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "PVCNotFound"
    assert "spec.model.storageUri" in status.condition(new, "Ready")["message"]


def test_failed_when_nothing_serves_and_something_blocks():
    new = status.derive(
        {}, facts(ready_replicas=0, rollout_complete=False, failures=[Problem("PackagingFailed", "bad checksum")]), T0
    )
    assert new["phase"] == "Failed" and conditions(new)["Ready"] == "False"


def test_last_transition_time_changes_only_with_the_status_value():
    first = status.derive({}, facts(), T0)
    same = status.derive(first, facts(), T1)
    assert same == first  # no change, so no status write
    flipped = status.derive(first, facts(ready_replicas=1, rollout_complete=False), T1)
    ready = status.condition(flipped, "Ready")
    assert ready["lastTransitionTime"] == T1
    assert status.condition(flipped, "ResolvedRefs")["lastTransitionTime"] == T0


def test_service_monitor_problem_does_not_block_ready():
    new = status.derive({}, facts(service_monitor=Problem("CRDNotInstalled", "install it")), T0)
    assert conditions(new)["Ready"] == "True" and conditions(new)["ServiceMonitorReady"] == "False"


def test_events_only_on_transitions():
    first = status.derive({}, facts(ready_replicas=0, rollout_complete=False), T0)
    assert status.transition_event({}, first) == ("Normal", "RollingOut", first["message"])
    ready = status.derive(first, facts(), T1)
    assert status.transition_event(first, ready)[1] == "Serving"
    assert status.transition_event(ready, status.derive(ready, facts(), T1)) is None
    broken = status.derive(ready, facts(failures=[Problem("CrashLoop", "boom")], rollout_complete=False), T1)
    assert status.transition_event(ready, broken) == ("Warning", "CrashLoop", broken["message"])


def pod(init_state=None, container_state=None, last=None):
    body = {"metadata": {"name": "p"}, "status": {}}
    if init_state:
        body["status"]["initContainerStatuses"] = [{"name": "package", "state": init_state}]
    if container_state:
        body["status"]["containerStatuses"] = [
            {"name": "torchserve", "state": container_state, "lastState": last or {}}
        ]
    return body


def test_packaging_failure_surfaces_the_termination_message():
    failed = pod(
        init_state={
            "terminated": {"exitCode": 2, "message": "canaria-package: bad checksum (check spec.model.sha256)\n"}
        }
    )
    (problem,) = status.pod_failures([failed])
    assert problem.reason == "PackagingFailed" and problem.message.endswith("(check spec.model.sha256)")
    assert status.pod_failures([pod(init_state={"terminated": {"exitCode": 0}})]) == []


def test_crash_loop_is_reported_with_the_last_reason():
    looping = pod(
        container_state={"waiting": {"reason": "CrashLoopBackOff"}},
        last={"terminated": {"exitCode": 1, "reason": "OOMKilled"}},
    )
    (problem,) = status.pod_failures([looping])
    assert problem.reason == "CrashLoop" and "OOMKilled" in problem.message


def test_deployment_complete_needs_current_generation_and_all_ready():
    dep = {
        "metadata": {"generation": 4},
        "status": {"observedGeneration": 4, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2},
    }
    assert status.deployment_complete(dep, 2) == (True, 2)
    assert status.deployment_complete({**dep, "metadata": {"generation": 5}}, 2) == (False, 2)
    surging = {**dep, "status": {**dep["status"], "replicas": 3}}
    assert status.deployment_complete(surging, 2)[0] is False
    assert status.deployment_complete(None, 2) == (False, 0)


def test_image_pull_failure_and_bad_pod_config_stall():
    pulling = pod(container_state={"waiting": {"reason": "ImagePullBackOff", "message": "not found: ts:0.99"}})
    (problem,) = status.pod_failures([pulling])
    assert problem.reason == "ImagePullFailed" and "ts:0.99" in problem.message
    config = pod(
        container_state={"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "s3" not found'}}
    )
    assert status.pod_failures([config])[0].reason == "InvalidPodConfig"


def test_unschedulable_pods_are_explained_while_waiting():
    waiting = {
        "metadata": {"name": "p"},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims",
                }
            ]
        },
    }
    notes = status.pods_waiting([waiting])
    new = status.derive({}, facts(ready_replicas=0, rollout_complete=False, waiting=notes), T0)
    assert new["phase"] == "Pending" and "unbound immediate PersistentVolumeClaims" in new["message"]


def test_a_long_list_of_problems_is_cut_to_the_schema_limits():
    many = [Problem("PackagingFailed", f"pod p{i}: " + "x" * 1000) for i in range(40)]
    new = status.derive({}, facts(ready_replicas=0, rollout_complete=False, failures=many), T0)
    assert len(new["message"]) == 4096 and new["message"].endswith(status.TRUNCATION_MARK)
    assert new["message"].startswith("pod p0: xxx")
    ready = status.condition(new, "Ready")["message"]
    assert len(ready) == 32768 and ready.endswith(status.TRUNCATION_MARK)
    assert status.derive(new, facts(ready_replicas=0, rollout_complete=False, failures=many), T1) == new


def test_truncation_counts_characters_not_bytes():
    assert status.truncated("é" * 10, 10) == "é" * 10
    assert status.truncated("🦜" * 11, 10) == "🦜" * 4 + status.TRUNCATION_MARK


def test_scaled_to_zero_is_ready_but_not_available_and_keeps_the_stable_version():
    serving = status.derive({}, facts(), T0)
    scaled = status.derive(serving, facts(version="2.0", wanted_replicas=0, ready_replicas=0), T1)
    assert scaled["phase"] == "ScaledToZero" and scaled["ready"] == "0/0"
    assert conditions(scaled) == {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
        "Available": "False",
        "ResolvedRefs": "True",
        "ServiceMonitorReady": "True",
    }
    assert status.condition(scaled, "Ready")["reason"] == "ScaledToZero"
    assert status.condition(scaled, "Available")["reason"] == "ScaledToZero"
    assert scaled["stableVersion"] == "1.0"  # 2.0 never served
    assert status.transition_event(serving, scaled) == ("Normal", "ScaledToZero", scaled["message"])
    fresh = status.derive({}, facts(wanted_replicas=0, ready_replicas=0), T0)
    assert fresh["phase"] == "ScaledToZero" and fresh["stableVersion"] == ""


def test_scaling_down_to_zero_waits_for_the_pods_to_go():
    terminating = status.derive({}, facts(wanted_replicas=0, ready_replicas=1, rollout_complete=False), T0)
    assert terminating["phase"] != "ScaledToZero" and conditions(terminating)["Reconciling"] == "True"


DIGEST = "blake3:" + "ab" * 32


def serving_pod(name, version, digest=DIGEST, ready=True, created="2026-11-28T00:00:00Z"):
    message = json.dumps({"digest": digest, "bytes": 10}) + "\n" if digest else ""
    return {
        "metadata": {"name": name, "labels": {"serving.canaria.dev/version": version}, "creationTimestamp": created},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "initContainerStatuses": [
                {"name": "package", "state": {"terminated": {"exitCode": 0, "message": message}}}
            ],
        },
    }


def test_the_packagers_termination_message_gives_the_archive_digest():
    assert status.archive_digest(serving_pod("p", "1.0")) == DIGEST
    failed = serving_pod("p", "1.0")
    failed["status"]["initContainerStatuses"][0]["state"]["terminated"] = {"exitCode": 1, "message": '{"digest": 1}'}
    assert status.archive_digest(failed) is None
    assert status.archive_digest(serving_pod("p", "1.0", digest=None)) is None  # an older packager
    assert status.archive_digest(serving_pod("p", "1.0", digest="blake3:<script>")) is None
    assert status.archive_digest({"metadata": {"name": "p"}, "status": {}}) is None


def test_ready_pods_give_one_digest_per_version_the_newest_pod_winning():
    newer = "blake3:" + "cd" * 32
    pods = [
        serving_pod("a", "1.0"),
        serving_pod("b", "1.0", digest=newer, created="2026-11-28T00:01:00Z"),
        serving_pod("c", "2.0", ready=False),
    ]
    assert status.ready_pod_digests(pods, "serving.canaria.dev/version") == {"1.0": newer}


def test_model_digest_is_the_stable_versions_and_survives_scaling_to_zero():
    serving = status.derive({}, facts(digests={"1.0": DIGEST}), T0)
    assert serving["modelDigest"] == DIGEST
    assert "modelDigest" not in status.derive({}, facts(ready_replicas=0, rollout_complete=False), T0)
    scaled = status.derive(serving, facts(wanted_replicas=0, ready_replicas=0), T1)
    assert scaled["modelDigest"] == DIGEST
    rolling = status.derive(serving, facts(version="2.0", ready_replicas=1, rollout_complete=False), T1)
    assert rolling["stableVersion"] == "1.0" and rolling["modelDigest"] == DIGEST
    newer = "blake3:" + "ef" * 32
    promoted = status.derive(rolling, facts(version="2.0", digests={"1.0": DIGEST, "2.0": newer}), T1)
    assert promoted["stableVersion"] == "2.0" and promoted["modelDigest"] == newer
    unknown = status.derive(rolling, facts(version="2.0"), T1)  # ready pods that report no digest
    assert unknown["stableVersion"] == "2.0" and "modelDigest" not in unknown


def test_the_canarys_archive_digest_shows_beside_the_stable_ones_while_a_canary_runs():
    canary = "blake3:" + "ab" * 32
    rollout = status.RolloutFacts("Progressing", "step 1", {}, "2.0", 10, 33, canary_ready=1, canary_digest=canary)
    serving = status.derive({}, facts(digests={"1.0": DIGEST}), T0)
    progressing = status.derive(serving, facts(digests={"1.0": DIGEST}, rollout=rollout), T1)
    assert progressing["modelDigest"] == DIGEST and progressing["canaryModelDigest"] == canary
    ended = status.RolloutFacts("Succeeded", "promoted", {}, "", canary_digest=canary)
    assert "canaryModelDigest" not in status.derive(progressing, facts(version="2.0", rollout=ended), T1)
