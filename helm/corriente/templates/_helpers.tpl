{{/* Names, labels and the pieces every Corriente pod shares. */}}

{{- define "corriente.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name; component objects are named "<fullname>-<component>". */}}
{{- define "corriente.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "corriente.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. Call with (dict "root" $ "component" "edge"). */}}
{{- define "corriente.labels" -}}
helm.sh/chart: {{ include "corriente.chart" .root }}
{{ include "corriente.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: corriente
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "corriente.selectorLabels" -}}
app.kubernetes.io/name: {{ include "corriente.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selects every pod of the release (all components). */}}
{{- define "corriente.releaseSelector" -}}
app.kubernetes.io/name: {{ include "corriente.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "corriente.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "corriente.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "corriente.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The control plane's gRPC URL, as origins and edges dial it. */}}
{{- define "corriente.controlUrl" -}}
{{- printf "http://%s-control-plane:50051" (include "corriente.fullname" .) -}}
{{- end -}}

{{/*
Whole seconds in a duration written the way the binary reads it (250ms, 10s, 2m, 1h),
rounded up. Used to derive grace periods and preStop sleeps from the drain settings.
*/}}
{{- define "corriente.seconds" -}}
{{- $d := toString . -}}
{{- if not (regexMatch "^[0-9]+(ms|s|m|h)$" $d) -}}
{{- fail (printf "cannot read the duration %q: write it like 250ms, 10s, 2m or 1h" $d) -}}
{{- else if hasSuffix "ms" $d -}}
{{- div (add (trimSuffix "ms" $d | int) 999) 1000 -}}
{{- else if hasSuffix "s" $d -}}
{{- trimSuffix "s" $d | int -}}
{{- else if hasSuffix "m" $d -}}
{{- mul (trimSuffix "m" $d | int) 60 -}}
{{- else -}}
{{- mul (trimSuffix "h" $d | int) 3600 -}}
{{- end -}}
{{- end -}}

{{/* Environment every Corriente container shares. */}}
{{- define "corriente.commonEnv" -}}
- name: CORRIENTE_ADMIN
  value: "0.0.0.0:9090"
- name: CORRIENTE_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: CORRIENTE_NODE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: CORRIENTE_CLUSTER_TOKEN_FILE
  value: /var/run/secrets/corriente/cluster-token/token
{{- with .Values.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Ports, probes and security context of a Corriente container (admin port 9090). */}}
{{- define "corriente.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  {{- toYaml .Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  {{- toYaml .Values.probes.readiness | nindent 2 }}
{{- end -}}

{{/*
Pod-level settings shared by the Corriente workloads. Call with
(dict "root" $ "component" "edge" "values" .Values.edge), plus "lowestPort" when a listener
is below 1024: the pod then gets the (safe, namespaced) sysctl
net.ipv4.ip_unprivileged_port_start so that the non-root process can bind it.
*/}}
{{- define "corriente.podSettings" -}}
serviceAccountName: {{ include "corriente.serviceAccountName" .root }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $podSecurity := deepCopy .root.Values.podSecurityContext }}
{{- with .lowestPort }}
{{- /* A listener below 1024 (e.g. HTTPS on 443): the non-root process may bind it. */}}
{{- $sysctls := append (default list $podSecurity.sysctls) (dict "name" "net.ipv4.ip_unprivileged_port_start" "value" (toString .)) }}
{{- $_ := set $podSecurity "sysctls" $sysctls }}
{{- end }}
securityContext:
  {{- toYaml $podSecurity | nindent 2 }}
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
{{- if .values.spreadAcrossNodes }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "corriente.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* The Redis password file, when there is one: bundled always, external with a secret. */}}
{{- define "corriente.redisPasswordSecret" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- default (printf "%s-redis" (include "corriente.fullname" .)) .Values.redis.bundled.existingSecret -}}
{{- else -}}
{{- .Values.redis.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "corriente.redisPasswordKey" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- if .Values.redis.bundled.existingSecret -}}{{ .Values.redis.bundled.existingSecretKey }}{{- else -}}password{{- end -}}
{{- else -}}
{{- .Values.redis.external.existingSecretKey -}}
{{- end -}}
{{- end -}}

{{- define "corriente.redisUrl" -}}
{{- if and .Values.redis.bundled.enabled .Values.redis.external.url -}}
{{- fail "redis: set either redis.bundled.enabled or redis.external.url, not both" -}}
{{- else if and .Values.redis.bundled.enabled .Values.redis.external.sentinel.addresses -}}
{{- fail "redis: set either redis.bundled.enabled or redis.external.sentinel, not both" -}}
{{- else if .Values.redis.bundled.enabled -}}
{{- printf "redis://%s-redis:6379" (include "corriente.fullname" .) -}}
{{- else if and .Values.redis.external.url .Values.redis.external.sentinel.addresses -}}
{{- fail "redis: set either redis.external.url or redis.external.sentinel, not both" -}}
{{- else if .Values.redis.external.sentinel.addresses -}}
{{- $s := .Values.redis.external.sentinel -}}
{{- printf "%s://%s/%s/%d" (ternary "rediss+sentinel" "redis+sentinel" (eq $s.tls true)) (join "," $s.addresses) (required "redis.external.sentinel.service is required with sentinel addresses" $s.service) (int $s.db) -}}
{{- else -}}
{{- required "redis.external.url is required when redis.bundled.enabled is false" .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{/* Whether to render the ServiceMonitor: forced by the value, else when the CRD exists. */}}
{{- define "corriente.serviceMonitorEnabled" -}}
{{- $enabled := .Values.metrics.serviceMonitor.enabled -}}
{{- if kindIs "bool" $enabled -}}
{{- if $enabled }}true{{ end -}}
{{- else if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}
true
{{- end -}}
{{- end -}}

{{/* Grace period: the one given, or the drain deadlines plus a 5 s margin. */}}
{{- define "corriente.gracePeriod" -}}
{{- if kindIs "invalid" .terminationGracePeriodSeconds -}}
{{- $s := add (include "corriente.seconds" (default "0s" .preStopSleep)) (include "corriente.seconds" (default "0s" .drainDelay)) (include "corriente.seconds" .drainTimeout) 5 -}}
{{- $s -}}
{{- else -}}
{{- .terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* NetworkPolicy rule for the admin port (9090): networkPolicy.adminFrom, or anyone. */}}
{{- define "corriente.adminRule" -}}
- ports:
    - port: admin
      protocol: TCP
  {{- with .Values.networkPolicy.adminFrom }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}


{{/*
Cluster and admin tokens: the Secret the chart generates (RELEASE-corriente-cluster-token,
RELEASE-corriente-admin-token, key "token") or the existing one named in the values.
*/}}
{{- define "corriente.clusterTokenSecret" -}}
{{- default (printf "%s-cluster-token" (include "corriente.fullname" .)) .Values.clusterToken.existingSecret -}}
{{- end -}}

{{- define "corriente.clusterTokenKey" -}}
{{- if .Values.clusterToken.existingSecret -}}{{ .Values.clusterToken.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{- define "corriente.adminTokenSecret" -}}
{{- default (printf "%s-admin-token" (include "corriente.fullname" .)) .Values.adminToken.existingSecret -}}
{{- end -}}

{{- define "corriente.adminTokenKey" -}}
{{- if .Values.adminToken.existingSecret -}}{{ .Values.adminToken.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{/*
The cluster token volume of every Corriente pod, mounted as a directory (never subPath): an
updated Secret reaches the running pods, which re-read the file, so a rotation restarts
nothing.
*/}}
{{- define "corriente.clusterTokenMount" -}}
- name: cluster-token
  mountPath: /var/run/secrets/corriente/cluster-token
  readOnly: true
{{- end -}}

{{- define "corriente.clusterTokenVolume" -}}
- name: cluster-token
  secret:
    secretName: {{ include "corriente.clusterTokenSecret" . }}
    defaultMode: 0440
    items:
      - key: {{ include "corriente.clusterTokenKey" . }}
        path: token
{{- end -}}

{{/*
The certificate of the RTMPS and HTTPS listeners (tls.enabled): a kubernetes.io/tls Secret
(tls.crt, tls.key), mounted as a directory so that a renewal (cert-manager) reaches the pod;
the node reloads the files when they change.
*/}}
{{- define "corriente.tlsEnv" -}}
- name: CORRIENTE_TLS_CERT
  value: /var/run/secrets/corriente/tls/tls.crt
- name: CORRIENTE_TLS_KEY
  value: /var/run/secrets/corriente/tls/tls.key
{{- end -}}

{{- define "corriente.tlsMount" -}}
- name: tls
  mountPath: /var/run/secrets/corriente/tls
  readOnly: true
{{- end -}}

{{- define "corriente.tlsVolume" -}}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled: a kubernetes.io/tls Secret (e.g. from cert-manager)" .Values.tls.secretName }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end -}}
