{{/* The chart's name. */}}
{{- define "attachment-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A fully qualified app name, at most 63 characters. */}}
{{- define "attachment-gateway.fullname" -}}
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

{{- define "attachment-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels. */}}
{{- define "attachment-gateway.labels" -}}
helm.sh/chart: {{ include "attachment-gateway.chart" . }}
{{ include "attachment-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: attachment-gateway
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "attachment-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "attachment-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "attachment-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "attachment-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference; `latest` is refused. */}}
{{- define "attachment-gateway.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if eq $tag "latest" }}
{{- fail "image.tag must not be `latest`: pin a version or a digest" }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Secret with the OAuth client credentials. */}}
{{- define "attachment-gateway.credentialsSecret" -}}
{{- default (printf "%s-credentials" (include "attachment-gateway.fullname" .)) .Values.credentials.existingSecret }}
{{- end }}

{{/* Whether the chart writes the API key file into its own Secret. */}}
{{- define "attachment-gateway.ownsApiKeys" -}}
{{- if and .Values.auth.apiKeys.enabled (not .Values.auth.apiKeys.existingSecret) }}true{{ end }}
{{- end }}

{{/* The largest replica count: the upstream budget is divided by it. */}}
{{- define "attachment-gateway.maxReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.maxReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/* ceil(a / b), at least 1. */}}
{{- define "attachment-gateway.share" -}}
{{- $a := int (index . 0) }}{{- $b := int (index . 1) }}
{{- max 1 (div (add $a (sub $b 1)) $b) }}
{{- end }}

{{/*
Whether the pod mounts a webhook certificate or secret.
*/}}
{{- define "attachment-gateway.webhookSecretNeeded" -}}
{{- if and .Values.webhooks.enabled (ne .Values.webhooks.verify "none") -}}true{{- end -}}
{{- end }}

{{/*
The Secret holding the webhook certificate or shared secret.
*/}}
{{- define "attachment-gateway.webhookSecret" -}}
{{- default (printf "%s-webhooks" (include "attachment-gateway.fullname" .)) .Values.webhooks.existingSecret -}}
{{- end }}
