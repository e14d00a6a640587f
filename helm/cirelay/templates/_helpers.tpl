{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "cirelay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<chart>, or the release name when it already contains the
chart name. Truncated so that "<fullname>-migration" still fits a DNS label.
*/}}
{{- define "cirelay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "cirelay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "cirelay.labels" -}}
helm.sh/chart: {{ include "cirelay.chart" . }}
{{ include "cirelay.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cirelay
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "cirelay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cirelay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels and selector labels of one component: pass (dict "root" $ "component" "web").
*/}}
{{- define "cirelay.componentLabels" -}}
{{ include "cirelay.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "cirelay.componentSelectorLabels" -}}
{{ include "cirelay.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Name of one component's resources: pass (dict "root" $ "component" "web").
*/}}
{{- define "cirelay.componentName" -}}
{{- printf "%s-%s" (include "cirelay.fullname" .root) .component }}
{{- end }}

{{/*
ServiceAccount of the web and worker pods.
*/}}
{{- define "cirelay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cirelay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
ServiceAccount of the migration pod: the chart's own one is not there yet during pre-install.
*/}}
{{- define "cirelay.migrationServiceAccountName" -}}
{{- if .Values.migration.serviceAccountName }}
{{- .Values.migration.serviceAccountName }}
{{- else if .Values.serviceAccount.create }}
{{- "default" }}
{{- else }}
{{- include "cirelay.serviceAccountName" . }}
{{- end }}
{{- end }}

{{/*
Container image: repository@digest or repository:tag (appVersion by default).
*/}}
{{- define "cirelay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the secret settings.
*/}}
{{- define "cirelay.secretName" -}}
{{- default (include "cirelay.fullname" .) .Values.existingSecret }}
{{- end }}

{{/*
Public base URL: config.publicUrl, else the first ingress host, else the in-cluster Service.
*/}}
{{- define "cirelay.publicUrl" -}}
{{- if .Values.config.publicUrl }}
{{- .Values.config.publicUrl | trimSuffix "/" }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- $tls := false }}
{{- range .Values.ingress.tls }}
{{- if has $host (.hosts | default list) }}
{{- $tls = true }}
{{- end }}
{{- end }}
{{- printf "%s://%s" (ternary "https" "http" $tls) $host }}
{{- else }}
{{- $port := int .Values.service.port }}
{{- printf "http://%s.%s.svc%s" (include "cirelay.fullname" .) .Release.Namespace (eq $port 80 | ternary "" (printf ":%d" $port)) }}
{{- end }}
{{- end }}

{{/*
Trusted proxy hops: config.proxyHops, else 1 behind the chart's ingress and 0 without.
*/}}
{{- define "cirelay.proxyHops" -}}
{{- if kindIs "string" .Values.config.proxyHops }}
{{- ternary 1 0 .Values.ingress.enabled }}
{{- else }}
{{- .Values.config.proxyHops | int }}
{{- end }}
{{- end }}

{{/*
ConfigMap data (non-secret CIRELAY_* variables). Also hashed into the pods' checksum/config.
*/}}
{{- define "cirelay.configData" -}}
{{- $c := .Values.config -}}
CIRELAY_PUBLIC_URL: {{ include "cirelay.publicUrl" . | quote }}
{{- with $c.ciEndpoint }}
CIRELAY_CI_ENDPOINT: {{ . | quote }}
{{- end }}
CIRELAY_CI_BUCKET: {{ $c.ciBucket | quote }}
CIRELAY_CI_REGION: {{ $c.ciRegion | quote }}
{{- with $c.deliveryAllowedNetworks }}
CIRELAY_DELIVERY_ALLOWED_NETWORKS: {{ join "," . | quote }}
{{- end }}
CIRELAY_PROXY_HOPS: {{ include "cirelay.proxyHops" . | quote }}
CIRELAY_WORKERS: {{ $c.workers | int64 | quote }}
CIRELAY_THREADS: {{ $c.threads | int64 | quote }}
CIRELAY_LOG_LEVEL: {{ $c.logLevel | quote }}
CIRELAY_LOG_FORMAT: {{ $c.logFormat | quote }}
CIRELAY_RECONCILE_AFTER_SECONDS: {{ $c.reconcileAfterSeconds | int64 | quote }}
CIRELAY_RECONCILE_INTERVAL_SECONDS: {{ $c.reconcileIntervalSeconds | int64 | quote }}
{{- with $c.deliveryRetrySchedule }}
CIRELAY_DELIVERY_RETRY_SCHEDULE: {{ $schedule := list }}{{ range . }}{{ $schedule = append $schedule (include "cirelay.number" .) }}{{ end }}{{ join "," $schedule | quote }}
{{- end }}
{{- with $c.deliveryDisableAfterSeconds }}
CIRELAY_DELIVERY_DISABLE_AFTER_SECONDS: {{ . | int64 | quote }}
{{- end }}
{{- with $c.deliveryTimeoutSeconds }}
CIRELAY_DELIVERY_TIMEOUT_SECONDS: {{ include "cirelay.number" . | quote }}
{{- end }}
{{- with $c.deliveryConcurrency }}
CIRELAY_DELIVERY_CONCURRENCY: {{ . | int64 | quote }}
{{- end }}
{{- with $c.dbPoolSize }}
CIRELAY_DB_POOL_SIZE: {{ . | int64 | quote }}
{{- end }}
{{- if $c.tracing }}
CIRELAY_TRACING: "on"
{{- end }}
{{- with $c.otlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- range $name, $value := $c.extra }}
{{ $name }}: {{ include "cirelay.number" $value | quote }}
{{- end }}
{{- end }}

{{/*
A value as an environment string: whole numbers without an exponent (YAML numbers reach
templates as float64, and 259200 would print as 2.592e+05), other numbers and strings as they are.
*/}}
{{- define "cirelay.number" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
Secret data (base64), only the settings that are set. Also hashed into checksum/secret.
*/}}
{{- define "cirelay.secretData" -}}
{{- $s := .Values.secrets -}}
{{- with $s.databaseUrl }}
CIRELAY_DATABASE_URL: {{ . | b64enc | quote }}
{{- end }}
{{- with $s.apiKeys }}
CIRELAY_API_KEYS: {{ join "," . | b64enc | quote }}
{{- end }}
{{- with $s.callbackKeys }}
CIRELAY_CALLBACK_KEYS: {{ join "," . | b64enc | quote }}
{{- end }}
{{- with $s.queueCallbackSecret }}
CIRELAY_QUEUE_CALLBACK_SECRET: {{ . | b64enc | quote }}
{{- end }}
{{- with $s.ciSecretId }}
CIRELAY_CI_SECRET_ID: {{ . | b64enc | quote }}
{{- end }}
{{- with $s.ciSecretKey }}
CIRELAY_CI_SECRET_KEY: {{ . | b64enc | quote }}
{{- end }}
{{- with $s.brokerCredentials }}
CIRELAY_BROKER_CREDENTIALS: {{ join "," . | b64enc | quote }}
{{- end }}
{{- end }}

{{/*
Secret settings that are missing (only meaningful without existingSecret).
*/}}
{{- define "cirelay.missingSecrets" -}}
{{- $missing := list }}
{{- if not .Values.secrets.databaseUrl }}{{ $missing = append $missing "secrets.databaseUrl" }}{{ end }}
{{- if not .Values.secrets.apiKeys }}{{ $missing = append $missing "secrets.apiKeys" }}{{ end }}
{{- if not .Values.secrets.callbackKeys }}{{ $missing = append $missing "secrets.callbackKeys" }}{{ end }}
{{- if not .Values.secrets.queueCallbackSecret }}{{ $missing = append $missing "secrets.queueCallbackSecret" }}{{ end }}
{{- join ", " $missing }}
{{- end }}

{{/*
Values rendered through tpl (affinity, topology spread constraints): pass (dict "value" … "root" $).
*/}}
{{- define "cirelay.tplvalues" -}}
{{- if kindIs "string" .value }}
{{- tpl .value .root }}
{{- else }}
{{- tpl (toYaml .value) .root }}
{{- end }}
{{- end }}

{{/*
Pod-level settings shared by web and worker pods: pass (dict "root" $ "values" .Values.web).
*/}}
{{- define "cirelay.podSettings" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "cirelay.serviceAccountName" $root }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
{{- /* A Service named "cirelay" would otherwise inject CIRELAY_PORT, CIRELAY_SERVICE_HOST, …
into the application's own CIRELAY_* namespace. */}}
enableServiceLinks: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . | quote }}
  {{- end }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- include "cirelay.tplvalues" (dict "value" . "root" $root) | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- include "cirelay.tplvalues" (dict "value" . "root" $root) | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The /tmp emptyDir (the root filesystem is read-only).
*/}}
{{- define "cirelay.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- with .Values.tmpVolume.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with .Values.tmpVolume.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}

{{/*
envFrom of every cirelay container: pass (dict "root" $ "configMap" name "secret" name).
*/}}
{{- define "cirelay.envFrom" -}}
- configMapRef:
    name: {{ .configMap }}
- secretRef:
    name: {{ .secret }}
{{- end }}

{{/*
Namespace of the ServiceMonitor and the PodMonitor.
*/}}
{{- define "cirelay.monitorNamespace" -}}
{{- .Values.serviceMonitor.namespace | default .Release.Namespace }}
{{- end }}

{{/*
Label matchers selecting this release's web series in alert expressions (the ServiceMonitor's
job label is the Service name).
*/}}
{{- define "cirelay.metricSelector" -}}
{{- if .Values.prometheusRule.metricSelector }}
{{- .Values.prometheusRule.metricSelector }}
{{- else }}
{{- printf "namespace=%q, job=%q" .Release.Namespace (include "cirelay.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Label matchers selecting this release's worker series in alert expressions (the PodMonitor's
job label is "<its namespace>/<its name>").
*/}}
{{- define "cirelay.workerMetricSelector" -}}
{{- if .Values.prometheusRule.workerMetricSelector }}
{{- .Values.prometheusRule.workerMetricSelector }}
{{- else }}
{{- $job := printf "%s/%s" (include "cirelay.monitorNamespace" .) (include "cirelay.componentName" (dict "root" . "component" "worker")) }}
{{- printf "namespace=%q, job=%q" .Release.Namespace $job }}
{{- end }}
{{- end }}

{{/*
Fail early on values the application cannot run with.
*/}}
{{- define "cirelay.validate" -}}
{{- if and .Values.web.autoscaling.enabled (lt (int .Values.web.autoscaling.maxReplicas) (int .Values.web.autoscaling.minReplicas)) }}
{{- fail "web.autoscaling.maxReplicas must be >= web.autoscaling.minReplicas" }}
{{- end }}
{{- if and .Values.worker.autoscaling.enabled (lt (int .Values.worker.autoscaling.maxReplicas) (int .Values.worker.autoscaling.minReplicas)) }}
{{- fail "worker.autoscaling.maxReplicas must be >= worker.autoscaling.minReplicas" }}
{{- end }}
{{- /* `cirelay worker --metrics-port` exits when PROMETHEUS_MULTIPROC_DIR is set (its
counters would land in the web pods' multiprocess files); the web container sets it itself. */}}
{{- if and .Values.worker.enabled .Values.worker.metrics.enabled }}
{{- $workerEnv := keys .Values.config.extra }}
{{- range .Values.worker.extraEnv }}{{ $workerEnv = append $workerEnv .name }}{{ end }}
{{- if has "PROMETHEUS_MULTIPROC_DIR" $workerEnv }}
{{- fail "PROMETHEUS_MULTIPROC_DIR must not reach the worker (config.extra, worker.extraEnv): cirelay worker refuses it with worker.metrics.enabled" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
NetworkPolicy egress rules: DNS and PostgreSQL always, HTTP(S) and the extra rules unless
(dict "root" $ "databaseOnly" true).
*/}}
{{- define "cirelay.networkPolicyEgress" -}}
{{- $egress := .root.Values.networkPolicy.egress -}}
- ports:
    {{- range $egress.dns.ports }}
    - protocol: UDP
      port: {{ . }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with $egress.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
- ports:
    - protocol: TCP
      port: {{ $egress.database.port }}
  {{- with $egress.database.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if not .databaseOnly }}
{{- with $egress.http.ports }}
- ports:
    {{- range . }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with $egress.http.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- with $egress.extra }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}
