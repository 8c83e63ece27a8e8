{{/* Names, labels and the values several templates derive. */}}

{{- define "wanops.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wanops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wanops
{{- end -}}

{{- define "wanops.operatorSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "wanops.demoStoreSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: demo-store
{{- end -}}

{{- define "wanops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wanops.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wanops.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}

{{/* Namespaces that get the runner's ServiceAccount and Role: runner.namespaces, else the watched ones. JSON list. */}}
{{- define "wanops.runnerNamespaces" -}}
{{- default .Values.operator.watchNamespaces .Values.runner.namespaces | uniq | toJson -}}
{{- end -}}

{{- define "wanops.peering" -}}
{{- if gt (int .Values.operator.replicas) 1 -}}{{ .Values.operator.peeringName }}{{- end -}}
{{- end -}}

{{- define "wanops.demoStoreName" -}}
{{- printf "%s-demo-store" (include "wanops.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wanops.storeEndpoint" -}}
{{- if .Values.store.endpoint -}}
{{- .Values.store.endpoint -}}
{{- else if .Values.demoStore.enabled -}}
{{- printf "http://%s.%s.svc:9000" (include "wanops.demoStoreName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "wanops.storeBucket" -}}
{{- if .Values.store.bucket -}}
{{- .Values.store.bucket -}}
{{- else if .Values.demoStore.enabled -}}
{{- .Values.demoStore.bucket -}}
{{- end -}}
{{- end -}}

{{/* The demo store's secret key: the value, else the one already in the cluster, else a new one. */}}
{{- define "wanops.demoStoreSecretKey" -}}
{{- if .Values.demoStore.secretKey -}}
{{- .Values.demoStore.secretKey -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "wanops.demoStoreName" .) -}}
{{- if $existing -}}
{{- index $existing.data "MINIO_ROOT_PASSWORD" | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The namespaced rules the operator needs wherever it serves VideoGenerations (wanops_operator/__init__.py). */}}
{{- define "wanops.operatorNamespacedRules" -}}
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [persistentvolumeclaims, serviceaccounts]
  verbs: [get]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
  {{- with .Values.operator.rbac.secretNames }}
  resourceNames: {{ toJson . }}
  {{- end }}
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if and (include "wanops.peering" .) .Values.operator.watchNamespaces }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}

{{/* A list of words as one POSIX-shell-quoted string (what shlex.split reads back). */}}
{{- define "wanops.shellWords" -}}
{{- $words := list -}}
{{- range . -}}
{{- $words = append $words (printf "'%s'" (replace "'" "'\"'\"'" .)) -}}
{{- end -}}
{{- join " " $words -}}
{{- end }}
