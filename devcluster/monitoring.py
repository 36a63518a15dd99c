"""Monitoring: the real Prometheus Operator on the host, and the Prometheus it configures inside the pod network.

- The Prometheus Operator (`prometheus-operator`, built by build.sh) runs on the host against the API server
  as the ServiceAccount its docs give it: with the admin kubeconfig, it impersonates
  `system:serviceaccount:monitoring:prometheus-operator`, so the ClusterRole from its docs is all it may do.
  It reconciles one `Prometheus` object, monitoring/canaria, that selects every ServiceMonitor and
  PrometheusRule in every namespace. The StatefulSet it creates is pinned to kwok's fake node: its pod turns
  Ready without running anything.
- Prometheus itself (upstream, with Kubernetes service discovery) runs as a process inside the pod network,
  listening where the pod would, 10.244.0.1:9090, so it discovers and scrapes pod addresses from where pods live.
- The syncer (`python -m devcluster.monitoring sync`) does what the kubelet's volume mounts and the operator's
  config-reloader sidecar do for that pod: it watches the generated Secret `prometheus-canaria`
  (prometheus.yaml.gz), the rule-file ConfigMaps and the TLS assets, rewrites the configuration only where
  running outside a pod requires (`pod_config`), writes the files and makes Prometheus reload them.
- The host reaches Prometheus' HTTP API through a loopback forward into the namespace (`host_forwards`).

devcluster/cluster.py composes it once the monitoring.coreos.com CRDs are Established (`_start_addons`):
bootstrap, then the operator (healthy: operator_healthy), the syncer (healthy: config_written, i.e. the operator
generated a first configuration), then Prometheus (healthy: prometheus_ready, through host_forwards).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from base64 import b64decode
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from . import pki
from .api import ApiClient, probe
from .layout import Layout
from .monitoring_config import (
    CONFIG_KEY,
    CONFIG_SECRET,
    NAME,
    NAMESPACE,
    PROMETHEUS_ACCOUNT,
    RULE_FILES_PREFIX,
    TLS_ASSETS_PREFIX,
    ConfigError,
    Files,
    Generated,
    pod_files,
    service_account_user,
)
from .podnet import GATEWAY_IP, HOST, INSIDE, Forward

PROMETHEUS_PORT = 9090
# The cluster's ports this module reads (layout.PORT_NAMES): "prometheus-operator", the operator's web server
# (/healthz, /metrics) on loopback, and "prometheus", the host's forward to Prometheus' HTTP API.
OPERATOR_ACCOUNT = "prometheus-operator"  # named as in the operator's example/rbac at v0.93.0
# kwok's fake node (devcluster/cluster.py): the StatefulSet's pod goes there and never runs.
FAKE_NODE_SELECTOR = {"type": "kwok"}
FAKE_NODE_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
WATCH_TIMEOUT_S = 60  # the API server ends each watch after this; the syncer watches again
RESYNC_S = 30.0  # re-read everything at least this often, whatever the watches said
RELOAD_RETRY_S = 1.0

log = logging.getLogger("devcluster.monitoring")


def monitoring_files(layout: Layout) -> Files:
    return Files(layout.monitoring_dir)


# --- pure: the objects bootstrap creates ---


def _cluster_role(name: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ServiceAccount in NAMESPACE, a ClusterRole with rules, and the binding between them, all called name."""
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NAMESPACE}},
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules},
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
        },
    ]


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def operator_rbac() -> list[dict[str, Any]]:
    """The Prometheus Operator's ServiceAccount and ClusterRole, as its example/rbac/prometheus-operator at
    v0.93.0 gives them."""
    monitoring = [
        *("alertmanagers", "alertmanagers/finalizers", "alertmanagers/status", "alertmanagerconfigs"),
        *("prometheuses", "prometheuses/finalizers", "prometheuses/status"),
        *("prometheusagents", "prometheusagents/finalizers", "prometheusagents/status"),
        *("thanosrulers", "thanosrulers/finalizers", "thanosrulers/status"),
        *("scrapeconfigs", "scrapeconfigs/status", "servicemonitors", "servicemonitors/status"),
        *("podmonitors", "podmonitors/status", "probes", "probes/status"),
        *("prometheusrules", "prometheusrules/status"),
    ]
    return _cluster_role(
        OPERATOR_ACCOUNT,
        [
            _rule(["monitoring.coreos.com"], monitoring, ["*"]),
            _rule(["apps"], ["statefulsets"], ["*"]),
            _rule([""], ["configmaps", "secrets"], ["*"]),
            _rule([""], ["pods"], ["list", "delete"]),
            _rule([""], ["services", "services/finalizers"], ["get", "create", "update", "delete"]),
            _rule([""], ["nodes"], ["list", "watch"]),
            _rule([""], ["namespaces"], ["get", "list", "watch"]),
            _rule(["events.k8s.io"], ["events"], ["patch", "create"]),
            _rule(["networking.k8s.io"], ["ingresses"], ["get", "list", "watch"]),
            _rule(["storage.k8s.io"], ["storageclasses"], ["get"]),
            _rule([""], ["endpoints"], ["get", "create", "update", "delete"]),
        ],
    )


def prometheus_rbac() -> list[dict[str, Any]]:
    """Prometheus' ServiceAccount and ClusterRole, as the operator's example/rbac/prometheus at v0.93.0."""
    return _cluster_role(
        PROMETHEUS_ACCOUNT,
        [
            _rule([""], ["nodes", "nodes/metrics", "services", "endpoints", "pods"], ["get", "list", "watch"]),
            _rule([""], ["configmaps"], ["get"]),
            _rule(["discovery.k8s.io"], ["endpointslices"], ["get", "list", "watch"]),
            _rule(["networking.k8s.io"], ["ingresses"], ["get", "list", "watch"]),
            {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
        ],
    )


def prometheus_object(version: str) -> dict[str, Any]:
    """monitoring/canaria: every ServiceMonitor and PrometheusRule of every namespace, discovered through
    EndpointSlices; its pod pinned to kwok's fake node."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Prometheus",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "version": version,
            "replicas": 1,
            "serviceAccountName": PROMETHEUS_ACCOUNT,
            "serviceMonitorSelector": {},
            "serviceMonitorNamespaceSelector": {},
            "ruleSelector": {},
            "ruleNamespaceSelector": {},
            "serviceDiscoveryRole": "EndpointSlice",
            "evaluationInterval": "5s",  # rules answer within seconds on a dev cluster
            "nodeSelector": dict(FAKE_NODE_SELECTOR),
            "tolerations": [dict(FAKE_NODE_TOLERATION)],
        },
    }


def collection_path(body: Mapping[str, Any]) -> str:
    """The API path an object is created at."""
    group_version, kind = body["apiVersion"], body["kind"]
    plural = {"Prometheus": "prometheuses"}.get(kind, kind.lower() + "s")
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    namespace = body["metadata"].get("namespace")
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


def release_version(version_output: str) -> str:
    """`prometheus --version`'s first line ("prometheus, version 3.16.0 (branch: ...)") -> "v3.16.0"."""
    match = re.match(r"prometheus, version (\d+\.\d+\.\d+\S*)", version_output)
    if match is None:
        raise ConfigError(f"cannot read a release from `prometheus --version`: {version_output[:100]!r}")
    return f"v{match.group(1)}"


# --- the host's way in, command lines and health checks (for cluster.py) ---


def host_forwards(ports: Mapping[str, int]) -> list[Forward]:
    """127.0.0.1:<ports["prometheus"]> on the host to Prometheus inside the pod network."""
    return [Forward.parse(f"{HOST}:127.0.0.1:{ports['prometheus']}={INSIDE}:{GATEWAY_IP}:{PROMETHEUS_PORT}")]


def url(ports: Mapping[str, int]) -> str:
    """Prometheus' HTTP API, as the host reaches it."""
    return f"http://127.0.0.1:{ports['prometheus']}"


def operator_argv(layout: Layout, ports: Mapping[str, int]) -> list[str]:
    """The Prometheus Operator on the host, as its ServiceAccount (impersonated); web server on loopback without
    TLS; Prometheus objects in NAMESPACE only; no kubelet Service (that needs --kubelet-service)."""
    return [
        str(layout.binary("prometheus-operator")),
        f"--as={service_account_user(OPERATOR_ACCOUNT)}",
        f"--web.listen-address=127.0.0.1:{ports['prometheus-operator']}",
        f"--prometheus-instance-namespaces={NAMESPACE}",
        "--log-level=info",
    ]


def operator_env(layout: Layout) -> dict[str, str]:
    """The operator reads its cluster from KUBECONFIG only (it then ignores --apiserver): set it to the admin
    kubeconfig explicitly, so a caller's own KUBECONFIG (another cluster's) is never inherited."""
    return {**os.environ, "KUBECONFIG": str(layout.kubeconfig)}


def sync_argv(layout: Layout, ports: Mapping[str, int]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "devcluster.monitoring",
        "sync",
        f"--dir={monitoring_files(layout).root}",
        f"--pki-dir={layout.pki_dir}",
        f"--kubeconfig={layout.kubeconfig}",
        f"--server=https://127.0.0.1:{ports['kube-apiserver']}",
        f"--reload-url={url(ports)}/-/reload",
    ]


def prometheus_argv(layout: Layout) -> list[str]:
    """Prometheus as the operator's StatefulSet runs it (lifecycle API for reloads, route prefix /, 24h
    retention), with our files, listening on the pod network's own address. Start it with preexec
    `PodNetwork.preexec()`."""
    local = monitoring_files(layout)
    return [
        str(layout.binary("prometheus")),
        f"--config.file={local.config}",
        f"--storage.tsdb.path={local.data_dir}",
        "--storage.tsdb.retention.time=24h",
        f"--web.listen-address={GATEWAY_IP}:{PROMETHEUS_PORT}",
        "--web.enable-lifecycle",
        "--web.route-prefix=/",
    ]


def operator_healthy(ports: Mapping[str, int]) -> bool:
    return probe(f"http://127.0.0.1:{ports['prometheus-operator']}/healthz")


def config_written(layout: Layout) -> bool:
    """The syncer's health: the operator generated a configuration and the syncer wrote it."""
    return monitoring_files(layout).config.is_file()


def prometheus_ready(ports: Mapping[str, int]) -> bool:
    return probe(f"{url(ports)}/-/ready")


def bootstrap(admin: ApiClient, layout: Layout) -> None:
    """Creates the namespace, both ServiceAccounts with their ClusterRoles, and the Prometheus object at the
    version of the Prometheus binary (existing objects are kept). Needs the monitoring.coreos.com CRDs."""
    version_output = subprocess.run(
        [str(layout.binary("prometheus")), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        *operator_rbac(),
        *prometheus_rbac(),
        prometheus_object(release_version(version_output)),
    ]
    for body in objects:
        admin.create(collection_path(body), body)


# --- the syncer: `python -m devcluster.monitoring sync ...` ---


def _tls_context(client: ApiClient) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(client.ca_file))
    context.load_cert_chain(str(client.cert_file), str(client.key_file))
    return context


def _watch(client: ApiClient, path: str, changed: threading.Event) -> None:
    """Sets changed on every event of a watch on path, watching again whenever the API server ends it. With
    no resourceVersion, each watch starts with the objects that exist, so nothing is missed in between."""
    context = _tls_context(client)
    request = f"{client.server}{path}?watch=1&timeoutSeconds={WATCH_TIMEOUT_S}"
    while True:
        try:
            with urllib.request.urlopen(request, timeout=WATCH_TIMEOUT_S + 30, context=context) as stream:
                for _event in stream:  # one JSON event per line
                    changed.set()
        except OSError as err:
            log.info("watch %s: %s; watching again", path, err)
            time.sleep(1)


def _read_generated(client: ApiClient) -> Generated | None:
    """What the operator generated for the pod, or None before it wrote the configuration."""
    base = f"/api/v1/namespaces/{NAMESPACE}"
    code, secret = client.get(f"{base}/secrets/{CONFIG_SECRET}")
    if code == 404 or (code == 200 and CONFIG_KEY not in secret.get("data", {})):
        return None
    _check(code, secret, CONFIG_SECRET)
    code, config_maps = client.get(f"{base}/configmaps")
    _check(code, config_maps, "configmaps")
    code, secrets = client.get(f"{base}/secrets")
    _check(code, secrets, "secrets")
    rule_files = {
        item["metadata"]["name"]: item.get("data") or {}
        for item in config_maps["items"]
        if item["metadata"]["name"].startswith(RULE_FILES_PREFIX)
    }
    tls_assets = {
        key: b64decode(value)
        for item in secrets["items"]
        if item["metadata"]["name"].startswith(TLS_ASSETS_PREFIX)
        for key, value in (item.get("data") or {}).items()
    }
    return Generated(b64decode(secret["data"][CONFIG_KEY]), rule_files, tls_assets)


def _check(code: int, body: Any, what: str) -> None:
    if code != 200:
        raise OSError(f"reading {what} answered {code}: {str(body)[:200]}")


def write_files(wanted: Mapping[Path, bytes], local: Files) -> bool:
    """Writes each changed file atomically (Prometheus may read at any moment) and removes rule files and
    certificates the operator no longer generates. True if anything changed."""
    changed = False
    for path, content in wanted.items():
        if path.is_file() and path.read_bytes() == content:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(content)
        partial.chmod(0o600)
        partial.replace(path)
        changed = True
    for directory in (local.rules_dir, local.certs_dir):
        for path in sorted(directory.rglob("*"), reverse=True) if directory.is_dir() else []:
            if path.is_file() and path not in wanted:
                path.unlink()
                changed = True
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return changed


def _reload(reload_url: str) -> bool:
    """POST /-/reload: True once Prometheus has reloaded (or says why it could not); False if it does not
    answer yet (it reads the files when it starts)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(reload_url, data=b"", method="POST"), timeout=60):
            log.info("Prometheus reloaded its configuration")
    except urllib.error.HTTPError as err:
        log.error("Prometheus refused the configuration: %s", err.read().decode(errors="replace").strip())
    except OSError:
        return False
    return True


def sync_forever(client: ApiClient, admin_kubeconfig: Mapping[str, Any], local: Files, reload_url: str) -> None:
    changed = threading.Event()
    changed.set()
    for collection in ("secrets", "configmaps"):
        path = f"/api/v1/namespaces/{NAMESPACE}/{collection}"
        threading.Thread(target=_watch, args=(client, path, changed), name=f"watch {collection}", daemon=True).start()
    reload_pending = False
    while True:
        # Events come in bursts (the operator writes the Secret and ConfigMaps together): let one settle.
        if changed.wait(RELOAD_RETRY_S if reload_pending else RESYNC_S):
            time.sleep(0.2)
        changed.clear()
        try:
            generated = _read_generated(client)
            if generated is not None and write_files(pod_files(generated, admin_kubeconfig, local), local):
                log.info("wrote the configuration the operator generated")
                reload_pending = True
        except (OSError, ConfigError, ValueError, yaml.YAMLError) as err:
            log.error("cannot sync the generated configuration: %s", err)
        if reload_pending:
            reload_pending = not _reload(reload_url)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devcluster.monitoring")
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser("sync", help="keep Prometheus' files in step with what the operator generates")
    sync.add_argument("--dir", type=Path, required=True, help="the monitoring state directory")
    sync.add_argument("--pki-dir", type=Path, required=True)
    sync.add_argument("--kubeconfig", type=Path, required=True, help="the admin kubeconfig")
    sync.add_argument("--server", required=True)
    sync.add_argument("--reload-url", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    pki_files = pki.Pki(args.pki_dir)
    client = ApiClient(
        server=args.server,
        ca_file=pki_files.ca_cert,
        cert_file=pki_files.client_cert(pki.ADMIN),
        key_file=pki_files.client_key(pki.ADMIN),
    )
    sync_forever(client, yaml.safe_load(args.kubeconfig.read_text()), Files(args.dir), args.reload_url)


if __name__ == "__main__":
    main()
