"""Children read by listing compare like children read by name: the API server's list items carry no
apiVersion or kind, and a comparison that missed that would re-apply every listed child at every pass."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import config

from canaria import reconcile
from canaria.kube import Kube

from .conftest import get_json, kubectl


def test_a_listed_child_that_matches_what_we_render_is_not_applied_again(cluster: Any, namespace: str) -> None:
    desired = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "m-config", "namespace": namespace, "labels": {"app": "listed"}},
        "data": {"config.properties": "a=b\n"},
    }
    kubectl("apply", "-f", "-", input=json.dumps(desired))
    raw = get_json("configmaps", "-n", namespace, "-l", "app=listed")["items"]
    assert raw, "kubectl listed nothing: the test would prove nothing"

    api = config.new_client_from_config(str(cluster.kubeconfig))
    (listed,) = Kube(api).list("v1", "ConfigMap", namespace, {"app": "listed"})

    assert (listed["apiVersion"], listed["kind"]) == ("v1", "ConfigMap")
    assert not reconcile.needs_apply(desired, listed), "an unchanged listed child would be applied at every pass"
    assert reconcile.needs_apply({**desired, "data": {"config.properties": "a=c\n"}}, listed)
