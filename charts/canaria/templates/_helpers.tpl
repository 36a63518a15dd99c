{{/*
Chart name, truncated to 63 characters (the limit of a DNS label and of a label value).
*/}}
{{- define "canaria.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: "<release>-<chart>", or "<release>" when the release name already
contains the chart name; truncated to 63 characters.
*/}}
{{- define "canaria.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"<chart>-<version>" for the helm.sh/chart label.
*/}}
{{- define "canaria.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator's pods. They never change across upgrades (a Deployment's selector is
immutable).
*/}}
{{- define "canaria.selectorLabels" -}}
app.kubernetes.io/name: {{ include "canaria.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "canaria.labels" -}}
{{ include "canaria.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: canaria
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "canaria.chart" . }}
{{- end }}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "canaria.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "canaria.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: "repository@digest" when a digest pins it, otherwise
"repository:tag" with the chart's appVersion as the default tag. Call with (list .Values.image $).
*/}}
{{- define "canaria.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
RBAC rules for the objects the operator manages inside a watched namespace. Used by the ClusterRole in
cluster-wide mode and by the per-namespace Roles otherwise. Every verb here is one the operator issues, as
tests/integration/test_rbac_audit.py checks against the API server's audit log; the one exception is
marked. Server-side apply is a PATCH that the API server also authorizes as "create" when the object does
not exist yet. Children are never deleted by the operator (their ownerReferences let the garbage collector
remove them with their ModelDeployment); only a ServiceMonitor switched off is.
*/}}
{{- define "canaria.namespacedRules" -}}
# ModelDeployments: read at the start of each pass, listed and watched by Kopf, which keeps its progress
# in annotations (patch).
- apiGroups: ["serving.canaria.dev"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch", "patch"]
# Status is written only through the status subresource.
- apiGroups: ["serving.canaria.dev"]
  resources: ["modeldeployments/status"]
  verbs: ["patch"]
# The exception: no request uses it. Children's ownerReferences set blockOwnerDeletion, which clusters with
# the OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened clusters) allow only to
# users who may update the owner's finalizers.
- apiGroups: ["serving.canaria.dev"]
  resources: ["modeldeployments/finalizers"]
  verbs: ["update"]
# The children it renders: read in each pass, watched for drift, written by server-side apply. The canary's
# Deployment is deleted once a rollout ends; ConfigMaps (immutable, named by their content) once no pod uses them.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Services are listed (never read by name); a track's Service is deleted when GatewayAPI mode is switched off.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# GatewayAPI traffic mode: the HTTPRoute that splits traffic between the tracks, read and applied in each pass,
# watched so a hand edit of its weights is repaired at once, deleted when the mode is switched off.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# ServiceMonitors likewise, and deleted when a ModelDeployment switches its ServiceMonitor off.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Serving pods: listed by label in each pass and watched, to report crash loops and packaging failures.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# A model's PersistentVolumeClaim: read by name to report a missing one; watched so a ModelDeployment
# waiting for its claim learns at once when it appears.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch"]
# A model's S3 credentials Secret: read by name only, to report a missing one before anything is applied.
# Never listed, watched or written.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events on ModelDeployments (the operator's own and Kopf's), through the core API.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
RBAC rules that only exist cluster-wide: Kopf's scanning of CRDs (and of namespaces when it watches only
some), and API discovery.
*/}}
{{- define "canaria.clusterRules" -}}
# CRDs: Kopf notices resources installed later; the operator reacts to the ServiceMonitor CRD appearing.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
# Namespaces: Kopf follows the watched namespaces being created and deleted.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
# API discovery: Kopf's resource scanning, and whether the ServiceMonitor API is served.
- nonResourceURLs: ["/api", "/api/*", "/apis", "/apis/*"]
  verbs: ["get"]
{{- end }}

{{/*
Name of the operator's metrics Service. The Prometheus Operator names the scrape job after it, so it is also
the `job` label of the operator's series (canaria.operatorJob).
*/}}
{{- define "canaria.metricsServiceName" -}}
{{- printf "%s-metrics" (include "canaria.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The PromQL label matcher that picks the operator's own series in the chart's alerts: its scrape job, unless
metrics.prometheusRule.operatorJob names another (a Prometheus that scrapes the operator some other way).
*/}}
{{- define "canaria.operatorJob" -}}
{{- printf "job=%q" (default (include "canaria.metricsServiceName" .) .Values.metrics.prometheusRule.operatorJob) }}
{{- end }}
