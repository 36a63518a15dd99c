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
from canaria import render

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


def test_default_release_objects(default: list[Object]) -> None:
    assert sorted(o["kind"] for o in default) == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount",
    ]  # fmt: skip
    for obj in default:
        meta = obj["metadata"]
        assert meta["name"] == (f"{FULLNAME}-metrics" if obj["kind"] == "Service" else FULLNAME)
        assert meta["labels"]["helm.sh/chart"] == "canaria-0.1.0"
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        if obj["kind"] in ("Deployment", "ServiceAccount", "Service"):
            assert meta["namespace"] == NAMESPACE


def test_fullname_prefixes_release_names_without_the_chart_name(tmp_path: Path) -> None:
    result = helm("template", "ml", str(CHART), "--kube-version", KUBE_VERSION)
    assert result.returncode == 0, result.stderr
    names = {doc["metadata"]["name"] for doc in yaml.safe_load_all(result.stdout) if doc}
    assert names == {"ml-canaria", "ml-canaria-metrics"}


def test_the_kubernetes_version_floor_is_enforced(tmp_path: Path) -> None:
    result = helm("template", RELEASE, str(CHART), "--kube-version", "1.29.9")
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr or "incompatible" in result.stderr


# -- the operator Deployment --------------------------------------------------------------------------------


def test_operator_runs_once_and_is_replaced_not_rolled(default: list[Object]) -> None:
    """Kopf runs in standalone mode: two operator pods must never overlap."""
    spec = one(default, "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "app.kubernetes.io/version" not in spec["selector"]["matchLabels"]  # selectors are immutable


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
    custom = env_of(
        template(
            tmp_path,
            {
                "packagerImage": {"repository": "registry.example/packager", "tag": "dev"},
                "clusterDomain": "corp.example",
                "workers": 4,
                "logLevel": "DEBUG",
                "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
            },
        )
    )
    assert custom["CANARIA_PACKAGER_IMAGE"] == "registry.example/packager:dev"
    assert custom["CANARIA_CLUSTER_DOMAIN"] == "corp.example"
    assert custom["CANARIA_WORKERS"] == "4"
    assert custom["CANARIA_LOG_LEVEL"] == "DEBUG"
    assert custom["HTTPS_PROXY"] == "http://proxy:3128"


def changed(value: str) -> str:
    return str(int(value) + 1) if value.isdigit() else f"{value}-changed"


def test_the_operator_reads_every_variable_the_chart_sets(default: list[Object]) -> None:
    """A chart value that the operator ignores is a lie in values.yaml: changing any CANARIA_* variable the
    chart sets changes the options the operator starts with."""
    env = {name: value for name, value in env_of(default).items() if name.startswith("CANARIA_")}
    assert set(env) >= {"CANARIA_PACKAGER_IMAGE", "CANARIA_CLUSTER_DOMAIN", "CANARIA_WORKERS", "CANARIA_LOG_LEVEL"}
    for name, value in env.items():
        assert canaria.handlers.options_from({**env, name: changed(value)}) != canaria.handlers.options_from(env), (
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
    assert {(g, r) for g, r, v in granted if v == "update"} <= {("serving.canaria.dev", "modeldeployments/finalizers")}


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


def test_cluster_wide_rbac(default: list[Object]) -> None:
    rules = rules_of(default, "ClusterRole")
    assert_least_privilege(rules)
    assert_kopf_can_watch(rules, rules)
    assert not rules_of(default, "Role")
    assert expand(rules) == documented_grants() - {("", "namespaces", "list"), ("", "namespaces", "watch")}, (
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
        role = one(namespaced, "Role", namespace)
        assert_least_privilege(role["rules"])
        assert_kopf_can_watch(role["rules"], cluster_rules)
        role_grants = expand(role["rules"])
        assert not any(is_cluster_scoped(grant) for grant in role_grants)
        assert role_grants == {g for g in cluster_wide_mode if not is_cluster_scoped(g)}, "same grants in both modes"
        assert role_grants | cluster_grants == documented_grants()
        binding = one(namespaced, "RoleBinding", namespace)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert {o["metadata"].get("namespace") for o in namespaced if o["kind"] in ("Role", "RoleBinding")} == set(WATCHED)


def test_rbac_and_service_account_can_be_brought_by_the_user(tmp_path: Path) -> None:
    objects = template(tmp_path, {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}})
    assert sorted(o["kind"] for o in objects) == ["Deployment", "Service"]  # the operator and its metrics Service
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    objects = template(tmp_path, {"serviceAccount": {"create": False, "name": "ops"}})
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"
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
        ({"workers": 0}, "workers"),
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
