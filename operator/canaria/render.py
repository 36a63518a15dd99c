"""Pure rendering: a (defaulted) ModelDeployment and a track's model -> Kubernetes objects as plain dicts.

No I/O. Every child carries the owner reference and the labels that the operator uses to find it again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canaria import schema, spec
from canaria.spec import Object

STABLE, CANARY = "stable", "canary"
MANAGED_BY = "app.kubernetes.io/managed-by"
OWNER_LABEL = f"{schema.GROUP}/model-deployment"
TRACK_LABEL = f"{schema.GROUP}/track"
VERSION_LABEL = f"{schema.GROUP}/version"
CONFIG_HASH_ANNOTATION = f"{schema.GROUP}/config-hash"
# The model a Deployment's pods run (content_hash of the track's spec.model, equal to canaria.rollout.model_hash):
# how a pass tells which model each track runs and which ready pods run it.
MODEL_HASH_ANNOTATION = f"{schema.GROUP}/model-hash"
GATEWAY_API = "gateway.networking.k8s.io/v1"

INFERENCE_PORT, MANAGEMENT_PORT, METRICS_PORT = 8080, 8081, 8082
MODEL_STORE = "/home/model-server/model-store"
# The only places a serving pod writes (emptyDirs; the root filesystem is read-only): TorchServe links or
# unpacks each archive under java.io.tmpdir (/tmp) and writes its logs to LOG_LOCATION.
TMP_DIR = "/tmp"
LOG_DIR = "/home/model-server/logs"
# TorchServe may register models only from these URL patterns; with the model API off it registers none at
# run time, and the pattern keeps it so should the API be turned on: nothing outside the model store.
ALLOWED_URLS = f"file://{MODEL_STORE}/.*"
CONFIG_DIR = "/etc/canaria"
PVC_MOUNT = "/mnt/models"
TORCHSERVE_UID = 1000  # the model-server user of the TorchServe images


@dataclass(frozen=True)
class Settings:
    """Operator-wide settings (from the Helm chart, via environment)."""

    packager_image: str = "ghcr.io/canaria-dev/canaria-packager:0.1.0"
    cluster_domain: str = "cluster.local"
    prometheus_url: str = ""  # rollout analyses' default Prometheus; "" means none (every check has no data)


# -- names and labels -----------------------------------------------------------------------------------


def deployment_name(md: Object, track: str) -> str:
    return f"{md['metadata']['name']}-{track}"


def config_map_name(md: Object, track: str, model: Object) -> str:
    """Named by its content: a track's ConfigMap never changes under its running pods (it is immutable), and
    a stable pod that restarts mid-rollout reads the stable configuration, not the canary's."""
    return f"{md['metadata']['name']}-{track}-config-{content_hash(config_data(md, model))[:10]}"


def service_name(md: Object) -> str:
    return str(md["metadata"]["name"])


def track_service_name(md: Object, track: str) -> str:
    """A Service over one track's pods only (GatewayAPI mode: the HTTPRoute's backends)."""
    return f"{md['metadata']['name']}-{track}"


def common_labels(md: Object) -> dict[str, str]:
    name = md["metadata"]["name"]
    return {
        "app.kubernetes.io/name": "torchserve",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "predictor",
        MANAGED_BY: "canaria",
        OWNER_LABEL: name,
    }


def track_labels(md: Object, track: str) -> dict[str, str]:
    return {**common_labels(md), TRACK_LABEL: track}


def owner_reference(md: Object) -> dict[str, Any]:
    return {
        "apiVersion": f"{schema.GROUP}/{schema.VERSION}",
        "kind": schema.KIND,
        "name": md["metadata"]["name"],
        "uid": md["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(md: Object, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": md["metadata"]["namespace"],
        "labels": labels,
        "ownerReferences": [owner_reference(md)],
    }


def inference_url(md: Object, settings: Settings) -> str:
    host = f"{service_name(md)}.{md['metadata']['namespace']}.svc.{settings.cluster_domain}"
    return f"http://{host}:{INFERENCE_PORT}/predictions/{spec.model_name(md)}"


# -- TorchServe configuration ---------------------------------------------------------------------------


def config_properties(md: Object, model: Object) -> str:
    """TorchServe's config.properties for one track. Every security-relevant default is set explicitly."""
    serving = md["spec"]["serving"]
    name = spec.model_name(md)
    model_config = {
        name: {
            model["version"]: {
                "defaultVersion": True,
                "marName": f"{name}.mar",
                "minWorkers": serving["workers"]["min"],
                "maxWorkers": serving["workers"]["max"],
                "batchSize": serving["batching"]["maxBatchSize"],
                "maxBatchDelay": serving["batching"]["maxBatchDelayMs"],
                "responseTimeout": serving["responseTimeoutSeconds"],
            }
        }
    }
    lines = [
        f"inference_address=http://0.0.0.0:{INFERENCE_PORT}",
        f"management_address=http://127.0.0.1:{MANAGEMENT_PORT}",  # never reachable from outside the pod
        f"metrics_address=http://0.0.0.0:{METRICS_PORT}",
        "metrics_mode=prometheus",
        "disable_token_authorization=true",  # the management API is loopback-only
        "enable_model_api=false",  # no registering or deleting models at run time: the pod serves what it packaged
        f"allowed_urls={ALLOWED_URLS}",
        f"model_store={MODEL_STORE}",
        f"load_models={name}.mar",
        f"default_response_timeout={serving['responseTimeoutSeconds']}",
        f"install_py_dep_per_model={'true' if model.get('requirements') else 'false'}",
        "models=" + json.dumps(model_config, sort_keys=True, separators=(",", ":")),
    ]
    return "\n".join(lines) + "\n"


def readiness_script() -> str:
    return (Path(__file__).parent / "probes" / "model_ready.py").read_text()


def config_data(md: Object, model: Object) -> dict[str, str]:
    return {"config.properties": config_properties(md, model), "model_ready.py": readiness_script()}


def config_map(md: Object, track: str, model: Object) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(md, config_map_name(md, track, model), track_labels(md, track)),
        "immutable": True,
        "data": config_data(md, model),
    }


def content_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# -- the serving pods -----------------------------------------------------------------------------------


def packager_args(md: Object, model: Object) -> list[str]:
    """Arguments of `python -m canaria.package` (the init container) for this model."""
    pvc = spec.pvc_source(model)
    source = f"{PVC_MOUNT}/{pvc[1]}" if pvc else model["storageUri"]
    args = ["--name", spec.model_name(md), "--version", model["version"], "--source", source]
    if pvc:  # the torchserve container mounts the claim too: the archive links to its files, copies none
        args.append("--source-in-place")
    optional = [
        ("--sha256", model.get("sha256")),
        ("--serialized-file", model.get("serializedFile")),
        ("--model-file", model.get("modelFile")),
        ("--handler", model.get("handler")),
        ("--requirements", model.get("requirements")),
    ]
    args += [item for flag, value in optional if value for item in (flag, value)]
    if model.get("extraFiles"):
        args += ["--extra-files", ",".join(model["extraFiles"])]
    optimization = model.get("optimization") or {}
    if optimization.get("quantization") == "Int8Dynamic":
        args += ["--quantize", "int8"]
    if optimization.get("torchscript"):
        args.append("--torchscript")
    return [
        *args,
        "--model-store",
        MODEL_STORE,
        "--config",
        f"{CONFIG_DIR}/config.properties",
        "--termination-log",
        "/dev/termination-log",
    ]


def s3_env(model: Object) -> list[dict[str, Any]]:
    s3 = model.get("s3") or {}
    env: list[dict[str, Any]] = []
    if s3.get("endpoint"):
        env.append({"name": "AWS_ENDPOINT_URL", "value": s3["endpoint"]})
    if s3.get("region"):
        env.append({"name": "AWS_REGION", "value": s3["region"]})
    if s3.get("credentialsSecret"):
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": s3["credentialsSecret"], "key": key}}})
    return env


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def packager_container(md: Object, model: Object, settings: Settings) -> dict[str, Any]:
    mounts = [
        {"name": "model-store", "mountPath": MODEL_STORE},  # the packager writes the archive here
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    if spec.pvc_source(model):
        mounts.append({"name": "model-source", "mountPath": PVC_MOUNT, "readOnly": True})
    return {
        "name": "package",
        "image": settings.packager_image,
        "command": ["python", "-m", "canaria.package"],
        "args": packager_args(md, model),
        "env": s3_env(model),
        "resources": md["spec"]["serving"]["resources"],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }


def torchserve_container(md: Object, model: Object) -> dict[str, Any]:
    serving = md["spec"]["serving"]
    ping = {"httpGet": {"path": "/ping", "port": "http"}}
    return {
        "name": "torchserve",
        "image": serving["image"],
        "imagePullPolicy": serving["imagePullPolicy"],
        "command": ["torchserve"],
        # --ncs: no config snapshots, so a restart never resurrects an old model configuration.
        "args": ["--start", "--foreground", "--ncs", "--ts-config", f"{CONFIG_DIR}/config.properties"],
        "ports": [
            {"name": "http", "containerPort": INFERENCE_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # TorchServe's log4j writes to LOG_LOCATION, else to ./logs on the read-only root filesystem.
        "env": [
            {"name": "LOG_LOCATION", "value": LOG_DIR},
            {"name": "METRICS_LOCATION", "value": LOG_DIR},
            *(serving.get("env") or []),
        ],
        "resources": serving["resources"],
        "startupProbe": {**ping, "periodSeconds": 5, "failureThreshold": 120},
        "livenessProbe": {**ping, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
        "readinessProbe": {
            "exec": {
                "command": [
                    "python3",
                    f"{CONFIG_DIR}/model_ready.py",
                    spec.model_name(md),
                    model["version"],
                    str(serving["workers"]["min"]),
                ]
            },
            "periodSeconds": 5,
            "timeoutSeconds": 4,
            "failureThreshold": 3,
        },
        # Let endpoints drop the pod before TorchServe stops taking requests.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "model-store", "mountPath": MODEL_STORE, "readOnly": True},  # serving never alters the model
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": TMP_DIR},
            {"name": "logs", "mountPath": LOG_DIR},
            # A pvc:// source's files are linked into the archive: served from the claim, at the same path.
            *([{"name": "model-source", "mountPath": PVC_MOUNT, "readOnly": True}] if spec.pvc_source(model) else []),
        ],
    }


def pod_spec(md: Object, track: str, model: Object, settings: Settings) -> dict[str, Any]:
    serving = md["spec"]["serving"]
    scratch_limit = serving["modelStoreSizeLimit"]
    volumes: list[dict[str, Any]] = [
        {"name": "model-store", "emptyDir": {"sizeLimit": scratch_limit}},
        {"name": "config", "configMap": {"name": config_map_name(md, track, model)}},
        # A zip archive is unpacked under /tmp: it may hold a model as large as the store.
        {"name": "tmp", "emptyDir": {"sizeLimit": scratch_limit}},
        # No limit: TorchServe's log4j rolls its files by size and day but never deletes them, and a full
        # volume would get the pod evicted.
        {"name": "logs", "emptyDir": {}},
    ]
    pvc = spec.pvc_source(model)
    if pvc:
        volumes.append({"name": "model-source", "persistentVolumeClaim": {"claimName": pvc[0], "readOnly": True}})
    pod: dict[str, Any] = {
        # Serving needs no Kubernetes API; cloud workload identity (IRSA, GKE, Azure) brings its own token.
        "automountServiceAccountToken": serving["automountServiceAccountToken"],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TORCHSERVE_UID,
            "runAsGroup": TORCHSERVE_UID,
            "fsGroup": TORCHSERVE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [packager_container(md, model, settings)],
        "containers": [torchserve_container(md, model)],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
    }
    optional = {
        key: serving.get(key)
        for key in ("serviceAccountName", "nodeSelector", "tolerations", "affinity", "imagePullSecrets")
    }
    pod.update({key: value for key, value in optional.items() if value})
    return pod


def deployment(md: Object, track: str, model: Object, replicas: int, settings: Settings) -> Object:
    labels = track_labels(md, track)
    pod_labels = {**labels, VERSION_LABEL: model["version"]}
    annotations = {
        CONFIG_HASH_ANNOTATION: content_hash(config_data(md, model)),
        MODEL_HASH_ANNOTATION: content_hash(model),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(md, deployment_name(md, track), labels),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": 600,
            # Never below the wanted ready pods: a bad new pod template must not take down the serving pods.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "selector": {"matchLabels": {OWNER_LABEL: md["metadata"]["name"], TRACK_LABEL: track}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": pod_spec(md, track, model, settings),
            },
        },
    }


# -- network and monitoring -----------------------------------------------------------------------------


SERVICE_PORTS = [
    {"name": "http", "port": INFERENCE_PORT, "targetPort": "http", "protocol": "TCP"},
    {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
]


def service(md: Object) -> Object:
    """One Service over every track (Service mode: the split follows pod counts): inference and metrics ports,
    never the management port. The ServiceMonitor scrapes every pod through it, in both modes."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, service_name(md), common_labels(md)),
        "spec": {
            "type": "ClusterIP",
            "selector": {OWNER_LABEL: md["metadata"]["name"], "app.kubernetes.io/component": "predictor"},
            "ports": SERVICE_PORTS,
        },
    }


def track_service(md: Object, track: str) -> Object:
    """GatewayAPI mode: one track's pods, a backend of the HTTPRoute. Not labelled like the shared Service, so
    the ServiceMonitor (which selects by those labels) scrapes each pod once."""
    labels = {MANAGED_BY: "canaria", OWNER_LABEL: md["metadata"]["name"], TRACK_LABEL: track}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, track_service_name(md, track), labels),
        "spec": {
            "type": "ClusterIP",
            "selector": {OWNER_LABEL: md["metadata"]["name"], TRACK_LABEL: track},
            "ports": [SERVICE_PORTS[0]],
        },
    }


def http_route(md: Object, weights: dict[str, int]) -> Object:
    """GatewayAPI mode: the exact split, {track: weight}, attached to spec.traffic.gateway.parentRefs."""
    gateway = md["spec"]["traffic"]["gateway"]
    route_spec: dict[str, Any] = {
        "parentRefs": gateway["parentRefs"],
        "rules": [
            {
                "backendRefs": [
                    {"name": track_service_name(md, track), "port": INFERENCE_PORT, "weight": weight}
                    for track, weight in weights.items()
                ]
            }
        ],
    }
    if gateway.get("hostnames"):
        route_spec["hostnames"] = gateway["hostnames"]
    return {
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": _metadata(md, service_name(md), common_labels(md)),
        "spec": route_spec,
    }


def service_monitor(md: Object) -> Object:
    """Scrapes every pod once through the shared Service; track and version become series labels."""
    monitor = md["spec"]["monitoring"]["serviceMonitor"]
    labels = {**common_labels(md), **(monitor.get("labels") or {})}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(md, service_name(md), labels),
        "spec": {
            "selector": {"matchLabels": common_labels(md)},
            "namespaceSelector": {"matchNames": [md["metadata"]["namespace"]]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": monitor["interval"]}],
            "podTargetLabels": [TRACK_LABEL, VERSION_LABEL],
        },
    }
