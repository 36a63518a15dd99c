"""The ModelDeployment API: the single source of its OpenAPI schema and CRD.

`crds/` and the Helm chart's copy are generated from `custom_resource_definition()`
(`python -m canaria crd`); a unit test keeps them equal. The operator applies the same
defaults the API server does (`canaria.spec.with_defaults`), so code never re-states a default.
"""

from __future__ import annotations

import copy
from typing import Any

GROUP = "serving.canaria.dev"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md"]
CATEGORIES = ["canaria"]

DEFAULT_TORCHSERVE_IMAGE = "pytorch/torchserve:0.12.0-cpu"
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
VERSION_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,38}[A-Za-z0-9])?$"
MODEL_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
# A relative path whose segments are neither empty, "." nor "..": it cannot leave the model's source.
RELATIVE_PATH_PATTERN = r"^([^/.][^/]*|\.[^/.][^/]*)(/([^/.][^/]*|\.[^/.][^/]*))*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# The one list of Canaria's built-in handlers: the CRD validates spec.model.handler against it and the packager
# packs model_handlers/<name>.py for each (a test checks that the files and this list agree).
BUILTIN_HANDLERS = ("image_classifier", "json_tensor")
# The variables of a PromQL template (spec.rollout.analysis.metrics[].query), as canaria.analysis renders them.
VARIABLE_NAMES = ("namespace", "name", "model", "track", "version", "interval")

Schema = dict[str, Any]


# -- small constructors: they keep the schema below readable --------------------------------------------


def _with(schema: Schema, default: Any = None, **extra: Any) -> Schema:
    if default is not None:
        schema["default"] = default
    schema.update({key: value for key, value in extra.items() if value is not None})
    return schema


def string(description: str, default: str | None = None, **extra: Any) -> Schema:
    extra.setdefault("maxLength", 253)
    return _with({"type": "string", "description": description}, default, **extra)


def enum(description: str, values: list[str], default: str | None = None) -> Schema:
    return _with({"type": "string", "description": description, "enum": values}, default)


def integer(
    description: str, default: int | None = None, minimum: int | None = None, maximum: int | None = None
) -> Schema:
    return _with({"type": "integer", "description": description}, default, minimum=minimum, maximum=maximum)


def number(description: str, minimum: float | None = None, maximum: float | None = None) -> Schema:
    return _with({"type": "number", "description": description}, minimum=minimum, maximum=maximum)


def boolean(description: str, default: bool | None = None) -> Schema:
    return _with({"type": "boolean", "description": description}, default)


def duration(description: str, default: str | None = None) -> Schema:
    return string(description, default, pattern=DURATION_PATTERN, maxLength=32)


def array(description: str, items: Schema, max_items: int = 64, **extra: Any) -> Schema:
    return _with({"type": "array", "description": description, "items": items, "maxItems": max_items}, **extra)


def string_map(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string", "maxLength": 1024},
        "maxProperties": 64,
    }


def free_form(description: str, type_: str = "object") -> Schema:
    """A Kubernetes core type passed through to the pod as is (validated by the API server there)."""
    schema: Schema = {"type": type_, "description": description}
    if type_ == "array":
        schema["items"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        schema["maxItems"] = 64
    else:
        schema["x-kubernetes-preserve-unknown-fields"] = True
    return schema


def obj(
    description: str,
    properties: dict[str, Schema],
    required: list[str] | None = None,
    rules: list[tuple[str, str]] | None = None,
    default: dict[str, Any] | None = None,
) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = required
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": rule, "message": message} for rule, message in rules]
    # The API server checks a default against the rules as written, without defaulting inside it:
    # spell it out in full.
    return _with(schema, None if default is None else with_defaults(default, schema))


def with_defaults(value: Any, node: Schema) -> Any:
    """Fill absent fields from `default`s, the way the API server does (defaults are defaulted too)."""
    if node.get("type") == "object" and isinstance(value, dict):
        result = dict(value)
        for key, child in node.get("properties", {}).items():
            if key not in result and "default" in child:
                result[key] = copy.deepcopy(child["default"])
            if key in result:
                result[key] = with_defaults(result[key], child)
        return result
    if node.get("type") == "array" and isinstance(value, list):
        return [with_defaults(item, node["items"]) for item in value]
    return value


def quantity_map(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "maxProperties": 16,
        "additionalProperties": {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
        },
    }


# -- spec ---------------------------------------------------------------------------------------------


def model_schema() -> Schema:
    return obj(
        "The model to serve and where its files come from. Changing `version` (or anything here) ships a new "
        "model version according to spec.rollout.",
        {
            "name": string(
                "TorchServe model name, used in the inference URL /predictions/<name>. Defaults to "
                "the ModelDeployment's name.",
                pattern=MODEL_NAME_PATTERN,
                maxLength=63,
            ),
            "version": string(
                'Version of the model, e.g. "1.0" or "2026-11-28". A new version is rolled out progressively.',
                pattern=VERSION_PATTERN,
                maxLength=40,
            ),
            "storageUri": string(
                "Where the model files are: http(s)://host/path (a file, or a .tar.gz/.zip of the files), "
                "s3://bucket/prefix, or pvc://<claim>/<path>. A URI ending in .mar is a prebuilt TorchServe "
                "archive and is served as is.",
                maxLength=2048,
            ),
            "sha256": string(
                "Expected SHA-256 (hex) of the downloaded file, checked before packaging.",
                pattern=r"^[a-f0-9]{64}$",
                maxLength=64,
            ),
            "s3": obj(
                "Settings for s3:// sources.",
                {
                    "endpoint": string(
                        "Endpoint URL of an S3-compatible store (MinIO, Ceph, ...). Empty means AWS.",
                        pattern=r"^https?://.+",
                        maxLength=512,
                    ),
                    "region": string("Region of the bucket.", maxLength=64),
                    "credentialsSecret": string(
                        "Name of a Secret in this namespace with keys AWS_ACCESS_KEY_ID "
                        "and AWS_SECRET_ACCESS_KEY. Empty means the pod's own identity "
                        "(IRSA, workload identity).",
                        pattern=DNS_LABEL_PATTERN,
                    ),
                },
            ),
            "serializedFile": string(
                "Weights file inside the source (a state_dict .pt/.pth, or a TorchScript file).",
                pattern=RELATIVE_PATH_PATTERN,
            ),
            "modelFile": string(
                "Python file inside the source that defines the model class (needed for a state_dict).",
                pattern=RELATIVE_PATH_PATTERN,
            ),
            "handler": string(
                f"TorchServe handler: a Canaria built-in ({', '.join(BUILTIN_HANDLERS)}) or a "
                ".py file inside the source.",
                maxLength=253,
            ),
            "extraFiles": array(
                "More files from the source to put in the archive (e.g. index_to_name.json).",
                string("Relative path.", pattern=RELATIVE_PATH_PATTERN),
                max_items=32,
            ),
            "requirements": string(
                "A requirements.txt inside the source, installed by TorchServe when the model loads.",
                pattern=RELATIVE_PATH_PATTERN,
            ),
            "optimization": obj(
                "Optimisations applied while packaging.",
                {
                    "quantization": enum(
                        "Quantisation of the weights: None, or Int8Dynamic (dynamic int8 "
                        "quantisation of Linear layers, CPU inference).",
                        ["None", "Int8Dynamic"],
                        "None",
                    ),
                    "torchscript": boolean("Export the model to TorchScript while packaging.", False),
                },
                default={},
            ),
        },
        required=["version", "storageUri"],
        rules=[
            (
                "self.storageUri.matches('^(https?|s3|pvc)://.+')",
                "spec.model.storageUri must start with http://, https://, s3:// or pvc://",
            ),
            (
                "!self.storageUri.startsWith('pvc://') || "
                "self.storageUri.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^/].*$')",
                "spec.model.storageUri: a PVC source is pvc://<claim-name>/<path inside the claim>",
            ),
            (
                "!self.storageUri.startsWith('s3://') || self.storageUri.matches('^s3://[a-z0-9][-a-z0-9.]{1,61}"
                "[a-z0-9](/.*)?$')",
                "spec.model.storageUri: an S3 source is s3://<bucket>/<prefix>",
            ),
            (
                "!has(self.s3) || self.storageUri.startsWith('s3://')",
                "spec.model.s3 is only for s3:// sources: remove it or change spec.model.storageUri",
            ),
            (
                "self.storageUri.endsWith('.mar') || has(self.handler)",
                "spec.model.handler is required (a built-in such as image_classifier, or a .py file in the source) "
                "unless spec.model.storageUri is a prebuilt .mar",
            ),
            (
                "!self.storageUri.endsWith('.mar') || !(has(self.handler) || has(self.serializedFile) || "
                "has(self.modelFile) || has(self.extraFiles) || has(self.requirements))",
                "a prebuilt .mar already contains handler, serializedFile, modelFile, extraFiles and "
                "requirements: remove them from spec.model",
            ),
            (
                "!has(self.handler) || self.handler in " + repr(list(BUILTIN_HANDLERS)) + " || "
                "self.handler.endsWith('.py') && self.handler.matches('"
                + RELATIVE_PATH_PATTERN.replace("\\", "\\\\")
                + "')",
                "spec.model.handler must be a Canaria built-in (" + ", ".join(BUILTIN_HANDLERS) + ") or the "
                "relative path of a .py file in the source",
            ),
            (
                "!has(self.modelFile) || has(self.serializedFile)",
                "spec.model.modelFile needs spec.model.serializedFile (the state_dict it loads)",
            ),
            (
                "!self.storageUri.endsWith('.mar') || self.optimization.quantization == 'None' && "
                "!self.optimization.torchscript",
                "spec.model.optimization cannot be applied to a prebuilt .mar",
            ),
        ],
    )


def serving_schema() -> Schema:
    return obj(
        "How TorchServe runs the model. Changes here roll the pods in place.",
        {
            "image": string("TorchServe container image.", DEFAULT_TORCHSERVE_IMAGE, maxLength=512),
            "imagePullPolicy": enum(
                "Pull policy of the TorchServe image.", ["Always", "IfNotPresent", "Never"], "IfNotPresent"
            ),
            "replicas": integer("Number of TorchServe pods of the stable version.", 1, 0, 100),
            "resources": obj(
                "Compute resources of the TorchServe container.",
                {
                    "requests": quantity_map('Requested resources, e.g. cpu: "1", memory: 2Gi.'),
                    "limits": quantity_map("Resource limits, e.g. memory: 4Gi."),
                },
                default={"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
            ),
            "workers": obj(
                "TorchServe workers (processes) per pod for this model.",
                {
                    "min": integer(
                        "Workers started with the model; the pod is Ready only when this many are READY.", 1, 1, 64
                    ),
                    "max": integer("Most workers TorchServe may scale to.", 1, 1, 64),
                },
                rules=[("self.min <= self.max", "spec.serving.workers.min must not exceed spec.serving.workers.max")],
                default={},
            ),
            "batching": obj(
                "Server-side batching.",
                {
                    "maxBatchSize": integer("Requests aggregated into one batch (1 turns batching off).", 1, 1, 1024),
                    "maxBatchDelayMs": integer("Longest wait for a batch to fill, in milliseconds.", 50, 0, 60000),
                },
                default={},
            ),
            "responseTimeoutSeconds": integer(
                "Time a worker may take for one batch before TorchServe restarts it.", 120, 1, 3600
            ),
            "env": free_form("Environment variables of the TorchServe container (core/v1 EnvVar).", "array"),
            "nodeSelector": string_map("Node labels the pods must match."),
            "tolerations": free_form("Pod tolerations (core/v1 Toleration).", "array"),
            "affinity": free_form("Pod affinity rules (core/v1 Affinity)."),
            "serviceAccountName": string(
                "Service account of the pods (for example one with read access to the model bucket).",
                pattern=DNS_LABEL_PATTERN,
            ),
            "automountServiceAccountToken": boolean(
                "Mount the service account's Kubernetes API token into the pods. Serving needs no API access, "
                "and cloud workload identity (EKS IRSA, GKE, Azure) brings its own token: turn this on only "
                "for code of yours that calls the Kubernetes API.",
                False,
            ),
            "modelStoreSizeLimit": string(
                "Size limit of each of the pod's scratch volumes: the model store (the downloaded source while "
                "packaging, then the archive: about twice the model's files) and /tmp (where TorchServe "
                "unpacks a zip archive). A pod that writes more is evicted.",
                "10Gi",
                pattern=QUANTITY_PATTERN,
                maxLength=64,
            ),
            "imagePullSecrets": array(
                "Secrets for pulling the images.",
                obj(
                    "A Secret reference.",
                    {"name": string("Secret name.", pattern=DNS_LABEL_PATTERN)},
                    required=["name"],
                ),
                16,
            ),
        },
        default={},
    )


def monitoring_schema() -> Schema:
    return obj(
        "Prometheus wiring.",
        {
            "serviceMonitor": obj(
                "A Prometheus Operator ServiceMonitor for the model's pods (created when the "
                "ServiceMonitor CRD exists in the cluster).",
                {
                    "enabled": boolean("Create the ServiceMonitor.", True),
                    "interval": duration("Scrape interval.", "15s"),
                    "labels": string_map(
                        "Extra labels on the ServiceMonitor, so that a Prometheus's "
                        "serviceMonitorSelector finds it (e.g. release: prometheus)."
                    ),
                },
                default={},
            ),
        },
        default={},
    )


def metric_schema() -> Schema:
    return obj(
        "One check of the canary against Prometheus.",
        {
            "name": string("Name of the check, shown in status and Events.", pattern=DNS_LABEL_PATTERN, maxLength=63),
            "builtin": enum(
                "A ready-made TorchServe query: ErrorRate (percent of 5xx answers), MeanLatency "
                "(milliseconds, from ts_inference_latency_microseconds).",
                ["ErrorRate", "MeanLatency"],
            ),
            "query": string(
                "A PromQL template instead of a builtin. Variables: {{namespace}}, {{name}}, "
                "{{model}}, {{track}}, {{version}}, {{interval}}; an unknown variable is an error.",
                maxLength=4096,
            ),
            "max": number("The check fails above this value."),
            "min": number("The check fails below this value."),
            "maxIncreaseOverStablePercent": number(
                "The check fails when the canary's value exceeds the stable version's by more than this percentage.", 0
            ),
        },
        required=["name"],
        rules=[
            (
                "has(self.builtin) != has(self.query)",
                "each spec.rollout.analysis.metrics entry needs exactly one of builtin or query",
            ),
            (
                "has(self.max) || has(self.min) || has(self.maxIncreaseOverStablePercent)",
                "each spec.rollout.analysis.metrics entry needs a threshold: max, min or maxIncreaseOverStablePercent",
            ),
            (
                "!has(self.max) || !has(self.min) || self.min <= self.max",
                "spec.rollout.analysis.metrics: min must not exceed max",
            ),
        ],
    )


def rollout_schema() -> Schema:
    step = obj(
        "One step of a canary rollout.",
        {
            "weight": integer("Percent of traffic sent to the new version at this step.", None, 1, 99),
            "pause": duration(
                "Bake time at this step before the next one (the analysis must pass throughout). "
                "Defaults to spec.rollout.stepInterval."
            ),
        },
        required=["weight"],
    )
    analysis = obj(
        "How each step is judged. The canary is promoted when every check passes at every step, "
        "and rolled back when a check fails failureLimit times in a row.",
        {
            "interval": duration("How often the checks run.", "30s"),
            "failureLimit": integer("Failed checks in a row that roll the canary back.", 2, 1, 100),
            "minRequests": integer(
                "Requests the canary must have served in an interval for a verdict; with "
                "fewer, the interval counts as no data.",
                10,
                0,
                1000000,
            ),
            "noData": enum(
                "What no data means: Wait (hold the step and say so in status), Fail (count as a "
                "failed check), Pass (count as passed).",
                ["Wait", "Fail", "Pass"],
                "Wait",
            ),
            "metrics": array(
                "The checks. Defaults: error rate at most 1 percent, mean latency at most 20 percent "
                "above the stable version's. An empty list judges nothing: each step lasts its pause.",
                metric_schema(),
                16,
                default=[
                    {"name": "error-rate", "builtin": "ErrorRate", "max": 1},
                    {"name": "latency", "builtin": "MeanLatency", "maxIncreaseOverStablePercent": 20},
                ],
            ),
            "prometheusUrl": string(
                "Prometheus' HTTP API for this object's checks (e.g. http://prometheus.monitoring:9090). "
                "Defaults to the operator's setting (Helm value prometheus.url).",
                pattern=r"^https?://\S+$",
                maxLength=512,
            ),
        },
        rules=[
            (
                "!has(self.metrics) || self.metrics.all(m, !has(m.query) || m.query.findAll('[{][{][^{}]*[}][}]')"
                ".all(v, v.matches('^[{][{] *(" + "|".join(VARIABLE_NAMES) + ") *[}][}]$')))",
                "spec.rollout.analysis.metrics: a query uses an unknown variable; the known ones are "
                + ", ".join("{{" + name + "}}" for name in VARIABLE_NAMES),
            ),
            (
                # Every {{ opens a variable that closes: as many {{ as whole {{...}} (canaria.analysis.render_query).
                "!has(self.metrics) || self.metrics.all(m, !has(m.query) || "
                "size(m.query.findAll('[{][{]')) == size(m.query.findAll('[{][{][^{}]*[}][}]')))",
                "spec.rollout.analysis.metrics: a query has a {{ without its closing }}: write variables as {{name}}",
            ),
        ],
        default={},
    )
    return obj(
        "How a new model version replaces the serving one. Edit spec.model.version to start a rollout; set "
        "paused, promote or abort to steer it.",
        {
            "strategy": enum(
                "Canary: the steps below. Linear: stepWeight more traffic every stepInterval up "
                "to maxWeight. Immediate: a plain rolling update, no analysis.",
                ["Canary", "Linear", "Immediate"],
                "Canary",
            ),
            "steps": array(
                "Canary steps (strategy Canary), in increasing weight.",
                step,
                20,
                default=[{"weight": 10}, {"weight": 50}],
            ),
            "stepWeight": integer("Traffic added per step (strategy Linear), in percent.", 20, 1, 99),
            "maxWeight": integer("Last canary weight before promotion (strategy Linear), in percent.", 80, 1, 99),
            "stepInterval": duration("Default bake time of a step.", "1m"),
            "analysis": analysis,
            "paused": boolean("Hold the rollout at its current step (traffic stays as it is).", False),
            "promote": string(
                "Set to the canary's version to promote it now, skipping the remaining steps "
                "and analysis. Ignored for any other version.",
                pattern=VERSION_PATTERN,
                maxLength=40,
            ),
            "abort": string(
                "Set to the canary's version to roll it back now. Ignored for any other version.",
                pattern=VERSION_PATTERN,
                maxLength=40,
            ),
            "retry": string(
                "Set to the version of a rolled-back or aborted canary to roll it out again from the first "
                "step. Acts once each time it is set to that version; ignored for any other version.",
                pattern=VERSION_PATTERN,
                maxLength=40,
            ),
            "progressDeadline": duration(
                "How long a rollout may go without progress (a step starting, one more ready pod, a pass or "
                "fail verdict) before it rolls back: canary pods that never become ready, or no data.",
                "10m",
            ),
        },
        rules=[
            (
                "!has(self.steps) || self.steps.map(s, s.weight).isSorted()",
                "spec.rollout.steps must be in increasing weight",
            ),
            ("self.stepWeight <= self.maxWeight", "spec.rollout.stepWeight must not exceed spec.rollout.maxWeight"),
            (
                "self.strategy != 'Canary' || size(self.steps) > 0",
                "spec.rollout.steps needs at least one step for strategy Canary",
            ),
            (
                "!has(self.promote) || !has(self.abort) || self.promote != self.abort",
                "spec.rollout.promote and spec.rollout.abort name the same version: keep one",
            ),
            (
                "!has(self.retry) || !has(self.abort) || self.retry != self.abort",
                "spec.rollout.retry and spec.rollout.abort name the same version: keep one",
            ),
        ],
        default={},
    )


def traffic_schema() -> Schema:
    parent_ref = obj(
        "A Gateway the HTTPRoute attaches to.",
        {
            "name": string("Gateway name.", pattern=DNS_LABEL_PATTERN),
            "namespace": string("Gateway namespace (defaults to this one).", pattern=DNS_LABEL_PATTERN),
            "sectionName": string("Listener name on the Gateway.", maxLength=253),
        },
        required=["name"],
    )
    return obj(
        "How traffic is split between the stable and the canary version.",
        {
            "mode": enum(
                "Service: one Service over both versions, the split follows their replica counts "
                "(no extra components, coarse). GatewayAPI: an HTTPRoute with exact weights.",
                ["Service", "GatewayAPI"],
                "Service",
            ),
            "gateway": obj(
                "The Gateway API settings (mode GatewayAPI).",
                {
                    "parentRefs": array("Gateways to attach the HTTPRoute to.", parent_ref, 8),
                    "hostnames": array("Hostnames the route answers.", string("A hostname.", maxLength=253), 16),
                },
            ),
        },
        rules=[
            (
                "self.mode != 'GatewayAPI' || has(self.gateway) && has(self.gateway.parentRefs) && "
                "size(self.gateway.parentRefs) > 0",
                "spec.traffic.gateway.parentRefs is required when spec.traffic.mode is GatewayAPI",
            )
        ],
        default={},
    )


def spec_schema() -> Schema:
    return obj(
        "The model to serve, how to serve it, and how new versions roll out.",
        {
            "model": model_schema(),
            "serving": serving_schema(),
            "monitoring": monitoring_schema(),
            "rollout": rollout_schema(),
            "traffic": traffic_schema(),
        },
        required=["model"],
    )


# -- status -------------------------------------------------------------------------------------------

PHASES = [
    "Pending",
    "Serving",
    "ScaledToZero",
    "Progressing",
    "Waiting",
    "Paused",
    "Promoting",
    "RolledBack",
    "Aborted",
    "Degraded",
    "Failed",
]


def status_schema() -> Schema:
    condition = obj(
        "A condition of the ModelDeployment (kstatus-compatible: Ready, Reconciling, Stalled, and one per part).",
        {
            "type": string("Condition type.", maxLength=316),
            "status": enum("True, False or Unknown.", ["True", "False", "Unknown"]),
            "reason": string("CamelCase reason.", maxLength=1024),
            "message": string("Human-readable detail.", maxLength=32768),
            "lastTransitionTime": string("When status last changed.", format="date-time", maxLength=64),
            "observedGeneration": integer("Generation the condition was computed from.", None, 0),
        },
        required=["type", "status"],
    )
    return obj(
        "Observed state, written by the operator.",
        {
            "observedGeneration": integer("The spec generation this status describes.", None, 0),
            "phase": enum(
                "Pending: the first version is not serving yet. Serving: the stable version serves, no "
                "rollout. ScaledToZero: spec.serving.replicas is 0 and no pod runs; Ready is True (nothing "
                "to wait for), Available is False with reason ScaledToZero. Progressing: a canary takes part "
                "of the traffic. Waiting: a rollout step holds (canary pods not ready, or no data; see "
                "status.rollout.reason) while its progress deadline runs. Paused: spec.rollout.paused holds "
                "the rollout. Promoting: the canary passed and becomes stable. RolledBack: the "
                "last canary failed and serves no traffic; the stable version serves. Aborted: "
                "spec.rollout.abort named the canary, which serves no traffic. Degraded: the stable "
                "version serves with fewer ready pods than wanted. Failed: nothing serves and a spec "
                "change is needed.",
                PHASES,
            ),
            "message": string("What the operator is doing or waiting for.", maxLength=4096),
            "stableVersion": string("Version that serves most traffic.", maxLength=40),
            "canaryVersion": string("Version under test, if any.", maxLength=40),
            "canaryWeight": integer("Percent of traffic sent to the canary.", None, 0, 100),
            "replicas": integer("Pods wanted for the stable version.", None, 0),
            "readyReplicas": integer("Stable pods ready (model loaded).", None, 0),
            "ready": string("Ready pods over wanted pods, e.g. 2/2.", maxLength=32),
            "url": string("In-cluster inference URL.", maxLength=1024),
            "modelDigest": string(
                "Digest (blake3:<hex>) of the model archive the stable version's ready pods loaded, as "
                "their packaging init container reported it.",
                maxLength=128,
            ),
            "canaryModelDigest": string(
                "Digest (blake3:<hex>) of the model archive the canary's ready pods loaded, while a rollout "
                "runs a canary.",
                maxLength=128,
            ),
            "conditions": {
                **array("Conditions.", condition, 32),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "canaryReadyReplicas": integer("Canary pods ready (model loaded).", None, 0),
            "requestedWeight": integer(
                "The current step's weight. canaryWeight is the share the canary gets: in Service mode it "
                "follows pod counts, so it is the closest share the replica counts allow.",
                None,
                0,
                100,
            ),
            "rollout": {
                "type": "object",
                "description": "The rollout's state (canaria.rollout): phase, step, stepStartedAt, bakeStartedAt, "
                "trafficWeight, canaryModel and canaryHash, each check's last value and verdict (checks), "
                "failures in a row per check, the step's verdict history, reason and message. Everything a "
                "restarted operator needs to continue where it was.",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
    )


# -- the CRD --------------------------------------------------------------------------------------------


def printer_columns() -> list[dict[str, Any]]:
    def column(name: str, path: str, type_: str = "string", priority: int = 0) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
        if priority:
            entry["priority"] = priority
        return entry

    return [
        column("Phase", ".status.phase"),
        column("Stable", ".status.stableVersion"),
        column("Canary", ".status.canaryVersion"),
        column("Weight", ".status.canaryWeight", "integer"),
        column("Ready", ".status.ready"),
        column("URL", ".status.url", priority=1),
        column("Age", ".metadata.creationTimestamp", "date"),
    ]


def openapi_schema() -> Schema:
    return {
        "type": "object",
        "description": "A PyTorch model served by TorchServe, with progressive rollout of new versions.",
        "properties": {
            "apiVersion": {"type": "string", "description": "serving.canaria.dev/v1alpha1"},
            "kind": {"type": "string", "description": "ModelDeployment"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        "required": ["spec"],
        "x-kubernetes-validations": [
            {
                "rule": "size(self.metadata.name) <= 45",
                "message": "metadata.name must be at most 45 characters (child objects add suffixes such as -canary)",
            },
            {
                "rule": "has(self.spec.model.name) || self.metadata.name.matches('^[a-z][a-z0-9-]*$')",
                "message": "metadata.name is not a valid TorchServe model name (letters, digits, - and _, "
                "starting with a letter): set spec.model.name",
            },
        ],
    }


def custom_resource_definition() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "canaria", "app.kubernetes.io/part-of": "canaria"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(),
                }
            ],
        },
    }
