"""Kopf handlers: decorators only; each one runs a reconcile pass (canaria.reconcile)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from canaria import logs, metrics, render, schema, spec
from canaria.kube import Kube
from canaria.reconcile import reconcile
from canaria.render import Settings

CHILD_FILTER = {render.MANAGED_BY: "canaria"}
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """What the operator takes from its environment (the Helm chart sets each variable)."""

    settings: Settings  # shapes the rendered objects
    workers: int  # reconcile passes that may run at once
    log_level: str
    log_format: str = "text"  # or "json": one object per line
    metrics_port: int = 8081  # 0: no metrics endpoint
    metrics_address: str = "0.0.0.0"


def options_from(environ: Mapping[str, str]) -> Options:
    log_format = environ.get("CANARIA_LOG_FORMAT", "text").lower()
    if log_format not in logs.FORMATS:
        raise ValueError(f"CANARIA_LOG_FORMAT={log_format!r}: expected one of {', '.join(logs.FORMATS)}")
    return Options(
        settings=Settings(
            packager_image=environ.get("CANARIA_PACKAGER_IMAGE", Settings.packager_image),
            cluster_domain=environ.get("CANARIA_CLUSTER_DOMAIN", Settings.cluster_domain),
            prometheus_url=environ.get("CANARIA_PROMETHEUS_URL", Settings.prometheus_url),
        ),
        workers=int(environ.get("CANARIA_WORKERS", "20")),
        log_level=environ.get("CANARIA_LOG_LEVEL", "INFO").upper(),
        log_format=log_format,
        metrics_port=int(environ.get("CANARIA_METRICS_PORT", "8081")),
        metrics_address=environ.get("CANARIA_METRICS_ADDRESS", "0.0.0.0"),
    )


def set_concurrency(settings: kopf.OperatorSettings, workers: int) -> None:
    """A reconcile pass is a blocking handler: Kopf runs it on the threads of `settings.execution`, so their
    number is how many passes run at once (`settings.queueing.worker_limit` counts per-object asyncio tasks,
    which only wait for those threads)."""
    settings.execution.max_workers = workers


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Status and the last-handled spec live in the object; Kopf's own bookkeeping goes to annotations
    # under our prefix, never into status (which the operator owns).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=schema.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=schema.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events say what matters; no "handler succeeded"
    settings.watching.server_timeout = 270
    options = options_from(os.environ)
    set_concurrency(settings, options.workers)
    memo.kube = Kube()
    memo.settings = options.settings


def serve_metrics(options: Options) -> None:
    """Serve /metrics, unless CANARIA_METRICS_PORT is 0: `python -m canaria run` calls it before leader election,
    so a standby replica answers scrapes too. Models are served and rolled out without it, so a taken port is
    logged as an error, not a reason to stop (a Prometheus that scrapes the operator sees the target down)."""
    if not options.metrics_port:
        return
    try:
        metrics.METRICS.serve(options.metrics_address, options.metrics_port)
    except OSError as error:
        log.error(
            "no metrics endpoint: cannot listen on %s:%d: %s (CANARIA_METRICS_PORT: a free port, or 0 for none)",
            options.metrics_address,
            options.metrics_port,
            error,
        )


@kopf.on.cleanup()
def stop_metrics(**_: Any) -> None:
    metrics.METRICS.stop()


@kopf.on.resume(schema.GROUP, schema.VERSION, schema.PLURAL)
@kopf.on.create(schema.GROUP, schema.VERSION, schema.PLURAL)
@kopf.on.update(schema.GROUP, schema.VERSION, schema.PLURAL)
def model_deployment_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    reconcile(memo.kube, str(namespace), name, memo.settings)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_FILTER)
@kopf.on.event("v1", "services", labels=CHILD_FILTER)
@kopf.on.event("v1", "configmaps", labels=CHILD_FILTER)
@kopf.on.event("v1", "pods", labels=CHILD_FILTER)
@kopf.on.event("monitoring.coreos.com", "v1", "servicemonitors", labels=CHILD_FILTER)
@kopf.on.event("gateway.networking.k8s.io", "v1", "httproutes", labels=CHILD_FILTER)
def child_changed(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    """A child changed (its status, a hand edit, a deletion): repair drift and refresh status."""
    owner = labels.get(render.OWNER_LABEL)
    if owner:
        reconcile(memo.kube, str(namespace), owner, memo.settings)


@kopf.index(schema.GROUP, schema.VERSION, schema.PLURAL)
def model_deployments(namespace: str | None, name: str, body: Mapping[str, Any], **_: Any) -> dict[Any, str]:
    """Every ModelDeployment, keyed by (namespace, the PVC it reads from, or None)."""
    source = spec.pvc_source(body.get("spec", {}).get("model", {"storageUri": ""}))
    return {(namespace, source[0] if source else None): name}


def is_model_claim(namespace: str | None, name: str, model_deployments: kopf.Index, **_: Any) -> bool:
    """A PVC some ModelDeployment reads from. Kopf cannot select a set of names server-side, so the watch
    carries every claim of the watched namespaces; this filter keeps other workloads' claims from running
    (and logging) a handler at all."""
    return (namespace, name) in model_deployments


# Kopf passes indexes (model_deployments) as extra keywords, which its handler protocols do not declare.
@kopf.on.event("v1", "persistentvolumeclaims", when=is_model_claim)  # type: ignore[arg-type]
def claim_changed(namespace: str | None, name: str, memo: Any, model_deployments: kopf.Index, **_: Any) -> None:
    """A model's PVC appeared or went away: the ModelDeployments that read from it learn at once."""
    for reader in model_deployments.get((namespace, name), []):
        reconcile(memo.kube, str(namespace), reader, memo.settings)


@kopf.on.event(  # type: ignore[arg-type]
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", when=lambda name, **_: name == SERVICE_MONITOR_CRD
)
def service_monitor_crd_changed(memo: Any, model_deployments: kopf.Index, **_: Any) -> None:
    """The Prometheus Operator was installed (or removed): every ModelDeployment gets (or loses) its
    ServiceMonitor now, not at the next resync."""
    memo.kube.forget_discovery()
    for (namespace, _claim), names in model_deployments.items():
        for name in names:
            reconcile(memo.kube, str(namespace), name, memo.settings)
