"""The Prometheus Operator's generated configuration made to run outside its pod (devcluster/monitoring_config.py),
table-tested on a configuration the real operator (v0.93.0) generated for monitoring/canaria; and the pure
parts of devcluster/monitoring.py (the objects bootstrap creates, command lines, the host's forward).

The fixture was captured from the Secret `prometheus-canaria` after applying Canaria's rendered ServiceMonitor,
a ServiceMonitor scraping over TLS with a CA from a Secret, and a PrometheusRule (see its header)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import monitoring
from devcluster.layout import Layout, Settings
from devcluster.monitoring_config import (
    API_SERVER_KEYS,
    POD_CERTS_DIR,
    POD_NAME,
    POD_RULES_DIR,
    ConfigError,
    Files,
    Generated,
    expand_env,
    pod_config,
    pod_files,
)
from devcluster.podnet import GATEWAY_IP, HOST, INSIDE

GENERATED = (Path(__file__).parent / "fixtures" / "prometheus-operator-generated.yaml").read_text()
LOCAL = Files(Path("/state/monitoring"))


def _sd_entries(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [sd for job in config["scrape_configs"] for sd in job.get("kubernetes_sd_configs", [])]


@pytest.fixture(scope="module")
def rewritten() -> dict[str, Any]:
    result: dict[str, Any] = yaml.safe_load(pod_config(GENERATED, LOCAL))
    return result


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    result: dict[str, Any] = yaml.safe_load(expand_env(GENERATED, {"POD_NAME": POD_NAME, "SHARD": "0"}))
    return result


# --- $(VAR) expansion, as the config-reloader does it ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prometheus_replica: $(POD_NAME)", f"prometheus_replica: {POD_NAME}"),
        ("regex: $(SHARD);|.+;.+", "regex: 0;|.+;.+"),
        ("replacement: $1", "replacement: $1"),  # Prometheus' own references stay
        ("replacement: ${1}", "replacement: ${1}"),
        ("$(POD_NAME)-$(SHARD)", f"{POD_NAME}-0"),
    ],
)
def test_expand_env_replaces_exactly_the_reloaders_variables(text: str, expected: str) -> None:
    assert expand_env(text, {"POD_NAME": POD_NAME, "SHARD": "0"}) == expected


def test_expand_env_refuses_a_variable_the_pod_does_not_define() -> None:
    with pytest.raises(ConfigError, match=r"\$\(NODE_NAME\)"):
        expand_env("field: spec.nodeName=$(NODE_NAME)", {"POD_NAME": POD_NAME})


# --- the real generated configuration ---


def test_the_fixture_is_what_the_operator_generates_for_a_pod(generated: dict[str, Any]) -> None:
    """Guards the fixture itself: without these, the tests below would prove nothing."""
    assert "$(SHARD)" in GENERATED and "$(POD_NAME)" in GENERATED
    assert _sd_entries(generated), "no kubernetes_sd_configs"
    assert all("kubeconfig_file" not in sd for sd in _sd_entries(generated))
    assert all(path.startswith(POD_RULES_DIR + "/") for path in generated["rule_files"])
    assert POD_CERTS_DIR + "/" in GENERATED


def test_every_kubernetes_sd_entry_reaches_the_api_server_through_the_kubeconfig(rewritten: dict[str, Any]) -> None:
    for sd in _sd_entries(rewritten):
        assert sd["kubeconfig_file"] == str(LOCAL.kubeconfig)
        assert not API_SERVER_KEYS & sd.keys()


def test_rule_files_and_certificates_are_read_from_the_local_copies(
    rewritten: dict[str, Any], generated: dict[str, Any]
) -> None:
    assert rewritten["rule_files"] == [
        path.replace(POD_RULES_DIR, str(LOCAL.rules_dir), 1) for path in generated["rule_files"]
    ]
    tls = [job["tls_config"] for job in rewritten["scrape_configs"] if "tls_config" in job]
    assert tls, "the fixture's TLS ServiceMonitor is missing"
    assert all(Path(config["ca_file"]).parent == LOCAL.certs_dir for config in tls)
    assert POD_CERTS_DIR not in yaml.safe_dump(rewritten) and POD_RULES_DIR not in yaml.safe_dump(rewritten)


def test_the_pods_variables_are_expanded(rewritten: dict[str, Any]) -> None:
    assert rewritten["global"]["external_labels"]["prometheus_replica"] == POD_NAME
    shard_rules = [
        rule for job in rewritten["scrape_configs"] for rule in job["relabel_configs"] if rule.get("action") == "keep"
    ]
    assert "0;|.+;.+" in [rule.get("regex") for rule in shard_rules]


def test_nothing_else_changes(rewritten: dict[str, Any], generated: dict[str, Any]) -> None:
    """Undo the three changes by hand: what is left is exactly what the operator generated."""
    undone = yaml.safe_load(
        yaml.safe_dump(rewritten)
        .replace(str(LOCAL.rules_dir), POD_RULES_DIR)
        .replace(str(LOCAL.certs_dir), POD_CERTS_DIR)
    )
    for sd in _sd_entries(undone):
        del sd["kubeconfig_file"]
    assert undone == generated


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (  # what the operator writes with spec.apiserverConfig: all of it gives way to the kubeconfig
            {
                "role": "endpointslice",
                "api_server": "https://kubernetes.default.svc",
                "authorization": {"credentials_file": "/var/run/secrets/kubernetes.io/serviceaccount/token"},
                "tls_config": {"ca_file": "/etc/prometheus/certs/ca"},
                "namespaces": {"names": ["models"]},
            },
            {"role": "endpointslice", "namespaces": {"names": ["models"]}},
        ),
        (  # the pod's own namespace is a file in the pod: name it
            {"role": "pod", "namespaces": {"own_namespace": True, "names": ["a"]}},
            {"role": "pod", "namespaces": {"names": ["a", "monitoring"]}},
        ),
        (  # every namespace stays every namespace
            {"role": "endpointslice", "attach_metadata": {"node": False}},
            {"role": "endpointslice", "attach_metadata": {"node": False}},
        ),
    ],
)
def test_a_kubernetes_sd_entry_keeps_what_is_not_about_reaching_the_api_server(
    entry: dict[str, Any], expected: dict[str, Any]
) -> None:
    config = {"scrape_configs": [{"job_name": "j", "kubernetes_sd_configs": [entry]}]}
    (result,) = yaml.safe_load(pod_config(yaml.safe_dump(config), LOCAL))["scrape_configs"][0]["kubernetes_sd_configs"]
    assert result == {**expected, "kubeconfig_file": str(LOCAL.kubeconfig)}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/etc/prometheus/certs/0_ns_secret_ca", "/state/monitoring/certs/0_ns_secret_ca"),
        (
            "/etc/prometheus/rules/prometheus-canaria-rulefiles-0/*.yaml",
            "/state/monitoring/rules/prometheus-canaria-rulefiles-0/*.yaml",
        ),
        ("/etc/prometheus/certsx/ca", "/etc/prometheus/certsx/ca"),  # a different directory
        ("/etc/prometheus/secrets/s/key", "/etc/prometheus/secrets/s/key"),  # not mounted here
    ],
)
def test_only_files_under_the_pods_mounts_move(value: str, expected: str) -> None:
    config = {"scrape_configs": [{"job_name": "j", "tls_config": {"ca_file": value}}]}
    rewritten = yaml.safe_load(pod_config(yaml.safe_dump(config), LOCAL))
    assert rewritten["scrape_configs"][0]["tls_config"]["ca_file"] == expected


def test_a_bare_equals_sign_stays_a_string() -> None:
    generated = "scrape_configs:\n- job_name: j\n  relabel_configs:\n  - separator: =\n    regex: (.*)\n"
    rewritten = yaml.safe_load(pod_config(generated, LOCAL))
    assert rewritten["scrape_configs"][0]["relabel_configs"] == [{"separator": "=", "regex": "(.*)"}]


def test_pod_files_are_the_config_the_kubeconfig_the_rules_and_the_certificates() -> None:
    admin = {
        "apiVersion": "v1",
        "kind": "Config",
        "users": [{"name": "admin", "user": {"client-certificate-data": "Y2VydA=="}}],
    }
    files = pod_files(
        Generated(
            config_gz=gzip.compress(GENERATED.encode()),
            rule_files={"prometheus-canaria-rulefiles-0": {"ns-rules-uid.yaml": "groups: []\n"}},
            tls_assets={"0_ns_ca_ca.crt": b"PEM"},
        ),
        admin,
        LOCAL,
    )
    assert set(files) == {
        LOCAL.config,
        LOCAL.kubeconfig,
        LOCAL.rules_dir / "prometheus-canaria-rulefiles-0" / "ns-rules-uid.yaml",
        LOCAL.certs_dir / "0_ns_ca_ca.crt",
    }
    (user,) = yaml.safe_load(files[LOCAL.kubeconfig])["users"]
    assert user["user"] == {"client-certificate-data": "Y2VydA==", "as": "system:serviceaccount:monitoring:prometheus"}
    assert files[LOCAL.config].decode() == pod_config(GENERATED, LOCAL)


# --- the objects bootstrap creates, command lines, the forward ---


def test_the_prometheus_object_selects_everything_and_its_pod_is_fake() -> None:
    body = monitoring.prometheus_object("v3.16.0")
    spec = body["spec"]
    assert spec["version"] == "v3.16.0"
    for selector in (
        "serviceMonitorSelector",
        "serviceMonitorNamespaceSelector",
        "ruleSelector",
        "ruleNamespaceSelector",
    ):
        assert spec[selector] == {}
    assert spec["nodeSelector"] == {"type": "kwok"}
    assert spec["tolerations"] == [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["serviceAccountName"] == "prometheus"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring"}}, "/api/v1/namespaces"),
        (
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "p", "namespace": "monitoring"}},
            "/api/v1/namespaces/monitoring/serviceaccounts",
        ),
        (
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "p"}},
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        ),
        (monitoring.prometheus_object("v3.16.0"), "/apis/monitoring.coreos.com/v1/namespaces/monitoring/prometheuses"),
    ],
)
def test_collection_paths(body: dict[str, Any], path: str) -> None:
    assert monitoring.collection_path(body) == path


def test_every_object_bootstrap_creates_has_a_path() -> None:
    objects = [*monitoring.operator_rbac(), *monitoring.prometheus_rbac()]
    assert [body["kind"] for body in objects] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] * 2
    assert {monitoring.collection_path(body) for body in objects} == {
        "/api/v1/namespaces/monitoring/serviceaccounts",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    }


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("prometheus, version 3.16.0 (branch: , revision: )\n  build user: \n", "v3.16.0"),
        ("prometheus, version 3.16.0-rc.1 (branch: )", "v3.16.0-rc.1"),
    ],
)
def test_release_version_reads_the_binary(output: str, version: str) -> None:
    assert monitoring.release_version(output) == version


def test_release_version_refuses_a_binary_built_without_one() -> None:
    with pytest.raises(ConfigError):
        monitoring.release_version("prometheus, version  (branch: , revision: )")


PORTS = {"kube-apiserver": 6443, "prometheus-operator": 18080, "prometheus": 19090}


def test_the_host_reaches_prometheus_only_through_loopback() -> None:
    (forward,) = monitoring.host_forwards(PORTS)
    assert (forward.listen_side, forward.listen_addr, forward.listen_port) == (HOST, "127.0.0.1", 19090)
    assert (forward.dial_side, forward.dial_addr, forward.dial_port) == (INSIDE, GATEWAY_IP, 9090)
    assert monitoring.url(PORTS) == "http://127.0.0.1:19090"


def test_command_lines() -> None:
    layout = Layout.resolve(Path("/repo"), Settings(state_dir=Path("/repo/.devcluster")))
    operator = monitoring.operator_argv(layout, PORTS)
    assert "--as=system:serviceaccount:monitoring:prometheus-operator" in operator
    assert monitoring.operator_env(layout)["KUBECONFIG"] == "/repo/.devcluster/kubeconfig"
    assert "--web.listen-address=127.0.0.1:18080" in operator
    prometheus = monitoring.prometheus_argv(layout)
    assert f"--web.listen-address={GATEWAY_IP}:9090" in prometheus
    assert "--config.file=/repo/.devcluster/monitoring/prometheus.yaml" in prometheus
    assert "--web.enable-lifecycle" in prometheus
    assert "--reload-url=http://127.0.0.1:19090/-/reload" in monitoring.sync_argv(layout, PORTS)


def test_write_files_writes_what_changed_and_removes_what_the_operator_dropped(tmp_path: Path) -> None:
    local = Files(tmp_path)
    rules = local.rules_dir / "prometheus-canaria-rulefiles-0"
    first = {local.config: b"a", rules / "one.yaml": b"1", rules / "two.yaml": b"2", local.certs_dir / "ca": b"c"}
    assert monitoring.write_files(first, local)
    assert not monitoring.write_files(first, local), "nothing changed: no reload"
    second = {local.config: b"a", rules / "one.yaml": b"1 changed"}
    assert monitoring.write_files(second, local)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == [
        Path("prometheus.yaml"),
        Path("rules/prometheus-canaria-rulefiles-0/one.yaml"),
    ]
    assert (rules / "one.yaml").read_bytes() == b"1 changed"
    assert list(local.certs_dir.iterdir()) == []
