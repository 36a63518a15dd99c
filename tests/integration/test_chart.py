"""The Helm chart against the real local control plane: install, upgrade, uninstall, and the operator running
with exactly the permissions the chart grants.

Pods are simulated by kwok (they become Ready without pulling images), so the operator Deployment becomes
Available although the images were never built. Each test uses its own release and namespaces and removes
them; the CRD stays (Helm never deletes crds/, and other tests share it).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import apply, get_json, kubectl, wait_for
from tests.support.manifests import FAKE_NODE_SELECTOR, FAKE_NODE_TOLERATION, example_model_deployment

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "canaria"
CRD_NAME = "modeldeployments.serving.canaria.dev"


# kwok's node is tainted (devcluster): the operator's pod goes there, to be faked Ready; nothing runs it.
ON_FAKE_NODE = ["--set-json", f"tolerations=[{json.dumps(FAKE_NODE_TOLERATION)}]", "--set-json",
                f"nodeSelector={json.dumps(FAKE_NODE_SELECTOR)}"]  # fmt: skip


def helm(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("helm")  # the cluster fixture puts .devcluster/bin first on PATH
    assert binary, "helm not found on PATH: run `make tools`"
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def exists(*args: str) -> bool:
    result = kubectl("get", *args, "-o", "name", check=False)
    if result.returncode != 0 and "NotFound" not in result.stderr:
        raise AssertionError(f"kubectl get {' '.join(args)}: {result.stderr}")
    return result.returncode == 0


def can_i(service_account: str, verb: str, resource: str, namespace: str | None) -> bool:
    where = ["--namespace", namespace] if namespace else ["--all-namespaces"]
    result = kubectl("auth", "can-i", verb, resource, *where, f"--as={service_account}", check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {verb} {resource}: {result.stdout} {result.stderr}"
    return answer == "yes"


def condition_status(obj: dict[str, Any], type_: str) -> str | None:
    return next((c["status"] for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)


@dataclass
class Release:
    name: str
    namespace: str
    suffix: str
    namespaces: list[str] = field(default_factory=list)  # every namespace this test created

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    def create_namespace(self, name: str) -> str:
        kubectl("create", "namespace", name)
        self.namespaces.append(name)
        return name

    def deployment(self) -> dict[str, Any]:
        result: dict[str, Any] = get_json("-n", self.namespace, "deployment", self.name)
        return result

    def rolled_out(self) -> dict[str, Any]:
        """The operator Deployment once its current generation is Available with every pod updated and ready."""
        kubectl("rollout", "status", "-n", self.namespace, f"deployment/{self.name}", "--timeout=120s")
        deployment = self.deployment()
        status, wanted = deployment["status"], deployment["spec"]["replicas"]
        assert status["observedGeneration"] == deployment["metadata"]["generation"]
        assert status.get("updatedReplicas") == status.get("readyReplicas") == status.get("availableReplicas") == wanted
        assert condition_status(deployment, "Available") == "True"
        return deployment


@contextlib.contextmanager
def new_release() -> Iterator[Release]:
    """A release name and namespace of its own; uninstalled, with every namespace it created, afterwards."""
    suffix = uuid.uuid4().hex[:6]
    # The release name contains "canaria", so it is also the name of every object (cluster-scoped ones too).
    made = Release(name=f"canaria-it-{suffix}", namespace=f"canaria-chart-{suffix}", suffix=suffix)
    made.namespaces.append(made.namespace)
    try:
        yield made
    finally:
        helm("uninstall", made.name, "--namespace", made.namespace, "--wait", check=False)
        for namespace in made.namespaces:
            kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture
def release(cluster: Any) -> Iterator[Release]:
    with new_release() as made:
        yield made


def container_env(deployment: dict[str, Any], pod: str = "") -> dict[str, str]:
    """The operator container's environment, with the downward API's fields as a pod named `pod` would get them."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    fields = {"metadata.name": pod or f"{deployment['metadata']['name']}-test", "metadata.namespace":
              deployment["metadata"]["namespace"]}  # fmt: skip
    return {e["name"]: e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
            for e in container["env"]}  # fmt: skip


def test_install_upgrade_uninstall(release: Release) -> None:
    installed = helm(
        "install",
        release.name,
        str(CHART),
        "--namespace",
        release.namespace,
        "--create-namespace",
        *ON_FAKE_NODE,
        "--wait",
        "--timeout",
        "3m",
    )
    assert "kubectl" in installed.stdout and "get md" in installed.stdout, "NOTES.txt tells how to start"

    deployment = release.rolled_out()
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    budget = get_json("-n", release.namespace, "poddisruptionbudget", release.name)
    assert budget["spec"]["maxUnavailable"] == 1
    wait_for(lambda: get_json("-n", release.namespace, "poddisruptionbudget", release.name).get("status", {})
             .get("currentHealthy") == 2, what="the budget counts both operator pods")  # fmt: skip
    assert get_json("-n", release.namespace, "serviceaccount", release.name)
    crd = get_json("crd", CRD_NAME)
    assert condition_status(crd, "Established") == "True"
    assert crd["spec"]["names"]["shortNames"] == ["md"]

    # The API server's own RBAC evaluation of what the chart granted (cluster-wide mode).
    sa = release.service_account
    assert can_i(sa, "list", f"{CRD_NAME}", None)
    assert can_i(sa, "patch", "modeldeployments.serving.canaria.dev/status", "default")
    assert can_i(sa, "create", "deployments.apps", "default")
    assert can_i(sa, "watch", "servicemonitors.monitoring.coreos.com", None)
    assert can_i(sa, "get", "secrets", "default")
    assert not can_i(sa, "list", "secrets", "default"), "Secrets are read by name only"
    assert not can_i(sa, "create", "secrets", "default")
    assert not can_i(sa, "delete", "pods", "default")
    assert can_i(sa, "delete", "deployments.apps", "default"), "a finished canary's Deployment is deleted"
    assert not can_i(sa, "list", "namespaces", None), "Kopf reads namespaces only when it watches some"
    assert not can_i(sa, "create", "clusterroles.rbac.authorization.k8s.io", None)
    # Leader election: its own Lease, in the release namespace only.
    assert can_i(sa, "create", "leases.coordination.k8s.io", release.namespace)
    assert can_i(sa, "update", f"leases.coordination.k8s.io/{release.name}", release.namespace)
    assert not can_i(sa, "update", "leases.coordination.k8s.io/someone-else", release.namespace)
    assert not can_i(sa, "delete", f"leases.coordination.k8s.io/{release.name}", release.namespace)
    assert not can_i(sa, "get", f"leases.coordination.k8s.io/{release.name}", "default")

    # Upgrade: a changed value rolls the operator (RollingUpdate) and switches RBAC to the watched namespace.
    watched = release.create_namespace(f"canaria-watched-{release.suffix}")
    other = release.create_namespace(f"canaria-other-{release.suffix}")
    helm(
        "upgrade",
        release.name,
        str(CHART),
        "--namespace",
        release.namespace,
        "--reuse-values",
        "--set",
        "logLevel=DEBUG",
        "--set",
        f"watchNamespaces={{{watched}}}",
        "--wait",
        "--timeout",
        "3m",
    )
    status = json.loads(helm("status", release.name, "--namespace", release.namespace, "-o", "json").stdout)
    assert status["version"] == 2 and status["info"]["status"] == "deployed"
    deployment = release.rolled_out()
    assert container_env(deployment)["CANARIA_LOG_LEVEL"] == "DEBUG"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert f"--namespace={watched}" in container["args"]
    assert exists("-n", watched, "role", release.name) and exists("-n", watched, "rolebinding", release.name)
    assert can_i(sa, "create", "deployments.apps", watched)
    assert not can_i(sa, "create", "deployments.apps", other), "RBAC follows watchNamespaces"
    assert not can_i(sa, "list", f"{CRD_NAME}", other)
    assert can_i(sa, "watch", "customresourcedefinitions.apiextensions.k8s.io", None)  # Kopf's scanning
    assert can_i(sa, "watch", "namespaces", None)  # Kopf follows the watched namespaces

    # Uninstall removes every object of the release and keeps the CRD.
    helm("uninstall", release.name, "--namespace", release.namespace, "--wait")
    for args in [
        ("-n", release.namespace, "deployment", release.name),
        ("-n", release.namespace, "serviceaccount", release.name),
        ("-n", release.namespace, "poddisruptionbudget", release.name),
        ("-n", release.namespace, "role", f"{release.name}-leader-election"),
        ("clusterrole", release.name),
        ("clusterrolebinding", release.name),
        ("-n", watched, "role", release.name),
        ("-n", watched, "rolebinding", release.name),
    ]:
        assert not exists(*args), f"{args} survived helm uninstall"
    assert helm("status", release.name, "--namespace", release.namespace, check=False).returncode != 0
    assert exists("crd", CRD_NAME), "Helm keeps the CRD (and with it every ModelDeployment)"


# -- the operator itself, with the chart's RBAC -------------------------------------------------------------


# How Kopf and the API server word a missing permission in the operator's log.
PERMISSION_SIGNS = ("forbidden", "not enough permissions")
RECONCILED = "Handler 'model_deployment_changed' succeeded"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_account_kubeconfig(release: Release, directory: Path) -> Path:
    """A kubeconfig for the cluster that authenticates as the chart's ServiceAccount (a short-lived token)."""
    admin = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    cluster = admin["clusters"][0]["cluster"]
    if "certificate-authority" in cluster:  # inline it: the file path is relative to the admin kubeconfig
        ca = Path(os.environ["KUBECONFIG"]).parent / cluster.pop("certificate-authority")
        cluster["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    token = kubectl("create", "token", release.name, "-n", release.namespace, "--duration=30m").stdout.strip()
    path = directory / "operator.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "operator",
                "clusters": [{"name": "devcluster", "cluster": cluster}],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [{"name": "operator", "context": {"cluster": "devcluster", "user": "operator"}}],
            }
        )
    )
    return path


def install(release: Release, *values: str) -> None:
    """`helm install` of the chart as release, waiting until its (faked) operator pod is Available."""
    helm(
        "install", release.name, str(CHART), "--namespace", release.namespace, "--create-namespace", *ON_FAKE_NODE,
        *values, "--wait", "--timeout", "3m",
    )  # fmt: skip


@dataclass
class OperatorRun:
    process: subprocess.Popen[bytes]
    log_path: Path
    liveness: str

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def permission_errors(self) -> list[str]:
        lines = self.output().splitlines()
        return [line for line in lines if any(sign in line.lower() for sign in PERMISSION_SIGNS)]


@contextlib.contextmanager
def chart_operator(release: Release, directory: Path) -> Iterator[OperatorRun]:
    """The operator process with the arguments and environment of the Deployment the chart installed, and
    the token of the chart's ServiceAccount; stopped (and checked for tracebacks) on exit."""
    (container,) = release.rolled_out()["spec"]["template"]["spec"]["containers"]
    port = free_port()
    args = [arg.replace("0.0.0.0:8080", f"127.0.0.1:{port}") for arg in container["args"]]
    assert f"--liveness=http://127.0.0.1:{port}/healthz" in args
    env = {
        **os.environ,
        **container_env(release.deployment()),
        "KUBECONFIG": str(service_account_kubeconfig(release, directory)),
        # The pod's metrics port, on loopback here: a free one (another operator may use 8081 on this machine).
        "CANARIA_METRICS_ADDRESS": "127.0.0.1",
        "CANARIA_METRICS_PORT": str(free_port()),
    }
    log_path = directory / "operator.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "canaria", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    run = OperatorRun(process, log_path, f"http://127.0.0.1:{port}/healthz")
    try:
        yield run
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert "Traceback" not in run.output(), run.output()[-5000:]


def test_operator_runs_with_the_chart_rbac(release: Release, tmp_path: Path) -> None:
    """The operator process, with the environment and arguments of the Deployment the chart installed and the
    token of the chart's ServiceAccount, reconciles a ModelDeployment without a single permission error.
    Namespaced mode: the narrower grant (a Role per namespace), and it stays out of other tests' namespaces.
    (tests/integration/test_rbac_audit.py proves, from the audit log, that the grant is exactly what is used.)"""
    models = release.create_namespace(f"canaria-models-{release.suffix}")
    install(release, "--set", f"watchNamespaces={{{models}}}")
    apply(models, example_model_deployment())
    with chart_operator(release, tmp_path) as run:
        assert f"--namespace={models}" in run.process.args
        wait_for(
            lambda: run.process.poll() is not None or run.permission_errors() or RECONCILED in run.output(),
            timeout=90,
            what="the operator to reconcile the ModelDeployment",
        )
        assert not run.permission_errors(), "the chart's RBAC is missing permissions:\n" + "\n".join(
            run.permission_errors()
        )
        assert run.process.poll() is None, f"the operator exited with {run.process.returncode}:\n{run.output()[-5000:]}"
        assert RECONCILED in run.output(), run.output()[-5000:]
        deployment = get_json("-n", models, "deployment", "cifar10-stable")
        assert deployment["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
        assert exists("-n", models, "service", "cifar10")
        assert get_json("-n", models, "configmap", "-l", "serving.canaria.dev/track=stable")["items"]
        assert exists("-n", models, "servicemonitor", "cifar10")
        wait_for(
            lambda: get_json("-n", models, "md", "cifar10").get("status", {}).get("conditions"),
            what="the ModelDeployment's status",
        )
        with urllib.request.urlopen(run.liveness, timeout=5) as response:
            assert response.status == 200, "the liveness endpoint the chart probes answers"
        # It reconciles as the leader: the chart's environment turns election on, with the Lease it may use.
        lease = get_json("-n", release.namespace, "lease", release.name)
        assert lease["spec"]["holderIdentity"] == container_env(release.deployment())["POD_NAME"]
        assert not run.permission_errors(), "\n".join(run.permission_errors())
    kubectl("delete", "md", "cifar10", "-n", models, "--ignore-not-found", "--wait=false", check=False)


def test_install_fails_on_an_unknown_value(release: Release) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
        yaml.safe_dump({"replicaCount": 2}, values)
        values.flush()
        result = helm(
            "install",
            release.name,
            str(CHART),
            "--namespace",
            release.namespace,
            "--create-namespace",
            "--values",
            values.name,
            check=False,
        )
    assert result.returncode != 0 and "replicaCount" in result.stderr
    assert helm("status", release.name, "--namespace", release.namespace, check=False).returncode != 0
