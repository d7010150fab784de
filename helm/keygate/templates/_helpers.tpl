{{/*
Names, labels and the few values every template agrees on.
*/}}

{{/* The chart's name, or nameOverride; at most 63 characters. */}}
{{- define "keygate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name for every object; at most 63 characters. */}}
{{- define "keygate.fullname" -}}
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

{{/* `<fullname>-<suffix>`, still at most 63 characters. Call with (list . "suffix"). */}}
{{- define "keygate.suffixed" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "keygate.fullname" $root | trunc (int (sub 62 (len $suffix)))) $suffix | replace "--" "-" }}
{{- end }}

{{/* Chart name and version, as the helm.sh/chart label wants them. */}}
{{- define "keygate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select keygate's pods. Call with (list . "component"). */}}
{{- define "keygate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "keygate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Every object's labels. Call with (list . "component"). */}}
{{- define "keygate.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "keygate.chart" $root }}
{{ include "keygate.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: keygate
{{- end }}

{{/* The service account the pods run as. */}}
{{- define "keygate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keygate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the pepper and the admin token: the operator's, or the chart's. */}}
{{- define "keygate.secretName" -}}
{{- default (include "keygate.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* The Service of the management API. */}}
{{- define "keygate.managementServiceName" -}}
{{- include "keygate.suffixed" (list . "management") }}
{{- end }}

{{/* The bundled Redis's name (StatefulSet and Service). */}}
{{- define "keygate.redisName" -}}
{{- include "keygate.suffixed" (list . "redis") }}
{{- end }}

{{/* Container ports: fixed, since every probe, Service and example refers to them. */}}
{{- define "keygate.port.authz" }}9191{{ end }}
{{- define "keygate.port.management" }}9192{{ end }}
{{- define "keygate.port.metrics" }}9090{{ end }}

{{/* Where keygate's files live in the container. */}}
{{/* The volume is mounted at volumeDir; keygate keeps its files in dataDir below it, a
directory it creates owner-only itself, whatever mode the provisioner gave the volume's root
(often group- or world-accessible), which keygate would refuse as its data directory. */}}
{{- define "keygate.volumeDir" }}/var/lib/keygate{{ end }}
{{- define "keygate.dataDir" }}/var/lib/keygate/data{{ end }}
{{- define "keygate.configDir" }}/etc/keygate{{ end }}
{{- define "keygate.secretsDir" }}/etc/keygate/secrets{{ end }}
{{- define "keygate.tlsDir" }}/etc/keygate/tls{{ end }}

{{/* The Secret holding the TLS certificate: the one given, or the one cert-manager fills. */}}
{{- define "keygate.tlsSecretName" -}}
{{- .Values.tls.existingSecret | default (include "keygate.suffixed" (list . "tls")) }}
{{- end }}

{{/* The port the probes ask: the data plane's, or the plaintext health port under TLS. */}}
{{- define "keygate.port.probes" -}}
{{- if .Values.tls.enabled }}{{ .Values.tls.healthPort }}{{ else }}{{ include "keygate.port.authz" . }}{{ end }}
{{- end }}

{{/* The container image reference. */}}
{{- define "keygate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Refuses combinations that cannot work, with a message that says what to change. Included by
every template that depends on them, so `helm template` fails as `helm install` would.
*/}}
{{- define "keygate.validate" -}}
{{- include "keygate.checkConfig" . }}
{{- if eq .Values.store "embedded" }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount is %d, but the embedded store lives on one pod's volume and serves one replica: set replicaCount: 1, or store: redis to run several replicas" (int .Values.replicaCount)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs store: redis; the embedded store lives on one pod's volume and serves one replica" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.store "redis") (not .Values.redis.url) (not .Values.redis.clusterNodes) (not .Values.redis.bundled.enabled) }}
{{- fail "store: redis needs redis.url, redis.clusterNodes, or redis.bundled.enabled: true" }}
{{- end }}
{{- if and .Values.redis.bundled.enabled (ne .Values.store "redis") }}
{{- fail "redis.bundled.enabled starts a Redis for store: redis; set store: redis, or leave the bundled Redis off" }}
{{- end }}
{{- if and .Values.redis.bundled.enabled .Values.redis.clusterNodes }}
{{- fail "redis.bundled.enabled starts one Redis, not a cluster: leave redis.clusterNodes empty" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.dataPlaneNamespaces) }}
{{- fail "networkPolicy.enabled with no networkPolicy.dataPlaneNamespaces would let no proxy reach the data plane: list the mesh or gateway namespaces" }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- if eq (not .Values.tls.existingSecret) (not .Values.tls.certManager.enabled) }}
{{- fail "tls.enabled needs exactly one source of the certificate: tls.existingSecret or tls.certManager.enabled" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name" }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- end }}

{{/*
The Redis address(es) keygate connects to, as environment variables. With a password Secret,
the password is put into each URL through Kubernetes' $(REDIS_PASSWORD) expansion, so it is
never written into a manifest.
*/}}
{{- define "keygate.redisEnv" -}}
{{- $auth := .Values.redis.auth }}
{{- $userinfo := "" }}
{{- if $auth.existingSecret }}
{{- $userinfo = printf "%s:$(REDIS_PASSWORD)@" $auth.username }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $auth.existingSecret }}
      key: {{ $auth.passwordKey }}
{{- end }}
{{- if .Values.redis.clusterNodes }}
{{- $nodes := list }}
{{- range .Values.redis.clusterNodes }}
{{- $nodes = append $nodes (include "keygate.redisUrl" (list . $userinfo)) }}
{{- end }}
- name: KEYGATE_REDIS__CLUSTER_NODES
  value: {{ toJson $nodes | quote }}
{{- else }}
{{- $url := .Values.redis.url | default (printf "redis://%s:6379" (include "keygate.redisName" .)) }}
- name: KEYGATE_REDIS__URL
  value: {{ include "keygate.redisUrl" (list $url $userinfo) | quote }}
{{- end }}
{{- end }}

{{/* A Redis URL with `userinfo` (`user:$(REDIS_PASSWORD)@`) put in, or as given when empty. */}}
{{- define "keygate.redisUrl" -}}
{{- $url := index . 0 }}
{{- $userinfo := index . 1 }}
{{- if $userinfo }}
{{- $u := urlParse $url }}
{{- printf "%s://%s%s%s" $u.scheme $userinfo $u.host $u.path }}{{ if $u.query }}?{{ $u.query }}{{ end }}
{{- else }}
{{- $url }}
{{- end }}
{{- end }}

{{/* One NetworkPolicy ingress rule admitting namespaces to a port. Call with (list port namespaces). */}}
{{- define "keygate.namespaceRule" -}}
- from:
    {{- range index . 1 }}
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ . }}
    {{- end }}
  ports:
    - port: {{ index . 0 }}
      protocol: TCP
{{- end }}

{{/* Fields of values.config the chart sets itself, and the value that sets each instead. */}}
{{- define "keygate.checkConfig" -}}
{{- $instead := dict
  "data_dir" "persistence (the chart mounts the data directory)"
  "store" "store"
  "listen" "nothing (the chart fixes the ports: 9191, 9192, 9090)"
  "shutdown" "shutdown.drainGraceSeconds"
  "pepper" "secrets.pepper or secrets.existingSecret"
  "admin_token" "secrets.adminToken or secrets.existingSecret" }}
{{- range $field, $value := $instead }}
{{- if hasKey $.Values.config $field }}
{{- fail (printf "config.%s is set by the chart; use %s" $field $value) }}
{{- end }}
{{- end }}
{{- range list "url" "cluster_nodes" }}
{{- if hasKey (default dict $.Values.config.redis) . }}
{{- fail (printf "config.redis.%s is set by the chart; use redis.url, redis.clusterNodes and redis.auth" .) }}
{{- end }}
{{- end }}
{{- end }}
