{{/*
Names and labels shared by every template.

Kubernetes object names (DNS-1123 labels) and label values are limited to 63 characters, so every
name below is cut to 63 and a trailing "-" left by the cut is removed (a name must end alphanumeric).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "devops-model.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name used as a prefix of every object: RELEASE-CHART, or RELEASE alone when the release
name already contains the chart name (`helm install devops-model ...` gives "devops-model", not
"devops-model-devops-model"). fullnameOverride wins. Cut to 63 characters (see above).
*/}}
{{- define "devops-model.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart label value: NAME-VERSION ("+" is not allowed in label values). */}}
{{- define "devops-model.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator's pods: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "devops-model.selectorLabels" -}}
app.kubernetes.io/name: {{ include "devops-model.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Standard labels of every object (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/). */}}
{{- define "devops-model.labels" -}}
helm.sh/chart: {{ include "devops-model.chart" . }}
{{ include "devops-model.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: devops-model
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The operator's ServiceAccount name. */}}
{{- define "devops-model.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "devops-model.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image: repository@digest when a digest is given, else repository:tag (default appVersion). */}}
{{- define "devops-model.image" -}}
{{- $img := .Values.operator.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* The `helm test` pod's image: tests.image (repository:tag or @digest) when set, else the operator's (it has Python). */}}
{{- define "devops-model.testImage" -}}
{{- default (include "devops-model.image" .) .Values.tests.image -}}
{{- end -}}

{{/* Is kopf peering on? Always with more than one replica: two active operators would race. */}}
{{- define "devops-model.peering" -}}
{{- if or .Values.operator.peering.enabled (gt (int .Values.operator.replicas) 1) -}}
{{- default (include "devops-model.fullname" .) .Values.operator.peering.name -}}
{{- end -}}
{{- end -}}

{{/*
The operator configuration file: operator.config with the keys the chart must keep consistent
(scope, namespace, peering) taken from the chart's own values.
*/}}
{{- define "devops-model.operatorConfig" -}}
{{- $cfg := deepCopy .Values.operator.config -}}
{{- $_ := set $cfg "scope" .Values.scope.mode -}}
{{- if eq .Values.scope.mode "namespaced" -}}
{{- $_ := set $cfg "namespace" .Release.Namespace -}}
{{- else -}}
{{- $_ := set $cfg "namespace" nil -}}
{{- end -}}
{{- $reconcile := default (dict) $cfg.reconcile -}}
{{- $peering := include "devops-model.peering" . -}}
{{- $_ := set $reconcile "peering" (ternary $peering nil (ne $peering "")) -}}
{{- $_ := set $cfg "reconcile" $reconcile -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
fullname-SUFFIX for objects that need one (the operator Deployment, its ConfigMap, ...), with the
fullname cut so the whole name still fits in 63 characters.
Usage: include "devops-model.suffixed" (list . "config")
*/}}
{{- define "devops-model.suffixed" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $max := sub 62 (len $suffix) | int -}}
{{- printf "%s-%s" (include "devops-model.fullname" $root | trunc $max | trimSuffix "-") $suffix -}}
{{- end -}}
