"""Without the Prometheus Operator's CRDs the operator serves and says so; when they arrive, it wires
monitoring by itself. Runs on a second control plane that has no third-party CRDs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import Cluster, Settings
from tests.integration.conftest import CRD, ROOT, Operator, condition, kubectl, wait_for
from tests.support.manifests import example_model_deployment, on_fake_node

pytestmark = pytest.mark.cluster


@pytest.fixture
def bare_cluster(cluster: Cluster, tmp_path: Path) -> Iterator[Cluster]:
    bare = Cluster.up(ROOT, Settings(state_dir=tmp_path / "state", bin_dir=cluster.bin_dir, install_crds=False))
    try:
        yield bare
    finally:
        bare.down()


def test_service_monitor_follows_its_crd(bare_cluster: Cluster) -> None:
    config = bare_cluster.kubeconfig

    def md() -> dict[str, Any]:
        return json.loads(kubectl("get", "-n", "t-monitoring", "md/cifar10", "-o", "json", kubeconfig=config).stdout)

    kubectl("apply", "--server-side", "-f", str(CRD), kubeconfig=config)
    kubectl("wait", "--for=condition=Established", "crd/modeldeployments.serving.canaria.dev", kubeconfig=config)
    operator = Operator(config, log_name="operator-bare-cluster.log")
    operator.start()
    try:
        kubectl("create", "namespace", "t-monitoring", kubeconfig=config)
        body = yaml.safe_dump(on_fake_node(example_model_deployment()))
        kubectl("apply", "-n", "t-monitoring", "-f", "-", input=body, kubeconfig=config)
        kubectl("wait", "-n", "t-monitoring", "--for=condition=Ready", "--timeout=60s", "md/cifar10", kubeconfig=config)
        monitoring = condition(md(), "ServiceMonitorReady")
        assert monitoring["status"] == "False" and monitoring["reason"] == "CRDNotInstalled"
        assert "spec.monitoring.serviceMonitor.enabled" in monitoring["message"]
        time.sleep(2)  # Kopf's own annotation write after the first pass
        version = md()["metadata"]["resourceVersion"]
        time.sleep(5)
        assert md()["metadata"]["resourceVersion"] == version, "no error loop while the CRD is missing"

        crd = bare_cluster.layout.crd_dir / "monitoring.coreos.com_servicemonitors.yaml"
        kubectl("apply", "--server-side", "-f", str(crd), kubeconfig=config)
        wait_for(
            lambda: condition(md(), "ServiceMonitorReady").get("status") == "True",
            timeout=60,
            what="the ServiceMonitor once its CRD is installed",
        )
        monitor = kubectl("get", "-n", "t-monitoring", "servicemonitor", "cifar10", kubeconfig=config, check=False)
        assert monitor.returncode == 0, monitor.stderr
    finally:
        operator.stop()
    assert "Traceback" not in operator.log(), f"the operator logged a traceback: see {operator.log_path}"
