"""The operator against the real control plane: apply, Ready, edit, drift, delete, bad references."""

from __future__ import annotations

import json
import time

import pytest

from canaria import kube, reconcile
from tests.integration.conftest import LOGS, apply, condition, get_json, kubectl, patch_md, wait_for
from tests.support.manifests import example_model_deployment
from tests.support.processes import free_port

pytestmark = pytest.mark.cluster
AUDIT_LOG = LOGS / "audit.log"  # the devcluster's API server logs every request's metadata there


def stable_config_map(namespace: str) -> str:
    """The ConfigMap the stable Deployment mounts (immutable, named by its content: cifar10-stable-config-<hash>)."""
    template = get_json("-n", namespace, "deployment", "cifar10-stable")["spec"]["template"]
    (name,) = [v["configMap"]["name"] for v in template["spec"]["volumes"] if v["name"] == "config"]
    return str(name)


def ready(namespace: str, name: str = "cifar10", timeout: str = "60s") -> dict:
    kubectl("wait", "-n", namespace, "--for=condition=Ready", f"--timeout={timeout}", f"md/{name}")
    return get_json("-n", namespace, f"md/{name}")


def test_apply_creates_owned_children_and_becomes_ready(operator, namespace):
    apply(namespace, example_model_deployment())
    md = ready(namespace)
    assert md["status"]["phase"] == "Serving"
    assert md["status"]["stableVersion"] == "1.0"
    assert md["status"]["ready"] == "1/1"
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    assert md["status"]["url"] == f"http://cifar10.{namespace}.svc.cluster.local:8080/predictions/cifar10"
    for kind, name in [
        ("deployment", "cifar10-stable"),
        ("configmap", stable_config_map(namespace)),
        ("service", "cifar10"),
        ("servicemonitor", "cifar10"),
    ]:
        child = get_json("-n", namespace, kind, name)
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == md["metadata"]["uid"], kind
    service_ports = {p["port"] for p in get_json("-n", namespace, "service", "cifar10")["spec"]["ports"]}
    assert service_ports == {8080, 8082}


def test_printer_columns_show_phase_versions_and_readiness(operator, namespace):
    apply(namespace, example_model_deployment())
    ready(namespace)
    table = kubectl("get", "md", "-n", namespace).stdout.split("\n")
    assert table[0].split() == ["NAME", "PHASE", "STABLE", "CANARY", "WEIGHT", "READY", "AGE"]
    row = table[1].split()
    assert row[:3] == ["cifar10", "Serving", "1.0"] and "1/1" in row


def test_serving_edit_updates_in_place(operator, namespace):
    apply(namespace, example_model_deployment())
    ready(namespace)
    uid = get_json("-n", namespace, "deployment", "cifar10-stable")["metadata"]["uid"]
    patch_md(namespace, {"serving": {"replicas": 2, "batching": {"maxBatchSize": 4}}})
    md = wait_for(
        lambda: (
            (m := get_json("-n", namespace, "md/cifar10"))["status"].get("ready") == "2/2"
            and condition(m, "Ready").get("status") == "True"
            and m
        ),
        what="2/2 ready after the edit",
    )
    deployment = get_json("-n", namespace, "deployment", "cifar10-stable")
    assert deployment["metadata"]["uid"] == uid  # updated, not recreated
    assert deployment["spec"]["replicas"] == 2
    config = wait_for(  # the old ConfigMap goes once its last pod does
        lambda: (
            get_json("-n", namespace, "configmap", stable_config_map(namespace))["data"]["config.properties"]
            if len(get_json("-n", namespace, "configmap", "-l", "serving.canaria.dev/track=stable")["items"]) == 1
            else None
        ),
        what="one stable ConfigMap",
    )
    assert '"batchSize":4' in config
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]


def test_drift_is_repaired(operator, namespace):
    apply(namespace, example_model_deployment())
    ready(namespace)
    kubectl("delete", "-n", namespace, "service", "cifar10")
    wait_for(
        lambda: kubectl("get", "-n", namespace, "service", "cifar10", check=False).returncode == 0,
        what="the deleted Service to be recreated",
    )
    kubectl("scale", "-n", namespace, "deployment", "cifar10-stable", "--replicas=3")
    wait_for(
        lambda: get_json("-n", namespace, "deployment", "cifar10-stable")["spec"]["replicas"] == 1,
        what="the hand-scaled Deployment to return to 1 replica",
    )
    config_map = stable_config_map(namespace)
    tampered = kubectl(
        "patch", "-n", namespace, "configmap", config_map, "--type=merge", "-p", '{"data":{"a":"b"}}', check=False
    )
    assert tampered.returncode != 0 and "immutable" in tampered.stderr  # a track's configuration cannot drift
    kubectl("delete", "-n", namespace, "configmap", config_map)
    wait_for(
        lambda: kubectl("get", "-n", namespace, "configmap", config_map, check=False).returncode == 0,
        what="the deleted ConfigMap to be recreated",
    )


def test_delete_garbage_collects_children(operator, namespace):
    apply(namespace, example_model_deployment())
    ready(namespace)
    kubectl("delete", "-n", namespace, "md", "cifar10", "--wait=true")

    def gone() -> bool:
        left = get_json(
            "-n",
            namespace,
            "deployments,services,configmaps,servicemonitors,pods",
            "-l",
            "serving.canaria.dev/model-deployment=cifar10",
        )["items"]
        return not left

    wait_for(gone, timeout=60, what="children to be garbage-collected")


def test_no_finalizer_so_a_model_deployment_can_be_deleted_while_the_operator_is_down(operator, namespace):
    apply(namespace, example_model_deployment())
    md = ready(namespace)
    # Kopf would add its finalizer for a Kopf timer or a deletion handler: then a namespace whose operator is
    # gone (uninstalled, or stopped first) never finishes deleting.
    assert not md["metadata"].get("finalizers"), md["metadata"]["finalizers"]


def test_missing_pvc_is_reported_and_resolves_when_created(operator, namespace):
    apply(namespace, example_model_deployment(model={"storageUri": "pvc://model-files/cifar10"}))
    md = wait_for(
        lambda: (m := get_json("-n", namespace, "md/cifar10")).get("status", {}).get("phase") == "Failed" and m,
        what="phase Failed",
    )
    ready_condition = condition(md, "Ready")
    assert ready_condition["status"] == "False" and ready_condition["reason"] == "PVCNotFound"
    assert "spec.model.storageUri" in ready_condition["message"] and "model-files" in ready_condition["message"]
    assert condition(md, "Stalled")["status"] == "True"
    assert kubectl("get", "-n", namespace, "deployment", "cifar10-stable", check=False).returncode != 0
    events = get_json("-n", namespace, "events", "--field-selector", "involvedObject.name=cifar10")["items"]
    assert any(e["reason"] == "PVCNotFound" and e["type"] == "Warning" for e in events)
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {namespace}-model-files}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  hostPath: {{path: /tmp/{namespace}}}
  claimRef: {{namespace: {namespace}, name: model-files}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: model-files}}
spec: {{accessModes: [ReadOnlyMany], storageClassName: "", volumeName: {namespace}-model-files,
       resources: {{requests: {{storage: 1Gi}}}}}}
""",
    )
    ready(namespace, timeout="90s")


def test_a_bad_edit_keeps_the_serving_version(operator, namespace):
    apply(namespace, example_model_deployment())
    ready(namespace)
    before = get_json("-n", namespace, "deployment", "cifar10-stable")
    patch_md(namespace, {"model": {"version": "2.0", "storageUri": "pvc://missing/cifar10"}})
    md = wait_for(
        lambda: (m := get_json("-n", namespace, "md/cifar10"))["status"].get("phase") == "Degraded" and m,
        what="phase Degraded",
    )
    assert md["status"]["stableVersion"] == "1.0"
    assert condition(md, "Available")["status"] == "True"
    after = get_json("-n", namespace, "deployment", "cifar10-stable")
    assert after["spec"]["template"] == before["spec"]["template"]
    assert after["status"].get("readyReplicas") == 1


def test_rejected_child_is_reported_not_retried_hot(operator, namespace):
    # Pod fields pass through the ModelDeployment schema as is; the Deployment's validation catches this one.
    apply(namespace, example_model_deployment(serving={"tolerations": [{"key": "gpu", "operator": "Sometimes"}]}))
    md = wait_for(
        lambda: (m := get_json("-n", namespace, "md/cifar10")).get("status", {}).get("phase") == "Failed" and m,
        what="phase Failed",
    )
    message = condition(md, "Ready")["message"]
    assert condition(md, "Ready")["reason"] == "Rejected"
    assert "tolerations[0].operator" in message and "Sometimes" in message
    # Kopf considers its handler done (it retries failed handlers only while their progress annotation is
    # there)...
    annotations = wait_for(
        lambda: (
            (a := get_json("-n", namespace, "md/cifar10")["metadata"].get("annotations", {}))
            and "serving.canaria.dev/last-handled-configuration" in a
            and a
        ),
        what="Kopf to record the handled spec",
    )
    assert "serving.canaria.dev/model_deployment_changed" not in annotations
    # ...and the operator sends nothing more about it: a window that would hold three of its retries.
    window = 1 + sum(reconcile.retry_delay(failures) for failures in (1, 2, 3))
    assert operator_requests_during(namespace, window) == []


def test_a_temporary_api_failure_during_a_child_event_is_retried(operator, namespace):
    apply(namespace, example_model_deployment())
    ready(namespace)
    # Every create or update of a Service in this namespace fails with 500, as from an API server in
    # trouble: a validating webhook that nothing answers, with failurePolicy Fail.
    webhook = unanswered_webhook(namespace, "services")
    kubectl("apply", "-f", "-", input=json.dumps(webhook))
    try:
        dry_run = ["create", "service", "clusterip", "probe", "--tcp=80", "-n", namespace, "--dry-run=server"]
        wait_for(
            lambda: "failed calling webhook" in kubectl(*dry_run, check=False).stderr,
            what="the webhook to take effect",
        )
        since = AUDIT_LOG.stat().st_size
        kubectl("delete", "-n", namespace, "service", "cifar10")  # a child event: Kopf never retries its handler
        wait_for(
            lambda: any(
                event["verb"] == "patch" and event["responseStatus"]["code"] == 500
                for event in operator_requests(namespace, since)
                if event["objectRef"].get("resource") == "services"
            ),
            what="the operator's apply of the Service to fail with 500",
        )
    finally:
        kubectl("delete", "validatingwebhookconfiguration", webhook["metadata"]["name"])
    # Nothing else happens to the object now: only the operator's retry recreates the Service. The window is
    # the longest back-off, far shorter than the periodic resync that used to be the only way out.
    assert reconcile.RETRY_MAX_SECONDS < reconcile.RESYNC_SECONDS / 2
    wait_for(
        lambda: kubectl("get", "-n", namespace, "service", "cifar10", check=False).returncode == 0,
        timeout=reconcile.RETRY_MAX_SECONDS + 5,
        what="the retry to recreate the Service",
    )


def unanswered_webhook(namespace: str, resource: str) -> dict:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": f"{namespace}-unavailable"},
        "webhooks": [
            {
                "name": "unavailable.canaria.test",
                "clientConfig": {"url": f"https://127.0.0.1:{free_port()}/"},  # nothing listens there
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": [resource],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 2,
            }
        ],
    }


def operator_requests(namespace: str, since: int) -> list[dict]:
    """What the operator (its own client, or Kopf's) asked the API server about objects of `namespace`, as
    the audit log recorded it from byte offset `since` on; watches left out."""
    with AUDIT_LOG.open("rb") as log:
        log.seek(since)
        lines = log.read().decode(errors="replace").splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    return [
        event
        for event in events
        if event.get("stage") == "ResponseComplete"
        and event.get("verb") != "watch"
        and (event.get("objectRef") or {}).get("namespace") == namespace
        and event.get("userAgent", "").startswith((kube.USER_AGENT, "kopf/"))
    ]


def operator_requests_during(namespace: str, seconds: float) -> list[str]:
    since = AUDIT_LOG.stat().st_size
    time.sleep(seconds)
    return [f"{event['verb']} {event['requestURI']}" for event in operator_requests(namespace, since)]


def test_switching_the_service_monitor_off_deletes_it(operator, namespace):
    apply(namespace, example_model_deployment())
    ready(namespace)
    patch_md(namespace, {"monitoring": {"serviceMonitor": {"enabled": False}}})
    wait_for(
        lambda: kubectl("get", "-n", namespace, "servicemonitor", "cifar10", check=False).returncode != 0,
        what="the ServiceMonitor to be deleted",
    )
    md = get_json("-n", namespace, "md/cifar10")
    assert condition(md, "ServiceMonitorReady")["reason"] == "Disabled"


def test_scaled_to_zero_is_ready_and_not_available(operator, namespace):
    apply(namespace, example_model_deployment())
    ready(namespace)
    patch_md(namespace, {"serving": {"replicas": 0}})
    md = wait_for(
        lambda: (m := get_json("-n", namespace, "md/cifar10"))["status"].get("phase") == "ScaledToZero" and m,
        what="phase ScaledToZero",
    )
    assert md["status"]["ready"] == "0/0" and md["status"]["stableVersion"] == "1.0"
    assert condition(md, "Ready")["status"] == "True" and condition(md, "Ready")["reason"] == "ScaledToZero"
    assert condition(md, "Available")["status"] == "False" and condition(md, "Available")["reason"] == "ScaledToZero"
    wait_for(
        lambda: not get_json("-n", namespace, "pods", "-l", "serving.canaria.dev/model-deployment=cifar10")["items"],
        what="the pods to go",
    )
    ready(namespace)  # kubectl wait --for=condition=Ready returns for a scaled-to-zero model
