{{/* Names, labels and the pieces every pod shares. */}}

{{- define "ward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ward.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "ward.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "ward.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ward.labels" -}}
app.kubernetes.io/name: {{ include "ward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ward.gateway.selectorLabels" -}}
{{ include "ward.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "ward.worker.selectorLabels" -}}
{{ include "ward.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end -}}

{{/* A model name as a DNS label part: lower case, [a-z0-9-], at most 30 characters. */}}
{{- define "ward.modelSlug" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (lower .) "-" | trunc 30 | trimAll "-" -}}
{{- end -}}

{{/* The worker objects of one model: call with (dict "root" $ "model" $model). */}}
{{- define "ward.worker.fullname" -}}
{{- printf "%s-worker-%s" (include "ward.fullname" .root) (include "ward.modelSlug" .model.name) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Seconds ward-worker-health waits for the Health RPC under a probe: its timeoutSeconds less 2 s
for the program to start. Call with the probe's values. */}}
{{- define "ward.worker.healthWait" -}}
{{- max 1 (sub (int (default 1 .timeoutSeconds)) 2) -}}
{{- end -}}

{{- define "ward.image" -}}
{{- $image := index .root.Values.image .component -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "ward.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ward.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Non-root, nothing writable but the volumes, no privilege: every pod and container. */}}
{{- define "ward.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 10001 }}
runAsGroup: {{ .uid | default 10001 }}
fsGroup: {{ .uid | default 10001 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "ward.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The Secrets every gateway pod (and the purge job) needs, checked once. */}}
{{- define "ward.requiredSecrets" -}}
{{- if not (or .Values.database.existingSecret .Values.bundled.postgresql.enabled) -}}
{{- fail "database.existingSecret is required: a Secret holding the PostgreSQL URL (or bundled.postgresql.enabled for a trial)" -}}
{{- end -}}
{{- if not (or .Values.redis.existingSecret .Values.bundled.redis.enabled) -}}
{{- fail "redis.existingSecret is required: a Secret holding the Redis URL, which every gateway shares for exact quotas (or bundled.redis.enabled for a trial)" -}}
{{- end -}}
{{- if not .Values.audit.signingKey.existingSecret -}}
{{- fail "audit.signingKey.existingSecret is required: a Secret holding the audit log's Ed25519 signing key (see docs/operations.md)" -}}
{{- end -}}
{{- if and .Values.tls.gateway.enabled (not .Values.tls.gateway.existingSecret) -}}
{{- fail "tls.gateway.existingSecret is required while tls.gateway.enabled" -}}
{{- end -}}
{{- if and .Values.tls.workers.enabled (not (and .Values.tls.workers.existingSecret .Values.tls.workers.gatewayClientSecret)) -}}
{{- fail "tls.workers.existingSecret and tls.workers.gatewayClientSecret are required while tls.workers.enabled" -}}
{{- end -}}
{{- end -}}

{{/* Environment of the gateway's processes: database, Redis, data directory. */}}
{{- define "ward.gateway.env" -}}
- name: WARD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.database.existingSecret }}
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.secretKey }}
      {{- else }}
      name: {{ include "ward.fullname" . }}-postgresql
      key: url
      {{- end }}
- name: WARD_REDIS_URL
  {{- if .Values.redis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.secretKey }}
  {{- else }}
  value: {{ printf "redis://%s-redis:6379/0" (include "ward.fullname" .) | quote }}
  {{- end }}
- name: WARD_DATA_DIR
  value: /var/lib/ward
- name: HOME
  value: /tmp
{{- end -}}
