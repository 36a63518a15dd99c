"""The full loop's monitoring: Prometheus, configured only by the Prometheus Operator from the ServiceMonitor
Canaria renders, discovers the serving pods and scrapes TorchServe's own counters, per pod, track and version:
the series the rollout analysis will query."""

from __future__ import annotations

import json
from pathlib import Path

from devcluster import Cluster, monitoring
from devcluster.podnet import PodNetwork
from devcluster.traffic import Load, ServiceEndpoints, admin_api, run
from tests.integration.conftest import Operator
from tests.support.prometheus import TRACK_LABEL, VERSION_LABEL, Prometheus
from tests.support.torchserve import encoded_image

from .conftest import local_volume, serving_model
from .test_serving import apply_md, serving_pods, train, wait_ready

REQUESTS = 60


def test_prometheus_scrapes_every_serving_pod_by_track_and_version(
    cluster: Cluster, e2e_operator: Operator, e2e_namespace: str, pod_network: PodNetwork, model_source: Path
) -> None:
    local_volume(e2e_namespace, "models", model_source.parent)
    apply_md(e2e_namespace, serving_model(serving={"replicas": 2}))
    wait_ready(e2e_namespace, "cifar10")
    pods = {pod["metadata"]["name"] for pod in serving_pods(e2e_namespace, "cifar10")}
    prometheus = Prometheus(monitoring.url(json.loads(cluster.layout.cluster_file.read_text())["ports"]))

    up = f'up{{namespace="{e2e_namespace}", {TRACK_LABEL}="stable", {VERSION_LABEL}="1.0"}}'
    prometheus.wait_for_value(f"count({up} == 1)", lambda count: count == len(pods), timeout_s=90)
    scraped = {target["labels"].get("pod") for target in prometheus.targets() if target["health"] == "up"}
    assert pods <= scraped

    body = encoded_image(train.held_out_digits().images[0])
    load = Load(count=REQUESTS, duration_s=60, path="/predictions/cifar10", method="POST", body=body)
    with ServiceEndpoints(admin_api(cluster), e2e_namespace, "cifar10", "http") as endpoints:
        endpoints.wait_for(lambda ready: len(ready) == len(pods), timeout_s=30)
        report = run(load, endpoints, pod_network)
    assert report.summary.ok == REQUESTS, report.summary

    per_track = (
        f'sum(ts_inference_requests_total{{namespace="{e2e_namespace}", {TRACK_LABEL}="stable", '
        f'{VERSION_LABEL}="1.0", model_name="cifar10"}})'
    )
    assert prometheus.wait_for_value(per_track, lambda total: total >= REQUESTS, timeout_s=90) == REQUESTS
    per_pod = prometheus.query(
        f'sum by (pod) (ts_inference_requests_total{{namespace="{e2e_namespace}", model_name="cifar10"}})'
    )
    sent_to = {result.pod for result in report.results}
    assert {sample["metric"]["pod"] for sample in per_pod if float(sample["value"][1]) > 0} == sent_to
