"""What the Prometheus Operator generates for the pod of monitoring/canaria, made to run outside that pod: pure
functions, table-tested on a configuration the real operator generated (tests/unit/test_monitoring_config.py).

In a cluster, the kubelet mounts the operator's Secret and ConfigMaps into the pod and the config-reloader
sidecar expands $(VAR)s before Prometheus reads the file. Here, devcluster/monitoring.py's syncer does both,
and the configuration changes only where running outside a pod requires: how Prometheus reaches the API server
(a kubeconfig file in place of the pod's in-cluster credentials) and where the mounted files are.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NAMESPACE = "monitoring"
NAME = "canaria"  # the Prometheus object: monitoring/canaria
PROMETHEUS_ACCOUNT = "prometheus"  # its ServiceAccount, named as in the operator's example/rbac at v0.93.0
# What the operator generates for monitoring/canaria (pkg/prometheus at v0.93.0).
CONFIG_SECRET = f"prometheus-{NAME}"
CONFIG_KEY = "prometheus.yaml.gz"
RULE_FILES_PREFIX = f"prometheus-{NAME}-rulefiles-"  # ConfigMaps, one directory each under POD_RULES_DIR
TLS_ASSETS_PREFIX = f"prometheus-{NAME}-tls-assets-"  # Secret shards, all projected into POD_CERTS_DIR
POD_RULES_DIR = "/etc/prometheus/rules"
POD_CERTS_DIR = "/etc/prometheus/certs"
# The StatefulSet's one pod; its config-reloader container has these variables, and expands $(NAME) in the
# generated configuration before Prometheus reads it.
POD_NAME = f"prometheus-{NAME}-0"
POD_ENV = {"POD_NAME": POD_NAME, "SHARD": "0"}
# Settings of a kubernetes_sd_configs entry that say how to reach the API server; a kubeconfig_file replaces
# them all (Prometheus refuses them beside it).
API_SERVER_KEYS = frozenset(
    {
        "api_server",
        "basic_auth",
        "authorization",
        "oauth2",
        "bearer_token",
        "bearer_token_file",
        "tls_config",
        "proxy_url",
        "no_proxy",
        "proxy_from_environment",
        "proxy_connect_header",
        "follow_redirects",
        "enable_http2",
        "http_headers",
    }
)


class _GoYamlLoader(yaml.SafeLoader):
    """A bare `=` (as in `separator: =` or an enum) is YAML 1.1's value tag to PyYAML, which cannot construct
    it; to Go's YAML, which wrote the file, it is the string."""


def _plain_string(loader: _GoYamlLoader, node: yaml.Node) -> str:
    return str(node.value)


_GoYamlLoader.add_constructor("tag:yaml.org,2002:value", _plain_string)


class ConfigError(Exception):
    """The generated configuration cannot run here, told in one line."""


def service_account_user(name: str) -> str:
    return f"system:serviceaccount:{NAMESPACE}:{name}"


@dataclass(frozen=True)
class Files:
    """The monitoring state of one devcluster, under <state dir>/monitoring."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "prometheus.yaml"

    @property
    def kubeconfig(self) -> Path:
        """Prometheus' way to the API server, as the `prometheus` ServiceAccount."""
        return self.root / "prometheus.kubeconfig"

    @property
    def rules_dir(self) -> Path:
        return self.root / "rules"

    @property
    def certs_dir(self) -> Path:
        return self.root / "certs"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """What the config-reloader does before Prometheus reads the file: every $(NAME) becomes env[NAME]. An
    unknown name is an error there too."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"the configuration refers to $({name}), which the pod does not define")
        return env[name]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value, text)


def _map_paths(value: Any, mounts: Mapping[str, str]) -> Any:
    """Every string that names a file under a pod mount (a key of mounts) names the same file in our copy."""
    if isinstance(value, dict):
        return {key: _map_paths(item, mounts) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_paths(item, mounts) for item in value]
    if isinstance(value, str):
        for pod_dir, local_dir in mounts.items():
            if value == pod_dir or value.startswith(pod_dir + "/"):
                return local_dir + value[len(pod_dir) :]
    return value


def _kubernetes_sd(entry: Mapping[str, Any], kubeconfig: Path) -> dict[str, Any]:
    """One kubernetes_sd_configs entry, reaching the API server through kubeconfig instead of the pod's
    in-cluster credentials. The pod's own namespace (a file in the pod) becomes its name."""
    rewritten = {key: value for key, value in entry.items() if key not in API_SERVER_KEYS}
    rewritten["kubeconfig_file"] = str(kubeconfig)
    namespaces = dict(rewritten.get("namespaces") or {})
    if namespaces.pop("own_namespace", False):
        namespaces["names"] = [*namespaces.get("names", []), NAMESPACE]
    if "namespaces" in rewritten:
        rewritten["namespaces"] = namespaces
    return rewritten


def pod_config(generated: str, local: Files) -> str:
    """The operator's generated prometheus.yaml, changed only where running outside the pod requires:
    $(VAR)s expanded as the config-reloader does, each kubernetes_sd_configs entry given local's kubeconfig
    (in-cluster auth and API server settings removed), and the pod's rule and certificate paths mapped to
    local's directories. Everything else is kept as generated."""
    config = _with_kubeconfig(yaml.load(expand_env(generated, POD_ENV), _GoYamlLoader) or {}, local.kubeconfig)
    mounts = {POD_RULES_DIR: str(local.rules_dir), POD_CERTS_DIR: str(local.certs_dir)}
    return yaml.safe_dump(_map_paths(config, mounts), sort_keys=False)


def _with_kubeconfig(value: Any, kubeconfig: Path) -> Any:
    """Every kubernetes_sd_configs entry (scrape configs, Alertmanager discovery) rewritten by _kubernetes_sd."""
    if isinstance(value, dict):
        return {
            key: [_kubernetes_sd(entry, kubeconfig) for entry in item]
            if key == "kubernetes_sd_configs"
            else _with_kubeconfig(item, kubeconfig)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_with_kubeconfig(item, kubeconfig) for item in value]
    return value


def impersonating_kubeconfig(admin: Mapping[str, Any], user: str) -> dict[str, Any]:
    """The admin kubeconfig, made to act as user (client-go's `as`): RBAC then applies to user alone."""
    config = dict(admin)
    config["users"] = [{**entry, "user": {**entry["user"], "as": user}} for entry in admin["users"]]
    return config


@dataclass(frozen=True)
class Generated:
    """What the operator wrote for the pod: the config Secret's gzipped config, the rule-file ConfigMaps' data
    by ConfigMap name, and the TLS assets' files (every shard's keys)."""

    config_gz: bytes
    rule_files: Mapping[str, Mapping[str, str]]
    tls_assets: Mapping[str, bytes]


def pod_files(generated: Generated, admin_kubeconfig: Mapping[str, Any], local: Files) -> dict[Path, bytes]:
    """Every file Prometheus reads, by path: what the pod would have mounted, made to run here."""
    config = pod_config(gzip.decompress(generated.config_gz).decode(), local)
    kubeconfig = impersonating_kubeconfig(admin_kubeconfig, service_account_user(PROMETHEUS_ACCOUNT))
    wanted = {local.config: config.encode(), local.kubeconfig: yaml.safe_dump(kubeconfig).encode()}
    for config_map, data in generated.rule_files.items():
        wanted.update({local.rules_dir / config_map / key: text.encode() for key, text in data.items()})
    wanted.update({local.certs_dir / key: content for key, content in generated.tls_assets.items()})
    return wanted
