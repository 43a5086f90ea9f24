{{/*
Helpers shared by every template. All are namespaced "discoverd." so they
never clash with a parent chart's.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "discoverd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The name prefix of every object: fullnameOverride, or "<release>-<name>", or
just "<release>" when it already contains the name. Truncated to 63 characters
(DNS-1123 label), leaving room for the "-operator" / "-agent" suffixes below.
*/}}
{{- define "discoverd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "name-version" as used by the helm.sh/chart label. */}}
{{- define "discoverd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "discoverd.labels" -}}
helm.sh/chart: {{ include "discoverd.chart" . }}
app.kubernetes.io/name: {{ include "discoverd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: discoverd
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels of one component; call with (dict "context" $ "component" "operator").
Selectors are immutable, so they hold only the name, the instance and the component.
*/}}
{{- define "discoverd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "discoverd.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of one component's objects; same argument as discoverd.selectorLabels. */}}
{{- define "discoverd.componentLabels" -}}
{{ include "discoverd.labels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Object names of the components. */}}
{{- define "discoverd.operator.fullname" -}}
{{- printf "%s-operator" (include "discoverd.fullname" .) -}}
{{- end -}}

{{- define "discoverd.agent.fullname" -}}
{{- printf "%s-agent" (include "discoverd.fullname" .) -}}
{{- end -}}

{{/* ServiceAccount names: the given name, else the component's full name when created, else "default". */}}
{{- define "discoverd.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "discoverd.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "discoverd.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (include "discoverd.agent.fullname" .) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image reference: repository@digest, or repository:tag (tag defaults to appVersion). */}}
{{- define "discoverd.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The etcd run in the release (etcd.server.enabled): its object names. */}}
{{- define "discoverd.etcd.fullname" -}}
{{- printf "%s-etcd" (include "discoverd.fullname" .) -}}
{{- end -}}

{{/*
The etcd client URLs, comma-separated: the release's own etcd when
etcd.server.enabled (its Service, or 127.0.0.1 with etcd.server.hostNetwork),
else etcd.endpoints.
*/}}
{{- define "discoverd.etcdEndpoints" -}}
{{- $server := .Values.etcd.server -}}
{{- if $server.enabled -}}
{{- if $server.hostNetwork -}}
{{- printf "http://127.0.0.1:%d" (int $server.clientPort) -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%d" (include "discoverd.etcd.fullname" .) .Release.Namespace (int $server.clientPort) -}}
{{- end -}}
{{- else -}}
{{- join "," .Values.etcd.endpoints -}}
{{- end -}}
{{- end -}}

{{/* Where the etcd TLS Secret is mounted. */}}
{{- define "discoverd.etcdTLSDir" -}}
/etc/discoverd/etcd-tls
{{- end -}}

{{/* "true" when etcd checks users: etcd.auth.enabled, or the release's own etcd (always with auth). */}}
{{- define "discoverd.etcdAuth" -}}
{{- if or .Values.etcd.auth.enabled .Values.etcd.server.enabled -}}true{{- end -}}
{{- end -}}

{{/* The Secret with the operator's etcd user and password: the generated root one of the release's etcd, or etcd.auth.secretName. */}}
{{- define "discoverd.etcdAuthSecret" -}}
{{- if .Values.etcd.server.enabled -}}
{{- printf "%s-root" (include "discoverd.etcd.fullname" .) -}}
{{- else -}}
{{- .Values.etcd.auth.secretName -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the agents get their own server's etcd credentials from the operator
(node identity, docs/etcd-auth.md): etcd checks users and
etcd.auth.agentCredentials is nodeIdentity. The DaemonSet then mounts no etcd
password and no client certificate.
*/}}
{{- define "discoverd.nodeIdentity" -}}
{{- if and (include "discoverd.etcdAuth" .) (eq .Values.etcd.auth.agentCredentials "nodeIdentity") -}}true{{- end -}}
{{- end -}}

{{/* The operator's node-identity endpoint, as the agents reach it. */}}
{{- define "discoverd.nodeIdentityURL" -}}
{{- if .Values.nodeIdentity.operatorURL -}}
{{- .Values.nodeIdentity.operatorURL -}}
{{- else -}}
{{- printf "https://%s.%s.svc:%d" (include "discoverd.operator.fullname" .) .Release.Namespace (int .Values.nodeIdentity.port) -}}
{{- end -}}
{{- end -}}

{{/* Object names of the node-identity certificate: the operator's Secret, the agents' ConfigMap (CA only). */}}
{{- define "discoverd.nodeIdentityTLS" -}}
{{- printf "%s-identity-tls" (include "discoverd.operator.fullname" .) -}}
{{- end -}}

{{- define "discoverd.nodeIdentityCA" -}}
{{- printf "%s-identity-ca" (include "discoverd.operator.fullname" .) -}}
{{- end -}}

{{/*
Where to reach etcd and how to check its certificate, as DISCOVERD_*
environment variables read by every discoverd command (see `discoverd
--help`): no credentials, so both the operator and the agent use it.
*/}}
{{- define "discoverd.etcdConnectionEnv" -}}
- name: DISCOVERD_ETCD_ENDPOINTS
  value: {{ include "discoverd.etcdEndpoints" . | quote }}
- name: DISCOVERD_PREFIX
  value: {{ .Values.etcd.prefix | quote }}
- name: DISCOVERD_ETCD_TIMEOUT
  value: {{ .Values.etcd.timeout | toString | quote }}
{{- if and .Values.etcd.tls.enabled .Values.etcd.tls.caKey }}
- name: DISCOVERD_ETCD_CACERT
  value: {{ printf "%s/%s" (include "discoverd.etcdTLSDir" .) .Values.etcd.tls.caKey | quote }}
{{- end }}
{{- if .Values.etcd.server.enabled }}
# The release's own etcd speaks plain HTTP inside the cluster and checks passwords (the operator's
# root, each agent's issued one): say so, or every discoverd command refuses a password over http://
# (docs/etcd-auth.md "What stays open"; the NetworkPolicy admits only the release's pods).
- name: DISCOVERD_ETCD_ALLOW_PLAINTEXT_PASSWORD
  value: "true"
{{- end }}
- name: DISCOVERD_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end -}}

{{/*
The operator's etcd identity: the TLS client certificate and the user and
password; the password never appears in the pod spec, only a reference to
its Secret. The agents get it only with etcd.auth.agentCredentials=shared.
*/}}
{{- define "discoverd.etcdCredentialsEnv" -}}
{{- if .Values.etcd.tls.enabled }}
{{- $dir := include "discoverd.etcdTLSDir" . }}
{{- if .Values.etcd.tls.certKey }}
- name: DISCOVERD_ETCD_CERT
  value: {{ printf "%s/%s" $dir .Values.etcd.tls.certKey | quote }}
{{- end }}
{{- if .Values.etcd.tls.keyKey }}
- name: DISCOVERD_ETCD_KEY
  value: {{ printf "%s/%s" $dir .Values.etcd.tls.keyKey | quote }}
{{- end }}
{{- end }}
{{- if include "discoverd.etcdAuth" . }}
{{- $generated := .Values.etcd.server.enabled }}
- name: DISCOVERD_ETCD_USER
  valueFrom:
    secretKeyRef:
      name: {{ include "discoverd.etcdAuthSecret" . | quote }}
      key: {{ ternary "username" .Values.etcd.auth.usernameKey $generated | quote }}
- name: DISCOVERD_ETCD_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "discoverd.etcdAuthSecret" . | quote }}
      key: {{ ternary "password" .Values.etcd.auth.passwordKey $generated | quote }}
{{- end }}
{{- end -}}

{{/* The whole etcd connection of the operator (and of agents with shared credentials). */}}
{{- define "discoverd.etcdEnv" -}}
{{ include "discoverd.etcdConnectionEnv" . }}
{{- include "discoverd.etcdCredentialsEnv" . }}
{{- end -}}

{{/* The volume and the mount of the etcd TLS Secret; include them only when etcd.tls.enabled. */}}
{{- define "discoverd.etcdTLSVolume" -}}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.tls.secretName | quote }}
    defaultMode: 0444
{{- end -}}

{{/* The same Secret's CA certificate alone: the agents' view of it with node identity (no client key). */}}
{{- define "discoverd.etcdTLSCAVolume" -}}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.tls.secretName | quote }}
    defaultMode: 0444
    items:
      - key: {{ .Values.etcd.tls.caKey | quote }}
        path: {{ .Values.etcd.tls.caKey | quote }}
{{- end -}}

{{- define "discoverd.etcdTLSVolumeMount" -}}
- name: etcd-tls
  mountPath: {{ include "discoverd.etcdTLSDir" . }}
  readOnly: true
{{- end -}}

{{/* Fail early, with a message naming the value, on settings that cannot work together. */}}
{{- define "discoverd.validate" -}}
{{- if and .Values.etcd.tls.enabled (not .Values.etcd.tls.secretName) -}}
{{- fail "etcd.tls.secretName is required when etcd.tls.enabled is true" -}}
{{- end -}}
{{- if and .Values.etcd.server.enabled (or .Values.etcd.tls.enabled .Values.etcd.auth.enabled) -}}
{{- fail "etcd.server.enabled runs an etcd without TLS, with a root password the chart generates: set etcd.tls.enabled and etcd.auth.enabled to false, or point etcd.endpoints at your etcd" -}}
{{- end -}}
{{- if and (include "discoverd.nodeIdentity" .) .Values.agent.enabled (not .Values.operator.enabled) -}}
{{- fail "etcd.auth.agentCredentials=nodeIdentity: the agents get their etcd credentials from the operator; set operator.enabled=true, or etcd.auth.agentCredentials=shared" -}}
{{- end -}}
{{- if and .Values.etcd.auth.enabled (not .Values.etcd.auth.secretName) -}}
{{- fail "etcd.auth.secretName is required when etcd.auth.enabled is true" -}}
{{- end -}}
{{- if and .Values.etcd.tls.enabled (ne (empty .Values.etcd.tls.certKey) (empty .Values.etcd.tls.keyKey)) -}}
{{- fail "etcd.tls.certKey and etcd.tls.keyKey go together: set both (client certificate) or neither" -}}
{{- end -}}
{{- end -}}
