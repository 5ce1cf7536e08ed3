{{/* Names. */}}
{{- define "tokenwarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokenwarden.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tokenwarden.issuer.fullname" -}}{{ include "tokenwarden.fullname" . }}-issuer{{- end }}
{{- define "tokenwarden.nats.fullname" -}}{{ include "tokenwarden.fullname" . }}-nats{{- end }}
{{- define "tokenwarden.injector.fullname" -}}{{ include "tokenwarden.fullname" . }}-injector{{- end }}
{{- define "tokenwarden.keys.secretName" -}}
{{- default (printf "%s-keys" (include "tokenwarden.fullname" .)) .Values.issuer.keys.existingSecret }}
{{- end }}
{{- define "tokenwarden.directory.secretName" -}}
{{- default (printf "%s-directory" (include "tokenwarden.issuer.fullname" .)) .Values.issuer.directory.existingSecret }}
{{- end }}
{{- define "tokenwarden.nats.secretName" -}}
{{- include "tokenwarden.nats.fullname" . }}
{{- end }}
{{- define "tokenwarden.nats.authSecretName" -}}
{{- default (printf "%s-auth" (include "tokenwarden.nats.fullname" .)) .Values.nats.auth.existingSecret }}
{{- end }}

{{/* Labels: selector labels are immutable, so they carry only name, instance and component. */}}
{{- define "tokenwarden.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tokenwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tokenwarden
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tokenwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenwarden.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tokenwarden.componentLabels" -}}
{{ include "tokenwarden.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The tokenwarden image reference. */}}
{{- define "tokenwarden.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The issuer identifier. */}}
{{- define "tokenwarden.issuer.url" -}}
{{- default (printf "http://%s.%s.svc:%d" (include "tokenwarden.issuer.fullname" .) .Release.Namespace (int .Values.issuer.service.port)) .Values.issuer.url }}
{{- end }}

{{/* Host:port of the bundled NATS client service. */}}
{{- define "tokenwarden.nats.hostport" -}}
{{- printf "%s.%s.svc:4222" (include "tokenwarden.nats.fullname" .) .Release.Namespace }}
{{- end }}

{{/* JetStream replicas of the buckets and stream. */}}
{{- define "tokenwarden.nats.streamReplicas" -}}
{{- if .Values.nats.enabled }}{{ min 3 (int .Values.nats.replicas) }}{{ else }}{{ int .Values.nats.external.streamReplicas }}{{ end }}
{{- end }}

{{/*
The restricted container security context (Pod Security Standard "restricted", plus a read-only
root filesystem and a numeric non-root user).
*/}}
{{- define "tokenwarden.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "tokenwarden.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Scheduling: anti-affinity from a soft/hard/none switch, unless affinity is given. */}}
{{- define "tokenwarden.scheduling" -}}
{{- $v := .values }}
{{- if $v.affinity }}
affinity:
  {{- toYaml $v.affinity | nindent 2 }}
{{- else if eq $v.podAntiAffinity "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "tokenwarden.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 12 }}
{{- else if eq $v.podAntiAffinity "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "tokenwarden.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 14 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{- define "tokenwarden.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Checks that fail the render early with a clear message. */}}
{{- define "tokenwarden.validate" -}}
{{- /* lookup answers only when Helm talks to a cluster, whose version is then the real one. */}}
{{- if and (lookup "v1" "Namespace" "" "kube-system") (semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "tokenwarden needs Kubernetes 1.29 or later (native sidecars, webhook matchConditions); this cluster runs %s" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and (not .Values.nats.enabled) (not .Values.nats.external.url) }}
{{- fail "nats.enabled is false: set nats.external.url to your NATS" }}
{{- end }}
{{- if and .Values.nats.enabled (lt (int .Values.nats.replicas) 1) }}
{{- fail "nats.replicas must be at least 1" }}
{{- end }}
{{- include "tokenwarden.nats.checkUpgrade" . }}
{{- if and (eq .Values.sidecar.nats.auth "secret") (not .Values.sidecar.nats.secret.name) }}
{{- fail "sidecar.nats.auth is secret: set sidecar.nats.secret.name" }}
{{- end }}
{{- if and (eq .Values.sidecar.nats.auth "secret") (not .Values.sidecar.nats.secret.urlKey) (not .Values.sidecar.nats.url) (not .Values.nats.enabled) (not .Values.nats.external.url) }}
{{- fail "sidecar.nats: set secret.urlKey or a url" }}
{{- end }}
{{- if has .Values.issuer.keys.keyEncryptionKey .Values.issuer.keys.previousKeyEncryptionKeys }}
{{- fail "issuer.keys.previousKeyEncryptionKeys must not list issuer.keys.keyEncryptionKey: the previous keys are the ones being replaced" }}
{{- end }}
{{- if has .Values.issuer.keys.keyEncryptionKey (list "distribution.key" "distribution.pub") }}
{{- fail "issuer.keys.keyEncryptionKey must not name the distribution key" }}
{{- end }}
{{- /* A key-encryption key named but missing from an existing keys Secret would leave the issuer
pods unable to start, or (for the chart's own Secret) regenerate every key: refuse instead.
lookup answers only when Helm talks to a cluster. */}}
{{- $ksName := include "tokenwarden.keys.secretName" . }}
{{- $ks := lookup "v1" "Secret" .Release.Namespace $ksName }}
{{- if and $ks $ks.data }}
{{- range $k := prepend .Values.issuer.keys.previousKeyEncryptionKeys .Values.issuer.keys.keyEncryptionKey }}
{{- if not (index $ks.data $k) }}
{{- fail (printf "the keys Secret %s has no data key %q (issuer.keys.keyEncryptionKey, previousKeyEncryptionKeys): add the key there first (docs/kubernetes.md, \"Replace the key-encryption key\")" $ksName $k) }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.nats.external.issuerCredentials }}
{{- if and .secretName (not (or .urlKey .credsKey)) }}
{{- fail "nats.external.issuerCredentials: set urlKey or credsKey" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The NATS mode: one server runs standalone JetStream (no cluster block: a one-server JetStream
cluster never elects a meta leader, nats-server counts at least two peers), more run a JetStream
cluster. A standalone server's streams and buckets cannot join a cluster, and a cluster's cannot
go back, so helm upgrade between the two is refused (docs/kubernetes.md, "Change the number of
NATS servers") instead of stalling the new servers and losing the key ring and revocations.
*/}}
{{- define "tokenwarden.nats.mode" -}}
{{- ternary "cluster" "standalone" (gt (int .Values.nats.replicas) 1) }}
{{- end }}

{{/*
Refuses an upgrade that the running NATS cannot follow. lookup answers only when Helm talks to a
cluster, so helm template renders regardless. The previous mode comes from the StatefulSet (its
tokenwarden.io/nats-mode annotation, else its replicas); with the StatefulSet deleted, from the
ConfigMap, but only while the first server's PVC still holds that mode's state.
*/}}
{{- define "tokenwarden.nats.checkUpgrade" -}}
{{- if .Values.nats.enabled }}
{{- $name := include "tokenwarden.nats.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $want := include "tokenwarden.nats.mode" . }}
{{- $prev := "" }}
{{- $sts := lookup "apps/v1" "StatefulSet" $ns $name }}
{{- if $sts }}
{{- $prev = dig "metadata" "annotations" "tokenwarden.io/nats-mode" (ternary "cluster" "standalone" (gt (int (dig "spec" "replicas" 1 $sts)) 1)) $sts }}
{{- $hadPVC := gt (len (dig "spec" "volumeClaimTemplates" (list) $sts)) 0 }}
{{- if ne $hadPVC .Values.nats.persistence.enabled }}
{{- fail (printf "nats.persistence.enabled cannot change on a running release: the volumeClaimTemplates of StatefulSet %s are immutable. Delete it first (kubectl -n %s delete statefulset %s; NATS state is lost unless backed up, see docs/kubernetes.md), then upgrade" $name $ns $name) }}
{{- end }}
{{- else }}
{{- $cm := lookup "v1" "ConfigMap" $ns $name }}
{{- $pvc := lookup "v1" "PersistentVolumeClaim" $ns (printf "data-%s-0" $name) }}
{{- if and $cm $pvc }}
{{- $prev = ternary "cluster" "standalone" (contains "cluster {" (dig "data" "nats.conf" "" $cm)) }}
{{- end }}
{{- end }}
{{- if and $prev (ne $prev $want) }}
{{- fail (printf "nats.replicas %d would turn the %s NATS of this release into a %s one: JetStream state (signing keys, refresh tokens, revocations) cannot move between a standalone server and a cluster, and the servers would split or lose it. Refused; follow \"Change the number of NATS servers\" in docs/kubernetes.md" (int .Values.nats.replicas) $prev $want) }}
{{- end }}
{{- end }}
{{- end }}
