"""The one layer that talks to the Kubernetes API.

Server-side apply with one field manager, status written through the status subresource, and every
API error mapped in one place: transient ones (no answer, 5xx, 429, 409) to `Unavailable` (reconcile retries
the pass with back-off), rejections of what we sent to `Rejected` (the user's input is wrong; reconcile
reports it in status).
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

import kopf
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from canaria import __version__, metrics, schema
from canaria.spec import Object

FIELD_MANAGER = "canaria"
USER_AGENT = f"canaria-operator/{__version__}"  # names the operator's own requests in the API server's audit log
DISCOVERY_TTL_SECONDS = 30
UNREACHABLE = "unreachable"  # canaria_api_request_errors_total{code} of a request that got no HTTP answer

# (apiVersion, kind) -> plural, for every kind the operator reads or writes. All are namespaced.
PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Secret"): "secrets",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("apps/v1", "Deployment"): "deployments",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    (f"{schema.GROUP}/{schema.VERSION}", schema.KIND): schema.PLURAL,
}


class Unavailable(Exception):
    """The API server did not answer, or answered with a temporary failure: the same request may succeed later."""


class Rejected(Exception):
    """The API server refused an object we rendered from the user's spec (HTTP 400/422)."""


class NamespaceTerminating(Exception):
    """The namespace is being deleted: nothing may be created in it, and nothing needs to be."""


def api_prefix(api_version: str) -> str:
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    return f"{api_prefix(api_version)}/namespaces/{namespace}/{PLURALS[(api_version, kind)]}"


def object_path(obj: Object) -> str:
    meta = obj["metadata"]
    return f"{collection_path(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or new_api_client()
        self.api.user_agent = USER_AGENT
        self._discovery: dict[tuple[str, str], tuple[bool, float]] = {}

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API call; returns the decoded JSON body, or None for 404 on a read."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        resource = f"{path}?{urlencode(query)}" if query else path
        method, url, headers, _, _ = self.api.param_serialize(
            method, resource, header_params=headers, auth_settings=["BearerToken"]
        )
        try:
            # The REST client serialises a dict body itself, for JSON and YAML (apply) content types alike.
            response = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=30)
            data = response.read()
            status = response.status
        except ApiException as error:  # TLS errors surface as status 0
            metrics.record_api_error(method, error.status or UNREACHABLE)
            raise Unavailable(f"{method} {path}: {error.reason}") from error
        except urllib3.exceptions.HTTPError as error:  # refused, reset or timed-out connections
            metrics.record_api_error(method, UNREACHABLE)
            raise Unavailable(f"{method} {path}: {error}") from error
        if status == 404 and method in ("GET", "DELETE"):  # reading or deleting what is gone
            return None
        if 200 <= status < 300:
            return json.loads(data) if data else None
        metrics.record_api_error(method, status)
        raise _mapped_error(method, path, status, data)

    # -- reads --

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Object | None:
        result: Object | None = self.request("GET", f"{collection_path(api_version, kind, namespace)}/{name}")
        return result

    def list(self, api_version: str, kind: str, namespace: str, labels: dict[str, str]) -> list[Object]:
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        query = {"labelSelector": selector} if selector else None
        result = self.request("GET", collection_path(api_version, kind, namespace), query=query)
        # A list's items carry no apiVersion or kind: fill them in, so that they compare with what we render
        # (otherwise every pass would re-apply every listed child).
        return [{"apiVersion": api_version, "kind": kind, **item} for item in (result or {}).get("items", [])]

    def serves(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves this kind (e.g. the ServiceMonitor CRD is installed), cached briefly:
        every pass asks, and a CRD installed later is seen within DISCOVERY_TTL_SECONDS."""
        cached = self._discovery.get((api_version, kind))
        if cached and time.monotonic() - cached[1] < DISCOVERY_TTL_SECONDS:
            return cached[0]
        discovery = self.request("GET", api_prefix(api_version))
        served = any(r.get("kind") == kind for r in (discovery or {}).get("resources", []))
        self._discovery[(api_version, kind)] = (served, time.monotonic())
        return served

    def forget_discovery(self) -> None:
        self._discovery.clear()

    # -- writes --

    def apply(self, obj: Object) -> Object:
        result: Object = self.request(
            "PATCH",
            object_path(obj),
            body=obj,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )
        return result

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        path = f"{collection_path(api_version, kind, namespace)}/{name}"
        self.request("DELETE", path, body={"propagationPolicy": "Background"})

    def patch_status(self, md: Object, status: Object) -> None:
        """Replace status with a merge patch (fields we dropped are nulled, at every depth)."""
        patch = replacing_merge_patch(md.get("status") or {}, status)
        self.request(
            "PATCH", f"{object_path(md)}/status", body={"status": patch}, content_type="application/merge-patch+json"
        )

    def event(self, md: Object, type_: str, reason: str, message: str, now: str) -> None:
        meta = md["metadata"]
        self.request(
            "POST",
            f"/api/v1/namespaces/{meta['namespace']}/events",
            body={
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": md["apiVersion"],
                    "kind": md["kind"],
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                },
                "type": type_,
                "reason": reason,
                "message": message[:1024],
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
                "source": {"component": "canaria"},
                "reportingComponent": "canaria",
            },
        )


def replacing_merge_patch(old: Object, new: Object) -> Object:
    """A JSON merge patch (RFC 7386) that turns `old` into exactly `new`: a merge patch merges nested objects,
    so a key dropped anywhere (e.g. status.rollout.pausedAt) must be nulled explicitly. Lists are replaced whole."""
    patch: Object = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        patch[key] = (
            replacing_merge_patch(before, value) if isinstance(value, dict) and isinstance(before, dict) else value
        )
    return patch


def _mapped_error(method: str, path: str, status: int, data: bytes) -> Exception:
    try:
        message = json.loads(data).get("message", "")
    except ValueError:
        message = data.decode(errors="replace")[:500]
    if status in (400, 422):
        return Rejected(message)
    if status == 403 and "because it is being terminated" in message:
        return NamespaceTerminating(message)
    if status in (409, 429) or status >= 500:
        return Unavailable(f"{method} {path}: {status} {message}")
    return kopf.PermanentError(f"{method} {path}: {status} {message}")


def new_api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()
