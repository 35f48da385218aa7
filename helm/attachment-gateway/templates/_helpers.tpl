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

{{/*
Whether the chart runs its own Redis-protocol server (Valkey) for the replicas'
shared state: sharedState.bundled.enabled, and no sharedState.redis.url.
*/}}
{{- define "attachment-gateway.valkey.enabled" -}}
{{- if and .Values.sharedState.bundled.enabled (not .Values.sharedState.redis.url) -}}true{{- end -}}
{{- end }}

{{/* The bundled server's objects: <fullname>-valkey. */}}
{{- define "attachment-gateway.valkey.fullname" -}}
{{- printf "%s-valkey" (include "attachment-gateway.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end }}

{{/*
The bundled server's selector labels: another name than the gateway's, so the
gateway's Service, PodDisruptionBudget and NetworkPolicy never select it.
*/}}
{{- define "attachment-gateway.valkey.selectorLabels" -}}
app.kubernetes.io/name: {{ include "attachment-gateway.name" . | trunc 56 | trimSuffix "-" }}-valkey
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "attachment-gateway.valkey.labels" -}}
helm.sh/chart: {{ include "attachment-gateway.chart" . }}
{{ include "attachment-gateway.valkey.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.sharedState.bundled.image.tag | quote }}
app.kubernetes.io/component: shared-state
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: attachment-gateway
{{- end }}

{{/* The bundled server's image; `latest` is refused. */}}
{{- define "attachment-gateway.valkey.image" -}}
{{- $i := .Values.sharedState.bundled.image }}
{{- if or (not $i.tag) (eq $i.tag "latest") }}
{{- fail "sharedState.bundled.image.tag must be an exact version, not empty or `latest`" }}
{{- end }}
{{- if $i.digest }}
{{- printf "%s:%s@%s" $i.repository $i.tag $i.digest }}
{{- else }}
{{- printf "%s:%s" $i.repository $i.tag }}
{{- end }}
{{- end }}

{{/* The Redis URL the gateway uses: sharedState.redis.url, or the bundled server's. */}}
{{- define "attachment-gateway.redisUrl" -}}
{{- if .Values.sharedState.redis.url -}}
{{- .Values.sharedState.redis.url -}}
{{- else if include "attachment-gateway.valkey.enabled" . -}}
{{- printf "redis://%s:6379/0" (include "attachment-gateway.valkey.fullname" .) -}}
{{- end -}}
{{- end }}

{{/* The Secret holding the Redis password, if any: the bundled server's, or sharedState.redis.existingSecret. */}}
{{- define "attachment-gateway.redisPasswordSecret" -}}
{{- if include "attachment-gateway.valkey.enabled" . -}}
{{- include "attachment-gateway.valkey.fullname" . -}}
{{- else -}}
{{- .Values.sharedState.redis.existingSecret -}}
{{- end -}}
{{- end }}

{{/* The key of the Redis password in that Secret. */}}
{{- define "attachment-gateway.redisPasswordKey" -}}
{{- if include "attachment-gateway.valkey.enabled" . -}}
redis-password
{{- else -}}
{{- .Values.sharedState.redis.passwordKey -}}
{{- end -}}
{{- end }}

{{/*
A shell command asking the bundled server for PING with the password from its
Secret (in the environment, never on the command line), true when the answer
matches the pattern given. valkey-cli exits 0 even on an error answer.
*/}}
{{- define "attachment-gateway.valkey.ping" -}}
p="$(cat /etc/valkey/auth/redis-password)"; VALKEYCLI_AUTH="$p" REDISCLI_AUTH="$p" valkey-cli -p 6379 ping 2>&1 | grep -qE '{{ index . 0 }}'
{{- end }}

{{/*
The bundled server's password: the one in its Secret when it exists (`existing`,
from lookup), so upgrades keep it; else 40 random letters and digits.
*/}}
{{- define "attachment-gateway.valkey.password" -}}
{{- $existing := .existing -}}
{{- if and $existing $existing.data (hasKey $existing.data "redis-password") -}}
{{- index $existing.data "redis-password" | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end }}
