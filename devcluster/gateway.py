"""The Gateway: Traefik as the cluster's Gateway API implementation, running inside the pod network.

Traefik's kubernetesGateway provider runs out of cluster with KUBECONFIG set to the admin kubeconfig (which
works unchanged inside the namespace: 127.0.0.1:<api port> is forwarded there). It watches GatewayClasses,
Gateways, HTTPRoutes, Services and EndpointSlices and proxies straight to the ready EndpointSlice addresses
(no kube-proxy needed), splitting a rule's traffic over its backendRefs by weight (weighted round robin).

It listens on the pod network's own address, entrypoint `web` at 10.244.0.1:8000. Traefik attaches a
Gateway listener to the entrypoint whose address ends in the listener's port, so the Gateway installed here
listens on that same port. The host reaches it through a loopback forward (host_forwards).

The lead's cluster.py composes it:

    _launch("traefik", traefik_argv(layout), env=traefik_env(layout), preexec=network.preexec())
    bootstrap(admin)                        # once the Gateway API CRDs are Established
    wait until programmed(admin)            # Traefik wrote Accepted + Programmed on the Gateway
    forwards += host_forwards(ports)        # ports["gateway"]: a host loopback port
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .api import ApiClient
from .layout import Layout
from .podnet import GATEWAY_IP, HOST, INSIDE, Forward

GATEWAY_PORT = 8000
ENTRYPOINT = "web"
CONTROLLER_NAME = "traefik.io/gateway-controller"  # the name Traefik's provider answers to
GATEWAY_CLASS = "traefik"
GATEWAY_NAMESPACE = "default"
GATEWAY_NAME = "canaria"  # ModelDeployments in GatewayAPI mode name it in spec.traffic.gateway.parentRefs
LISTENER = "http"
PORT_NAME = "gateway"  # the host loopback port of the forward, in the cluster's ports
GATEWAY_API = "/apis/gateway.networking.k8s.io/v1"


def traefik_argv(layout: Layout) -> list[str]:
    """Traefik's command line: one HTTP entrypoint on the pod network's own address, the Gateway API provider,
    nothing that phones home."""
    return [
        str(layout.binary("traefik")),
        f"--entryPoints.{ENTRYPOINT}.address={GATEWAY_IP}:{GATEWAY_PORT}",
        "--providers.kubernetesGateway=true",
        # The address a client of the Gateway dials, written into its status.
        f"--providers.kubernetesGateway.statusAddress.ip={GATEWAY_IP}",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=INFO",
        "--log.noColor=true",
    ]


def traefik_env(layout: Layout) -> dict[str, str]:
    """Traefik reads its cluster from KUBECONFIG; set it explicitly, so a caller's own KUBECONFIG (another
    cluster's) is never inherited."""
    return {**os.environ, "KUBECONFIG": str(layout.kubeconfig)}


def host_forwards(ports: Mapping[str, int]) -> list[Forward]:
    """The host's way in: 127.0.0.1:<ports["gateway"]> on the host to the Gateway inside the pod network."""
    return [Forward.parse(f"{HOST}:127.0.0.1:{ports[PORT_NAME]}={INSIDE}:{GATEWAY_IP}:{GATEWAY_PORT}")]


def gateway_class() -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": GATEWAY_CLASS},
        "spec": {"controllerName": CONTROLLER_NAME},
    }


def gateway() -> dict[str, Any]:
    """The cluster's one Gateway: plain HTTP on Traefik's entrypoint port, routes from every namespace."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE},
        "spec": {
            "gatewayClassName": GATEWAY_CLASS,
            "listeners": [
                {
                    "name": LISTENER,
                    "protocol": "HTTP",
                    "port": GATEWAY_PORT,
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                }
            ],
        },
    }


def bootstrap(admin: ApiClient) -> None:
    """Creates the GatewayClass and the Gateway (existing ones are kept). Needs the Gateway API CRDs."""
    admin.create(f"{GATEWAY_API}/gatewayclasses", gateway_class())
    admin.create(f"{GATEWAY_API}/namespaces/{GATEWAY_NAMESPACE}/gateways", gateway())


def is_programmed(gateway_object: Mapping[str, Any]) -> bool:
    """True when the controller accepted and programmed this generation of the Gateway."""
    generation = gateway_object.get("metadata", {}).get("generation")
    conditions = {c.get("type"): c for c in gateway_object.get("status", {}).get("conditions", [])}
    return all(
        conditions.get(kind, {}).get("status") == "True"
        and conditions.get(kind, {}).get("observedGeneration") == generation
        for kind in ("Accepted", "Programmed")
    )


def programmed(admin: ApiClient) -> bool:
    """The health check: Traefik has Accepted and Programmed the cluster's Gateway."""
    code, body = admin.get(f"{GATEWAY_API}/namespaces/{GATEWAY_NAMESPACE}/gateways/{GATEWAY_NAME}")
    return code == 200 and is_programmed(body)
