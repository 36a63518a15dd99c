"""Least privilege, proven from the API server's audit log: the operator runs with the chart's ServiceAccount
through its scenarios, and the (verb, resource) pairs it used are compared with what the chart grants.
Nothing used may be missing, and nothing granted may go unused except the EXCEPTIONS below.

Runs on a control plane of its own (not the shared one): a cluster-wide operator must not touch other tests'
objects, and the audit log then holds only this module's traffic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devcluster import Cluster
from tests.integration.conftest import ROOT, apply, condition, get_json, kubectl, patch_md, wait_for
from tests.integration.test_chart import Release, chart_operator, exists, install, new_release
from tests.support import clusters
from tests.support.manifests import example_model_deployment

pytestmark = pytest.mark.cluster

NON_RESOURCE = "non-resource"
SERVICE_MONITOR_CRD_FILE = "monitoring.coreos.com_servicemonitors.yaml"
HTTP_ROUTE_CRD_FILE = "gateway.networking.k8s.io_httproutes.yaml"  # GatewayAPI mode's route (no Gateway needed)
Grant = tuple[str, str, str]  # (API group, resource[/subresource] or non-resource URL pattern, verb)

# Granted but never seen in the audit log, each with the path that needs it.
EXCEPTIONS: dict[Grant, str] = {
    ("serving.canaria.dev", "modeldeployments/finalizers", "update"): (
        "children's ownerReferences set blockOwnerDeletion: the OwnerReferencesPermissionEnforcement admission "
        "plugin (OpenShift, hardened clusters; not enabled here) then checks this permission. It is an "
        "admission check, not a request, so no audit event ever shows it."
    ),
}


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A control plane of its own, with our CRD and the ServiceMonitor's and HTTPRoute's (no add-ons); KUBECONFIG
    and PATH (kubectl, helm) point at it meanwhile."""
    state = tmp_path_factory.mktemp("audited") / "state"
    with clusters.private_cluster(state, (SERVICE_MONITOR_CRD_FILE, HTTP_ROUTE_CRD_FILE)) as private:
        yield private


@pytest.fixture
def release(audited: Cluster) -> Iterator[Release]:
    with new_release() as made:
        yield made


# -- what was used: the audit log -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    grant: Grant
    namespace: str | None
    forbidden: bool


def audit_events(cluster: Cluster) -> Iterator[dict[str, Any]]:
    """Every event of the API server's audit log, the rotated file first."""
    logs = cluster.layout.audit_log
    assert logs.is_file(), f"no audit log at {logs}: the API server runs without --audit-log-path"
    for path in [*sorted(logs.parent.glob("audit-*.log")), logs]:
        with path.open() as lines:
            yield from (json.loads(line) for line in lines)


def requests_of(events: Iterable[dict[str, Any]], username: str) -> set[Request]:
    """The requests one user made, as RBAC sees them. A server-side apply that created its object (201) was
    also authorized as "create"."""
    made = set()
    for event in events:
        if event["user"]["username"] != username:
            continue
        forbidden = event.get("annotations", {}).get("authorization.k8s.io/decision") == "forbid"
        ref = event.get("objectRef")
        if ref is None:
            path = event["requestURI"].split("?")[0]
            made.add(Request((NON_RESOURCE, path, event["verb"]), None, forbidden))
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        group = ref.get("apiGroup", "")
        made.add(Request((group, resource, event["verb"]), ref.get("namespace"), forbidden))
        if event["verb"] == "patch" and event.get("responseStatus", {}).get("code") == 201:
            made.add(Request((group, resource, "create"), ref.get("namespace"), forbidden))
    return made


# -- what was granted: the release's RBAC objects ---------------------------------------------------------------


def grants_of(rules: Iterable[dict[str, Any]]) -> set[Grant]:
    granted = set()
    for rule in rules:
        for verb in rule["verbs"]:
            granted |= {(NON_RESOURCE, url, verb) for url in rule.get("nonResourceURLs", [])}
            granted |= {(g, r, verb) for g in rule.get("apiGroups", []) for r in rule.get("resources", [])}
    return granted


def covering(grant: Grant, granted: set[Grant]) -> Grant | None:
    """The grant that allows this used pair: equal, or a non-resource URL pattern ending in "*"."""
    if grant in granted:
        return grant
    group, path, verb = grant
    if group != NON_RESOURCE:
        return None
    patterns = (g for g in granted if g[0] == NON_RESOURCE and g[2] == verb and g[1].endswith("*"))
    return next((g for g in patterns if path.startswith(g[1][:-1])), None)


def assert_exactly_what_is_used(used: set[Request], granted: set[Grant]) -> None:
    denied = sorted({r.grant for r in used if r.forbidden})
    assert not denied, f"the operator was refused: {denied}"
    missing = sorted({r.grant for r in used if covering(r.grant, granted) is None})
    assert not missing, f"used but not granted: {missing}"
    exercised = {covering(r.grant, granted) for r in used}
    unused = sorted(granted - exercised - EXCEPTIONS.keys())
    assert not unused, f"granted but never used in any scenario (remove them, or add an exception): {unused}"
    assert not (EXCEPTIONS.keys() & exercised), "an exception is used after all: drop it from EXCEPTIONS"
    assert EXCEPTIONS.keys() <= granted, "an exception the chart does not grant: drop it from EXCEPTIONS"


def leader_election_grants(release: Release) -> set[Grant]:
    """The Role for the operator's Lease, in the release namespace (the chart's environment turns election on)."""
    return grants_of(get_json("-n", release.namespace, "role", f"{release.name}-leader-election")["rules"])


def assert_only_its_own_lease(events: Iterable[dict[str, Any]], release: Release) -> None:
    """Leader election touched one Lease, the release's, in the release namespace (get and update are granted by
    that name only; create cannot be limited by name)."""
    leases = {
        (event["objectRef"].get("namespace"), event["objectRef"].get("name") or release.name)
        for event in events
        if event["user"]["username"] == release.service_account
        and (event.get("objectRef") or {}).get("resource") == "leases"
    }
    assert leases == {(release.namespace, release.name)}, leases


# -- the scenarios ----------------------------------------------------------------------------------------------


def settled(namespace: str, name: str, status: str = "True", reason: str | None = None) -> dict[str, Any]:
    """The ModelDeployment once its Ready condition, for its current generation, has this status (and reason)."""

    def check() -> dict[str, Any] | None:
        md = get_json("-n", namespace, "md", name)
        ready = condition(md, "Ready")
        current = ready.get("observedGeneration") == md["metadata"]["generation"]
        matches = ready.get("status") == status and reason in (None, ready.get("reason"))
        return md if current and matches else None

    result: dict[str, Any] = wait_for(check, timeout=90, what=f"{name}: Ready={status} {reason or ''}")
    return result


def persistent_volume(namespace: str, claim: str) -> str:
    return f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {namespace}-{claim}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  hostPath: {{path: /tmp/{namespace}}}
  claimRef: {{namespace: {namespace}, name: {claim}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}, namespace: {namespace}}}
spec: {{accessModes: [ReadOnlyMany], storageClassName: "", volumeName: {namespace}-{claim},
       resources: {{requests: {{storage: 1Gi}}}}}}
"""


def run_scenarios(namespace: str) -> None:
    """What a model owner does: create, edit (a canary rollout), GatewayAPI mode, scale, ServiceMonitor off and
    on, a model whose PVC appears
    later, one whose S3 credentials Secret is missing, then create the Secret, delete."""
    # A one-step canary judged by its pause alone: the edit ends promoted, the canary and old ConfigMaps deleted.
    quick = {"steps": [{"weight": 50, "pause": "1s"}], "analysis": {"metrics": []}}
    apply(namespace, example_model_deployment("plain", rollout=quick))
    settled(namespace, "plain")
    patch_md(namespace, {"model": {"version": "1.1"}}, "plain")
    settled(namespace, "plain")
    wait_for(lambda: not exists("-n", namespace, "deployment", "plain-canary"), what="the canary deleted")
    gateway = {"mode": "GatewayAPI", "gateway": {"parentRefs": [{"name": "canaria", "namespace": "default"}]}}
    apply(namespace, example_model_deployment("routed", traffic=gateway))
    settled(namespace, "routed")
    wait_for(lambda: exists("-n", namespace, "httproute", "routed"), what="the HTTPRoute")
    patch_md(namespace, {"traffic": {"mode": "Service", "gateway": None}}, "routed")
    wait_for(lambda: not exists("-n", namespace, "httproute", "routed"), what="the HTTPRoute deleted")
    wait_for(lambda: not exists("-n", namespace, "service", "routed-canary"), what="the track Services deleted")
    patch_md(namespace, {"serving": {"replicas": 2}}, "plain")
    wait_for(lambda: settled(namespace, "plain")["status"].get("readyReplicas") == 2, what="2 ready replicas")
    patch_md(namespace, {"monitoring": {"serviceMonitor": {"enabled": False}}}, "plain")
    wait_for(lambda: not exists("-n", namespace, "servicemonitor", "plain"), what="the ServiceMonitor deleted")
    patch_md(namespace, {"monitoring": {"serviceMonitor": {"enabled": True}}}, "plain")
    wait_for(lambda: exists("-n", namespace, "servicemonitor", "plain"), what="the ServiceMonitor back")

    apply(namespace, example_model_deployment("from-claim", model={"storageUri": "pvc://weights/cifar10"}))
    settled(namespace, "from-claim", "False", "PVCNotFound")
    kubectl("apply", "-f", "-", input=persistent_volume(namespace, "weights"))
    settled(namespace, "from-claim")  # the PVC watch, not the resync

    s3 = {"storageUri": "s3://models/cifar10", "s3": {"credentialsSecret": "s3-credentials"}}
    apply(namespace, example_model_deployment("from-s3", model=s3))
    settled(namespace, "from-s3", "False", "SecretNotFound")

    kubectl("delete", "-n", namespace, "md", "plain", "--wait=true")
    wait_for(lambda: not exists("-n", namespace, "deployment", "plain-stable"), what="children collected")


def test_cluster_wide_grants_are_exactly_what_the_operator_uses(
    audited: Cluster, release: Release, tmp_path: Path
) -> None:
    models = release.create_namespace(f"audit-models-{release.suffix}")
    install(release)
    with chart_operator(release, tmp_path) as run:
        run_scenarios(models)
        assert not run.permission_errors(), run.permission_errors()
    used = requests_of(audit_events(audited), release.service_account)
    granted = grants_of(get_json("clusterrole", release.name)["rules"]) | leader_election_grants(release)
    assert_exactly_what_is_used(used, granted)
    assert_only_its_own_lease(audit_events(audited), release)


def test_namespaced_grants_are_exactly_what_the_operator_uses(
    audited: Cluster, release: Release, tmp_path: Path
) -> None:
    models = release.create_namespace(f"audit-models-{release.suffix}")
    install(release, "--set", f"watchNamespaces={{{models}}}")
    with chart_operator(release, tmp_path) as run:
        run_scenarios(models)
        assert not run.permission_errors(), run.permission_errors()
    used = requests_of(audit_events(audited), release.service_account)
    granted = grants_of(get_json("clusterrole", release.name)["rules"])
    granted |= grants_of(get_json("-n", models, "role", release.name)["rules"]) | leader_election_grants(release)
    assert_exactly_what_is_used(used, granted)
    assert_only_its_own_lease(audit_events(audited), release)
    leases = {r for r in used if r.namespace == release.namespace and r.grant[1] == "leases"}
    elsewhere = {(r.namespace, r.grant) for r in used - leases if r.namespace not in (None, models)}
    assert not elsewhere, f"requests outside the watched namespace: {sorted(elsewhere)}"


def test_the_exceptions_are_documented_in_the_chart() -> None:
    readme = (ROOT / "charts" / "canaria" / "README.md").read_text()
    for group, resource, verb in EXCEPTIONS:
        row = next((line for line in readme.splitlines() if f"`{resource}`" in line and f"`{group}`" in line), "")
        assert re.search(rf"\b{verb}\b", row) and "*Exception*" in row, f"{resource} {verb}: no README row"
