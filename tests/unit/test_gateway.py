"""The Gateway's pure parts: Traefik's command line, the host's forward, the objects installed at start, and
when the Gateway counts as programmed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devcluster import gateway
from devcluster.layout import Layout, Settings
from devcluster.podnet import GATEWAY_IP, Forward


def layout(tmp_path: Path) -> Layout:
    return Layout.resolve(tmp_path, Settings(state_dir=tmp_path / "state"))


def test_traefik_listens_only_on_the_pod_network_and_never_phones_home(tmp_path: Path) -> None:
    argv = gateway.traefik_argv(layout(tmp_path))
    assert argv[0] == str(tmp_path / "state" / "bin" / "traefik")
    assert f"--entryPoints.web.address={GATEWAY_IP}:8000" in argv
    assert [a for a in argv if ".address=" in a] == [f"--entryPoints.web.address={GATEWAY_IP}:8000"]
    assert "--global.checkNewVersion=false" in argv
    assert "--global.sendAnonymousUsage=false" in argv
    assert "--providers.kubernetesGateway=true" in argv


def test_traefik_reads_this_clusters_kubeconfig_whatever_the_caller_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/elsewhere/kubeconfig")
    assert gateway.traefik_env(layout(tmp_path))["KUBECONFIG"] == str(tmp_path / "state" / "kubeconfig")


def test_the_host_reaches_the_gateway_through_a_loopback_forward() -> None:
    (forward,) = gateway.host_forwards({"gateway": 41234, "kube-apiserver": 6443})
    assert forward == Forward.parse(f"host:127.0.0.1:41234=podnet:{GATEWAY_IP}:8000")


def test_the_gateway_listener_matches_the_entrypoint_port_and_admits_every_namespace() -> None:
    (listener,) = gateway.gateway()["spec"]["listeners"]
    assert listener["port"] == gateway.GATEWAY_PORT
    assert listener["protocol"] == "HTTP"
    assert listener["allowedRoutes"] == {"namespaces": {"from": "All"}}
    assert gateway.gateway()["spec"]["gatewayClassName"] == gateway.gateway_class()["metadata"]["name"]
    assert gateway.gateway_class()["spec"]["controllerName"] == "traefik.io/gateway-controller"


def gateway_with(generation: int, **conditions: tuple[str, int]) -> dict[str, Any]:
    """A Gateway at generation with conditions given as type=(status, observedGeneration)."""
    return {
        "metadata": {"generation": generation},
        "status": {
            "conditions": [
                {"type": kind, "status": status, "observedGeneration": observed}
                for kind, (status, observed) in conditions.items()
            ]
        },
    }


@pytest.mark.parametrize(
    ("gateway_object", "expected"),
    [
        (gateway_with(2, Accepted=("True", 2), Programmed=("True", 2)), True),
        (gateway_with(2, Accepted=("True", 2), Programmed=("False", 2)), False),
        (gateway_with(2, Accepted=("True", 2)), False),
        (gateway_with(2, Accepted=("True", 1), Programmed=("True", 1)), False),  # an older generation's verdict
        (gateway_with(1, Accepted=("False", 1), Programmed=("True", 1)), False),
        ({"metadata": {"generation": 1}}, False),  # no controller has looked at it yet
    ],
)
def test_programmed_means_accepted_and_programmed_for_this_generation(
    gateway_object: dict[str, Any], expected: bool
) -> None:
    assert gateway.is_programmed(gateway_object) is expected
