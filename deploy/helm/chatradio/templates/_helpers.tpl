{{/* Names and labels shared by every object of the chart. */}}
{{- define "chatradio.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chatradio.fullname" -}}
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

{{- define "chatradio.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chatradio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "chatradio.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "chatradio.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "chatradio.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chatradio.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Seconds Kubernetes waits after SIGTERM: the server's whole drain plus a margin
     for the process to exit, so the kubelet never kills a draining server. */}}
{{- define "chatradio.terminationGracePeriod" -}}
{{- add (.Values.server.drainGrace | int) (.Values.server.drainTimeout | int) 15 }}
{{- end }}

{{/* The server's JSON config (docs/service.md "Options"): the operator's
     server.config first, then what the chart owns (paths, ports, backend). */}}
{{- define "chatradio.serverConfig" -}}
{{- $c := deepCopy .Values.server.config }}
{{- $_ := set $c "model" "/models" }}
{{- $_ := set $c "templates" (ternary "/etc/chatradio/config/templates.json" "/usr/share/chatradio/templates.json" (ne .Values.templates "")) }}
{{- $_ := set $c "host" "0.0.0.0" }}
{{- $_ := set $c "port" (.Values.server.grpcPort | int) }}
{{- $_ := set $c "metrics-host" "0.0.0.0" }}
{{- $_ := set $c "metrics-port" (.Values.server.metricsPort | int) }}
{{- $_ := set $c "backend" (ternary "cuda" "cpu" .Values.gpu.enabled) }}
{{- $_ := set $c "drain-grace" .Values.server.drainGrace }}
{{- $_ := set $c "drain-timeout" .Values.server.drainTimeout }}
{{- if .Values.tls.enabled }}
{{- $_ := set $c "tls-cert" "/etc/chatradio/tls/tls.crt" }}
{{- $_ := set $c "tls-key" "/etc/chatradio/tls/tls.key" }}
{{- if .Values.tls.clientCA }}
{{- $_ := set $c "tls-client-ca" "/etc/chatradio/tls/ca.crt" }}
{{- end }}
{{- end }}
{{- if .Values.weightCache.enabled }}
{{- $_ := set $c "weight-cache" "/var/cache/chatradio" }}
{{- end }}
{{- if .Values.auth.enabled }}
{{- $_ := set $c "auth-token-file" (printf "/etc/chatradio/auth/%s" .Values.auth.key) }}
{{- end }}
{{- $c | toPrettyJson }}
{{- end }}

{{/* The Prometheus query of the queue-depth autoscaler. */}}
{{- define "chatradio.queueQuery" -}}
{{- if .Values.autoscaling.queue.query }}
{{- .Values.autoscaling.queue.query }}
{{- else }}
{{- printf "sum(chatradio_requests_waiting{namespace=%q,service=%q})" .Release.Namespace (include "chatradio.fullname" .) }}
{{- end }}
{{- end }}
