"""The Helm chart, rendered without a cluster: `helm lint` and `helm template`, then the objects checked as data.

Needs the helm binary (`make tools` builds it into .devcluster/bin); without it these tests fail, they do
not skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

import canaria.handlers  # also registers the operator's Kopf handlers, which the RBAC checks read
from canaria import leader, render

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "canaria"
RELEASE, NAMESPACE = "canaria", "canaria-system"
FULLNAME = "canaria"  # the release name contains the chart name, so it is used as is
KUBE_VERSION = "1.30.0"  # the oldest Kubernetes the chart supports (Chart.yaml kubeVersion)
WATCHED = ["team-a", "team-b"]

Object = dict[str, Any]
Rule = dict[str, Any]


def helm_binary() -> str:
    local = ROOT / ".devcluster" / "bin" / "helm"
    if local.is_file():
        return str(local)
    found = shutil.which("helm")
    if found:
        return found
    pytest.fail(
        "helm not found: looked for .devcluster/bin/helm and on PATH. Run `make tools` to build it.", pytrace=False
    )


def helm(*args: str, values: dict[str, Any] | None = None, tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [helm_binary(), *args]
    if values is not None:
        assert tmp is not None
        values_file = tmp / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        argv += ["--values", str(values_file)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def helm_template(tmp_path: Path, values: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
    return helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *extra,
        values=values, tmp=tmp_path,
    )  # fmt: skip


def template(tmp_path: Path, values: dict[str, Any] | None = None, *extra: str) -> list[Object]:
    result = helm_template(tmp_path, values or {}, *extra)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def template_error(tmp_path: Path, values: dict[str, Any]) -> str:
    result = helm_template(tmp_path, values)
    assert result.returncode != 0, f"helm template accepted {values}:\n{result.stdout[:2000]}"
    return result.stderr


def one(objects: list[Object], kind: str, namespace: str | None = None) -> Object:
    found = [
        o for o in objects if o["kind"] == kind and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"expected one {kind} (namespace {namespace}), found {len(found)}"
    return found[0]


def operator_container(objects: list[Object]) -> Object:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]


def env_of(objects: list[Object]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in operator_container(objects)["env"]}


def rules_of(objects: list[Object], kind: str) -> list[Rule]:
    return [rule for o in objects if o["kind"] == kind for rule in o.get("rules", [])]


def grants(rules: Iterable[Rule], group: str, resource: str) -> set[str]:
    """The verbs the rules grant on group/resource."""
    verbs: set[str] = set()
    for rule in rules:
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            verbs.update(rule["verbs"])
    return verbs


@pytest.fixture
def default(tmp_path: Path) -> list[Object]:
    return template(tmp_path)


@pytest.fixture
def namespaced(tmp_path: Path) -> list[Object]:
    return template(tmp_path, {"watchNamespaces": WATCHED})


# -- lint and the objects of a release ----------------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": WATCHED}], ids=["cluster-wide", "namespaced"])
def test_helm_lint_strict_passes(tmp_path: Path, values: dict[str, Any]) -> None:
    result = helm(
        "lint",
        "--strict",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        values=values,
        tmp=tmp_path,
    )
    assert result.returncode == 0, f"helm lint failed:\n{result.stdout}\n{result.stderr}"


LEADER_ELECTION = f"{FULLNAME}-leader-election"  # the Role (and RoleBinding) for the Lease


def test_default_release_objects(default: list[Object]) -> None:
    assert sorted(o["kind"] for o in default) == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "PodDisruptionBudget", "Role", "RoleBinding", "Service",
        "ServiceAccount",
    ]  # fmt: skip
    suffixes = {"Service": "-metrics", "Role": "-leader-election", "RoleBinding": "-leader-election"}
    for obj in default:
        meta = obj["metadata"]
        assert meta["name"] == FULLNAME + suffixes.get(obj["kind"], "")
        assert meta["labels"]["helm.sh/chart"] == "canaria-0.1.0"
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        if not obj["kind"].startswith("Cluster"):
            assert meta["namespace"] == NAMESPACE


def test_fullname_prefixes_release_names_without_the_chart_name(tmp_path: Path) -> None:
    result = helm("template", "ml", str(CHART), "--kube-version", KUBE_VERSION)
    assert result.returncode == 0, result.stderr
    names = {doc["metadata"]["name"] for doc in yaml.safe_load_all(result.stdout) if doc}
    assert names == {"ml-canaria", "ml-canaria-metrics", "ml-canaria-leader-election"}


def test_the_kubernetes_version_floor_is_enforced(tmp_path: Path) -> None:
    result = helm("template", RELEASE, str(CHART), "--kube-version", "1.29.9")
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr or "incompatible" in result.stderr


# -- the operator Deployment --------------------------------------------------------------------------------


def test_two_replicas_roll_with_one_always_running(default: list[Object], tmp_path: Path) -> None:
    """Leader election lets pods overlap: an upgrade starts a new pod before it stops an old one."""
    spec = one(default, "Deployment")["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "app.kubernetes.io/version" not in spec["selector"]["matchLabels"]  # selectors are immutable
    assert one(template(tmp_path, {"replicas": 3}), "Deployment")["spec"]["replicas"] == 3


def test_a_disruption_budget_keeps_one_replica_through_a_drain(default: list[Object], tmp_path: Path) -> None:
    budget = one(default, "PodDisruptionBudget")
    assert budget["metadata"]["namespace"] == NAMESPACE
    assert budget["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": one(default, "Deployment")["spec"]["selector"]["matchLabels"]},
    }
    single = template(tmp_path, {"replicas": 1})
    assert not [o for o in single if o["kind"] == "PodDisruptionBudget"], "one replica: a budget would block drains"
    disabled = template(tmp_path, {"podDisruptionBudget": {"enabled": False}})
    assert not [o for o in disabled if o["kind"] == "PodDisruptionBudget"]


def test_operator_pod_is_locked_down(default: list[Object]) -> None:
    pod = one(default, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the operator image's user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is True  # it talks to the API
    assert pod["serviceAccountName"] == FULLNAME
    for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(forbidden)
    container = operator_container(default)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    for bound in ("requests", "limits"):
        assert set(container["resources"][bound]) == {"cpu", "memory"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "tmp" in {v["name"] for v in pod["volumes"] if "emptyDir" in v} and mounts["/tmp"] == "tmp"


def test_operator_command_line_and_liveness_probe(default: list[Object], namespaced: list[Object]) -> None:
    container = operator_container(default)
    assert container["image"] == "ghcr.io/canaria-dev/canaria-operator:0.1.0"  # tag defaults to appVersion
    assert container["args"] == ["run", "--liveness=http://0.0.0.0:8080/healthz"]
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "healthz", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert operator_container(namespaced)["args"] == [
        "run",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_operator_environment(default: list[Object], tmp_path: Path) -> None:
    env = env_of(default)
    # The chart's default packager image is the one the operator falls back to without the chart.
    assert env["CANARIA_PACKAGER_IMAGE"] == render.Settings.packager_image
    assert env["CANARIA_CLUSTER_DOMAIN"] == render.Settings.cluster_domain
    assert env["CANARIA_WORKERS"] == "20"
    assert env["CANARIA_LOG_LEVEL"] == "INFO"
    assert env["CANARIA_LOG_FORMAT"] == "text"
    custom = env_of(
        template(
            tmp_path,
            {
                "packagerImage": {"repository": "registry.example/packager", "tag": "dev"},
                "clusterDomain": "corp.example",
                "workers": 4,
                "logLevel": "DEBUG",
                "logFormat": "json",
                "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
            },
        )
    )
    assert custom["CANARIA_PACKAGER_IMAGE"] == "registry.example/packager:dev"
    assert custom["CANARIA_CLUSTER_DOMAIN"] == "corp.example"
    assert custom["CANARIA_WORKERS"] == "4"
    assert custom["CANARIA_LOG_LEVEL"] == "DEBUG"
    assert custom["CANARIA_LOG_FORMAT"] == "json"
    assert custom["HTTPS_PROXY"] == "http://proxy:3128"


def pod_env(objects: list[Object], pod: str = "canaria-7d9f-x2x4q") -> dict[str, str]:
    """The operator's environment as the kubelet gives it to a pod of the release (downward API resolved)."""
    fields = {"metadata.name": pod, "metadata.namespace": NAMESPACE}
    return {
        e["name"]: e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in operator_container(objects)["env"]
    }


def test_leader_election_is_on_with_the_lease_the_role_grants(default: list[Object]) -> None:
    env = operator_container(default)["env"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in env
    assert {"name": "CANARIA_LEASE_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in env
    settings = leader.settings_from(pod_env(default, pod="canaria-7d9f-x2x4q"))
    assert settings == leader.ElectionSettings(
        enabled=True, identity="canaria-7d9f-x2x4q", lease_name=FULLNAME, lease_namespace=NAMESPACE
    )
    role = one(default, "Role", NAMESPACE)
    assert all(rule.get("resourceNames", [settings.lease_name]) == [settings.lease_name] for rule in role["rules"])


ALTERNATIVES = {"true": "false", "false": "true", "text": "json", "json": "text"}  # values from a closed set


def changed(value: str) -> str:
    if value in ALTERNATIVES:
        return ALTERNATIVES[value]
    return str(int(value) + 1) if value.isdigit() else f"{value}-changed"


def test_the_operator_reads_every_variable_the_chart_sets(default: list[Object]) -> None:
    """A chart value that the operator ignores is a lie in values.yaml: changing any variable the chart sets changes
    the options (or the leader election settings) the operator starts with."""
    env = pod_env(default)
    assert set(env) >= {
        "CANARIA_PACKAGER_IMAGE", "CANARIA_CLUSTER_DOMAIN", "CANARIA_WORKERS", "CANARIA_LOG_LEVEL",
        "CANARIA_LEADER_ELECTION", "CANARIA_LEASE_NAME", "CANARIA_LEASE_NAMESPACE", "POD_NAME",
    }  # fmt: skip

    def started_with(environ: dict[str, str]) -> tuple[Any, ...]:
        return canaria.handlers.options_from(environ), leader.settings_from(environ)

    for name, value in env.items():
        assert started_with({**env, name: changed(value)}) != started_with(env), (
            f"the chart sets {name}, but the operator ignores it"
        )


def test_digests_pin_images(tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    objects = template(
        tmp_path,
        {
            "image": {"repository": "r.example/op", "tag": "x", "digest": digest, "pullPolicy": "Always"},
            "packagerImage": {"repository": "r.example/pkg", "digest": digest},
        },
    )
    container = operator_container(objects)
    assert container["image"] == f"r.example/op@{digest}"
    assert container["imagePullPolicy"] == "Always"
    assert env_of(objects)["CANARIA_PACKAGER_IMAGE"] == f"r.example/pkg@{digest}"


def test_scheduling_and_metadata_values_reach_the_pod(tmp_path: Path, default: list[Object]) -> None:
    assert "priorityClassName" not in one(default, "Deployment")["spec"]["template"]["spec"]
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}]
            }
        }
    }
    objects = template(
        tmp_path,
        {
            "priorityClassName": "system-cluster-critical",
            "nodeSelector": {"pool": "system"},
            "tolerations": [toleration],
            "affinity": affinity,
            "podAnnotations": {"a.example/b": "c"},
            "podLabels": {"team": "ml"},
            "imagePullSecrets": [{"name": "regcred"}],
            "livenessProbe": {"enabled": False},
        },
    )
    template_ = one(objects, "Deployment")["spec"]["template"]
    pod = template_["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "system"}  # Helm merges maps
    assert pod["tolerations"] == [toleration]
    assert pod["affinity"] == affinity
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert template_["metadata"]["annotations"] == {"a.example/b": "c"}
    assert template_["metadata"]["labels"]["team"] == "ml"
    assert "livenessProbe" not in operator_container(objects)


# -- RBAC -----------------------------------------------------------------------------------------------------
# What the operator really issues is proven against the API server's audit log in
# tests/integration/test_rbac_audit.py; these checks are the fast, cluster-free part.

Grant = tuple[str, str, str]  # (API group, resource or non-resource URL, verb)
NON_RESOURCE = "non-resource"
CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces"), NON_RESOURCE}


def expand(rules: Iterable[Rule]) -> set[Grant]:
    expanded = set()
    for rule in rules:
        for verb in rule["verbs"]:
            expanded |= {(NON_RESOURCE, url, verb) for url in rule.get("nonResourceURLs", [])}
            expanded |= {(g, r, verb) for g in rule.get("apiGroups", []) for r in rule.get("resources", [])}
    return expanded


def is_cluster_scoped(grant: Grant) -> bool:
    return grant[0] == NON_RESOURCE or grant[:2] in CLUSTER_SCOPED


def assert_least_privilege(rules: list[Rule]) -> None:
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "nonResourceURLs", "resourceNames"):
            assert "*" not in rule.get(field, []), f"wildcard in {field}: {rule}"
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
        assert "rbac.authorization.k8s.io" not in rule.get("apiGroups", []), rule
    granted = expand(rules)
    assert {v for g, r, v in granted if r == "secrets"} <= {"get"}, "Secrets: read by name only"
    assert not {v for g, r, v in granted if r in ("pods", "persistentvolumeclaims")} - {"get", "list", "watch"}
    # The garbage collector removes children with their owner; the operator deletes only what an owner that stays
    # no longer needs: a switched-off ServiceMonitor, a finished canary, ConfigMaps no pod uses, GatewayAPI mode's
    # route and track Services.
    deletable = {
        ("monitoring.coreos.com", "servicemonitors"),
        ("apps", "deployments"),
        ("", "configmaps"),
        ("", "services"),
        ("gateway.networking.k8s.io", "httproutes"),
    }
    assert {(g, r) for g, r, v in granted if v == "delete"} <= deletable
    updatable = {("serving.canaria.dev", "modeldeployments/finalizers"), ("coordination.k8s.io", "leases")}
    assert {(g, r) for g, r, v in granted if v == "update"} <= updatable


def kopf_watched_resources() -> set[tuple[str, str]]:
    """(group, plural) of every resource the operator's Kopf handlers watch, from Kopf's registry."""
    registry = kopf.get_default_registry()
    watched = set()
    for part in ("_watching", "_changing", "_spawning", "_indexing", "_webhooks"):
        assert hasattr(registry, part), f"Kopf's registry has no {part}: update kopf_watched_resources()"
        for handler in getattr(registry, part).get_all_handlers():
            selector = handler.selector
            plural = selector.plural or selector.any_name
            assert plural, f"handler {handler.id}: name its resource by plural ({selector})"
            watched.add((selector.group or "", plural))
    return watched


def assert_kopf_can_watch(namespaced_rules: list[Rule], cluster_rules: list[Rule]) -> None:
    watched = kopf_watched_resources()
    assert ("serving.canaria.dev", "modeldeployments") in watched
    for group, plural in watched:  # Kopf lists and watches every resource a handler is registered for
        rules = cluster_rules if (group, plural) in CLUSTER_SCOPED else namespaced_rules
        assert {"list", "watch"} <= grants(rules, group, plural), f"Kopf cannot watch {group}/{plural}"


def documented_grants() -> set[Grant]:
    """The Permissions table of charts/canaria/README.md, as grants."""
    section = (CHART / "README.md").read_text().split("## Permissions", 1)[1]
    documented = set()
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("API group", "") or set(cells[0]) <= {"-"}:
            continue
        group = {"core": "", "non-resource": NON_RESOURCE}.get(cells[0], cells[0].strip("`"))
        for resource in re.findall(r"`([^`]+)`", cells[1]):
            documented |= {(group, resource, verb.strip()) for verb in cells[2].split(",")}
    return documented


LEASE_GRANTS = {("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")}


def leader_election_role(objects: list[Object]) -> Object:
    (role,) = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == LEADER_ELECTION]
    return role


def test_leader_election_may_use_its_own_lease_in_the_release_namespace_only(
    default: list[Object], namespaced: list[Object]
) -> None:
    for objects in (default, namespaced):
        role = leader_election_role(objects)
        assert role["metadata"]["namespace"] == NAMESPACE
        assert_least_privilege(role["rules"])
        assert expand(role["rules"]) == LEASE_GRANTS
        for rule in role["rules"]:  # create cannot be limited by name (the object does not exist yet)
            assert rule.get("resourceNames") == (None if rule["verbs"] == ["create"] else [FULLNAME]), rule
        binding = next(o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == LEADER_ELECTION)
        assert binding["metadata"]["namespace"] == NAMESPACE
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEADER_ELECTION}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
        assert not {g for g in expand(rules_of(objects, "ClusterRole")) if g[1] == "leases"}


def test_cluster_wide_rbac(default: list[Object]) -> None:
    rules = rules_of(default, "ClusterRole")
    assert_least_privilege(rules)
    assert_kopf_can_watch(rules, rules)
    assert [o["metadata"]["name"] for o in default if o["kind"] == "Role"] == [LEADER_ELECTION]
    namespaces_read = {("", "namespaces", "list"), ("", "namespaces", "watch")}
    assert expand(rules) | LEASE_GRANTS == documented_grants() - namespaces_read, (
        "the README's Permissions table and the ClusterRole differ (namespaces are read only in namespaced mode)"
    )
    binding = one(default, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULLNAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def test_watch_namespaces_get_a_role_each_and_nothing_namespaced_cluster_wide(
    namespaced: list[Object], default: list[Object]
) -> None:
    cluster_rules = rules_of(namespaced, "ClusterRole")
    assert_least_privilege(cluster_rules)
    cluster_grants = expand(cluster_rules)
    assert all(is_cluster_scoped(grant) for grant in cluster_grants), "namespaced objects are readable cluster-wide"
    cluster_wide_mode = expand(rules_of(default, "ClusterRole"))
    for namespace in WATCHED:
        role = one(namespaced, "Role", namespace)  # the leader election's is in the release namespace
        assert_least_privilege(role["rules"])
        assert_kopf_can_watch(role["rules"], cluster_rules)
        role_grants = expand(role["rules"])
        assert not any(is_cluster_scoped(grant) for grant in role_grants)
        assert role_grants == {g for g in cluster_wide_mode if not is_cluster_scoped(g)}, "same grants in both modes"
        assert role_grants | cluster_grants | LEASE_GRANTS == documented_grants()
        binding = one(namespaced, "RoleBinding", namespace)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    watched_roles = [
        o for o in namespaced if o["kind"] in ("Role", "RoleBinding") and o["metadata"]["name"] == FULLNAME
    ]
    assert {o["metadata"]["namespace"] for o in watched_roles} == set(WATCHED)


def test_rbac_and_service_account_can_be_brought_by_the_user(tmp_path: Path) -> None:
    objects = template(tmp_path, {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}})
    # the operator, its metrics Service and its disruption budget
    assert sorted(o["kind"] for o in objects) == ["Deployment", "PodDisruptionBudget", "Service"]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    objects = template(tmp_path, {"serviceAccount": {"create": False, "name": "ops"}})
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"
    assert one(objects, "RoleBinding")["subjects"][0]["name"] == "ops"
    error = template_error(tmp_path, {"serviceAccount": {"create": False}})
    assert "serviceAccount.name is required when serviceAccount.create is false" in error


def test_service_account_annotations(tmp_path: Path) -> None:
    objects = template(tmp_path, {"serviceAccount": {"annotations": {"iam.example/role": "canaria"}}})
    assert one(objects, "ServiceAccount")["metadata"]["annotations"] == {"iam.example/role": "canaria"}


# -- values.schema.json ---------------------------------------------------------------------------------------


def test_schema_rejects_an_unknown_top_level_key(tmp_path: Path) -> None:
    error = template_error(tmp_path, {"replicaCount": 2})
    assert "replicaCount" in error
    assert re.search(r"additional propert", error, re.IGNORECASE), error


@pytest.mark.parametrize(
    ("values", "mentioned"),
    [
        ({"image": {"repository": "r", "tagg": "1"}}, "tagg"),
        ({"serviceAccount": {"create": True, "annotation": {}}}, "annotation"),
        ({"watchNamespaces": ["team-*"]}, "watchNamespaces"),  # a pattern cannot get a Role
        ({"watchNamespaces": ["a", "a"]}, "watchNamespaces"),
        ({"logLevel": "LOUD"}, "logLevel"),
        ({"logFormat": "yaml"}, "logFormat"),
        ({"workers": 0}, "workers"),
        ({"replicas": -1}, "replicas"),
        ({"podDisruptionBudget": {"enabled": True, "minAvailable": 1}}, "minAvailable"),
        ({"image": {"repository": "r", "digest": "latest"}}, "digest"),
        ({"image": {"repository": "r", "pullPolicy": "Sometimes"}}, "pullPolicy"),
    ],
)
def test_schema_rejects_bad_values_and_names_them(tmp_path: Path, values: dict[str, Any], mentioned: str) -> None:
    assert mentioned in template_error(tmp_path, values)


def leaf_paths(schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Value paths the schema defines: descends into the objects the chart itself defines (closed ones)."""
    paths = []
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if sub.get("additionalProperties") is False and "properties" in sub and key not in ("resources", "alerts"):
            paths += leaf_paths(sub, f"{path}.")
        else:
            paths.append(path)
    return paths


def test_every_value_is_in_the_schema_values_file_and_readme() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    for path in leaf_paths(schema):
        if path == "global":
            continue  # Helm's own, for use as a subchart
        node: Any = values
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"{path} is in the schema but not in values.yaml"
            node = node[part]
        assert f"`{path}`" in readme, f"{path} is not documented in charts/canaria/README.md"
