{{/* Chart name, possibly overridden. */}}
{{- define "tokenbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "tokenbridge.fullname" -}}
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

{{- define "tokenbridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass (dict "root" $ "component" "operator|server|rbac"). */}}
{{- define "tokenbridge.labels" -}}
helm.sh/chart: {{ include "tokenbridge.chart" .root }}
{{ include "tokenbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tokenbridge
{{- end }}

{{- define "tokenbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenbridge.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tokenbridge.operator.fullname" -}}
{{- printf "%s-operator" (include "tokenbridge.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokenbridge.server.fullname" -}}
{{- printf "%s-server" (include "tokenbridge.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokenbridge.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "tokenbridge.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tokenbridge.server.serviceAccountName" -}}
{{- if .Values.server.serviceAccount.create }}
{{- default (include "tokenbridge.server.fullname" .) .Values.server.serviceAccount.name }}
{{- else }}
{{- required "server.serviceAccount.name is required when server.serviceAccount.create is false" .Values.server.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tokenbridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The public issuer: required, so an install without it fails with this message. */}}
{{- define "tokenbridge.publicIssuer" -}}
{{- required "publicIssuer is required: set it to the external https URL of the token exchange server, e.g. --set publicIssuer=https://tokens.example.com" .Values.publicIssuer | trimSuffix "/" }}
{{- end }}

{{/* Whether this install uses ClusterIdentityProviders. */}}
{{- define "tokenbridge.clusterIdentityProviders" -}}
{{- if or (eq .Values.rbac.scope "cluster") .Values.rbac.clusterIdentityProviders }}true{{ else }}false{{ end }}
{{- end }}

{{/* Environment shared by both components: issuer, signing-key Secret, fetch policy, ClusterIdentityProviders. */}}
{{- define "tokenbridge.commonEnv" -}}
- name: TOKENBRIDGE_PUBLIC_ISSUER
  value: {{ include "tokenbridge.publicIssuer" . | quote }}
- name: TOKENBRIDGE_SIGNING_SECRET_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: TOKENBRIDGE_SIGNING_SECRET_NAME
  value: {{ .Values.signing.secretName | quote }}
- name: TOKENBRIDGE_SIGNING_ALGORITHM
  value: {{ .Values.signing.algorithm | quote }}
- name: TOKENBRIDGE_ALLOWED_NETWORKS
  value: {{ join "," .Values.fetch.allowedNetworks | quote }}
- name: TOKENBRIDGE_ALLOW_INSECURE_HTTP
  value: {{ .Values.fetch.allowInsecureHTTP | quote }}
- name: TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS
  value: {{ include "tokenbridge.clusterIdentityProviders" . | quote }}
# The server caps issued tokens at it; the operator keeps a retired signing key published that long.
- name: TOKENBRIDGE_MAX_TOKEN_LIFETIME
  value: {{ .Values.signing.maxTokenLifetime | quote }}
{{- end }}

{{/* Pod security context: non-root, RuntimeDefault seccomp. */}}
{{- define "tokenbridge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context: nothing to escalate, no capabilities, read-only root filesystem. */}}
{{- define "tokenbridge.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Scheduling settings of a component; pass its values. */}}
{{- define "tokenbridge.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- end }}

{{/* Egress rules shared by both NetworkPolicies. */}}
{{- define "tokenbridge.networkPolicyEgress" -}}
# DNS, wherever the cluster runs it
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- with .Values.networkPolicy.egressPorts }}
# the Kubernetes API server and the identity providers' https endpoints
- ports:
    {{- range . }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
