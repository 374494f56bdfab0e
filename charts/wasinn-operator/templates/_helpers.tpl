{{/*
Name prefix of every object: the release name, plus "-wasinn" unless it already contains it
(release `wasinn` gives wasinn-operator, wasinn-shim). Kept short enough for "-operator".
*/}}
{{- define "wasinn.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "wasinn" .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped names carry the namespace too: one release per namespace may coexist. */}}
{{- define "wasinn.clusterName" -}}
{{- printf "%s-%s" (include "wasinn.fullname" .) .Release.Namespace | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "wasinn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wasinn.labels" -}}
helm.sh/chart: {{ include "wasinn.chart" . }}
{{ include "wasinn.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wasinn
{{- end -}}

{{- define "wasinn.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component: (dict "ctx" $ "component" "operator") */}}
{{- define "wasinn.componentLabels" -}}
{{ include "wasinn.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "wasinn.componentSelector" -}}
{{ include "wasinn.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "wasinn.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "wasinn.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wasinn.shimServiceAccount" -}}
{{- if .Values.shim.serviceAccount.create -}}
{{- default (printf "%s-shim" (include "wasinn.fullname" .)) .Values.shim.serviceAccount.name -}}
{{- else -}}
{{- required "shim.serviceAccount.name is required when shim.serviceAccount.create is false" .Values.shim.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wasinn.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | toString) -}}
{{- end -}}

{{- define "wasinn.propletImage" -}}
{{- printf "%s:%s" .Values.proplet.image.repository (default .Values.image.tag .Values.proplet.image.tag | toString) -}}
{{- end -}}

{{/* The namespaces the operator watches when rbac.namespaced (default: the release's). */}}
{{- define "wasinn.watchNamespaces" -}}
{{- if .Values.rbac.namespaced -}}
{{- $list := .Values.rbac.watchNamespaces | default (list .Release.Namespace) -}}
{{- if and .Values.shim.enabled (eq .Values.shim.backend "kubernetes") -}}
{{- /* The shim keeps its tasks in the release namespace: the operator must see them. */ -}}
{{- $list = append $list .Release.Namespace -}}
{{- end -}}
{{- join "," (uniq $list) -}}
{{- end -}}
{{- end -}}

{{- define "wasinn.shimServiceName" -}}
{{- printf "%s-shim" (include "wasinn.fullname" .) -}}
{{- end -}}

{{- define "wasinn.shimUrl" -}}
{{- default (printf "http://%s.%s.svc:%d" (include "wasinn.shimServiceName" .) .Release.Namespace (int .Values.shim.compatPort)) .Values.shim.publicUrl -}}
{{- end -}}

{{- define "wasinn.tokenSecret" -}}
{{- default (printf "%s-shim-token" (include "wasinn.fullname" .)) .Values.shim.auth.existingSecret -}}
{{- end -}}

{{- define "wasinn.mqttSecret" -}}
{{- default (printf "%s-mqtt" (include "wasinn.fullname" .)) .Values.mqtt.existingSecret -}}
{{- end -}}

{{- define "wasinn.mqttHasCredentials" -}}
{{- if or .Values.mqtt.existingSecret .Values.mqtt.clientId .Values.mqtt.clientKey -}}true{{- end -}}
{{- end -}}

{{- define "wasinn.mqttAddress" -}}
{{- if .Values.mqtt.address -}}
{{- .Values.mqtt.address -}}
{{- else if .Values.mosquitto.enabled -}}
{{- printf "tcp://%s-mosquitto.%s.svc:%d" (include "wasinn.fullname" .) .Release.Namespace (int .Values.mosquitto.port) -}}
{{- else -}}
{{- fail "mqtt.enabled needs mqtt.address (tcp://HOST:PORT) or mosquitto.enabled=true" -}}
{{- end -}}
{{- end -}}

{{/* Rules from one of files/*-rules.yaml: the single source shared with the tests. */}}
{{- define "wasinn.rules" -}}
{{- $rules := list -}}
{{- range .files -}}
{{- $rules = concat $rules ($.ctx.Files.Get (printf "files/%s" .) | fromYamlArray) -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end -}}

{{/* The pod-level security context and the scheduling fields of a control component. */}}
{{- define "wasinn.podCommon" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .ctx.Values.podSecurityContext | nindent 2 }}
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
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* The task policy's WASINN_* variables (values.yaml `policy`), for the operator and the shim. */}}
{{- define "wasinn.policyEnv" -}}
{{- with .Values.policy.allowHostDirs }}
- name: WASINN_ALLOW_HOST_DIRS
  value: {{ join ":" . | quote }}
{{- end }}
{{- with .Values.policy.allowModelOrigins }}
- name: WASINN_ALLOW_MODEL_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
{{- range $key, $env := dict "defaultTimeout" "WASINN_DEFAULT_TIMEOUT" "maxTimeout" "WASINN_MAX_TIMEOUT" "defaultMaxMemory" "WASINN_DEFAULT_MAX_MEMORY" "maxMemory" "WASINN_MAX_MEMORY" "maxFieldBytes" "WASINN_MAX_FIELD_BYTES" "maxModelBytes" "WASINN_MAX_MODEL_BYTES" }}
{{- $value := index $.Values.policy $key }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ $env }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* WASINN_WARM_POOLS: the warm pools as JSON, name -> node labels (beside openvinoLabel). */}}
{{- define "wasinn.warmPools" -}}
{{- $pools := dict -}}
{{- range .Values.warmWorkers.pools -}}
{{- $_ := set $pools .name (default dict .nodeSelector) -}}
{{- end -}}
{{- toJson $pools -}}
{{- end -}}

{{/* The operator's WASINN_PRIORITY_CLASSES: <fullname>-<name>=<from>,... */}}
{{- define "wasinn.priorityBands" -}}
{{- $fullname := include "wasinn.fullname" . -}}
{{- $bands := list -}}
{{- range .Values.priorityClasses.bands -}}
{{- $bands = append $bands (printf "%s-%s=%v" $fullname .name (int .from)) -}}
{{- end -}}
{{- join "," $bands -}}
{{- end -}}
