{{/* Chart name. */}}
{{- define "regcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Base name of every object: the release name, plus the chart name unless it already contains it. */}}
{{- define "regcache.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "regcache.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "regcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "regcache.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "regcache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: regcache
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Whether a mirror entry is enabled ("true" or ""); a missing `enabled` means enabled. */}}
{{- define "regcache.enabled" -}}
{{- if or (not (hasKey . "enabled")) .enabled }}true{{ end }}
{{- end }}

{{/* Object name of one mirror: <fullname>-<key>, at most 63 characters (a Service name). Args: root, key. */}}
{{- define "regcache.mirrorName" -}}
{{- $base := include "regcache.fullname" .root | trunc (int (sub 62 (len .key))) | trimSuffix "-" }}
{{- printf "%s-%s" $base .key }}
{{- end }}

{{/* <fullname>-<key>-gc within 52 characters (the controller appends an 11-character suffix to Jobs);
the base is cut, never the key, so two mirrors never share a name. Args: root, key. */}}
{{- define "regcache.gcName" -}}
{{- $base := include "regcache.fullname" .root | trunc (int (sub 48 (len .key))) | trimSuffix "-" }}
{{- printf "%s-%s-gc" $base .key }}
{{- end }}

{{- define "regcache.mirrorLabels" -}}
{{ include "regcache.labels" .root }}
app.kubernetes.io/component: {{ .key }}
{{- end }}

{{- define "regcache.mirrorSelectorLabels" -}}
{{ include "regcache.selectorLabels" .root }}
app.kubernetes.io/component: {{ .key }}
{{- end }}

{{/* host:port of a mirror's Service as runner pods reach it (FQDN: search paths differ in nested containers). */}}
{{- define "regcache.mirrorHost" -}}
{{- printf "%s.%s.svc.%s:%d" (include "regcache.mirrorName" .) .root.Release.Namespace .root.Values.clientConfig.clusterDomain (int .m.port) }}
{{- end }}

{{- define "regcache.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* Cache size cap in bytes: maxSize if set, else 90% of the volume so LRU eviction starts before the disk fills. */}}
{{- define "regcache.maxSize" -}}
{{- $m := .m }}
{{- if $m.maxSize }}
{{- $m.maxSize }}
{{- else if $m.persistence.enabled }}
{{- $size := toString $m.persistence.size }}
{{- $digits := regexFind "^[0-9]+" $size }}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 }}
{{- $unit := trimPrefix $digits $size }}
{{- if not (hasKey $units $unit) }}
{{- fail (printf "mirrors.%s.persistence.size: cannot read %q; set maxSize" .key $size) }}
{{- end }}
{{- div (mul (atoi $digits) (get $units $unit) 9) 10 }}
{{- else }}
{{- "0" }}
{{- end }}
{{- end }}

{{/* The regcache config file of one mirror (config.example.yaml documents every key). Args: root, key, m. */}}
{{- define "regcache.config" -}}
{{- $m := .m }}
{{- $upstream := dict "name" $m.upstream.name "url" $m.upstream.url }}
{{- with $m.upstream.aliases }}
{{- $_ := set $upstream "aliases" . }}
{{- end }}
{{- if $m.credentials.existingSecret }}
{{- with $m.credentials.username }}
{{- $_ := set $upstream "username" . }}
{{- end }}
{{- $_ := set $upstream "password_file" "/run/secrets/regcache-upstream/password" }}
{{- end }}
{{- $cache := dict "ttl" $m.ttl "max_size" (include "regcache.maxSize" .) "sweep_interval" $m.sweepInterval }}
{{- $listener := dict "address" "0.0.0.0" "port" (int $m.port) "default_upstream" $m.upstream.name }}
{{- $log := dict "level" $m.log.level "format" $m.log.format "access_log" $m.log.accessLog }}
{{- $config := dict "storage" (dict "root" "/var/lib/regcache") "cache" $cache "upstreams" (list $upstream) "listeners" (list $listener) "log" $log "metrics" (dict "enabled" true "port" 0) }}
{{- toYaml (mergeOverwrite $config (deepCopy $m.extraConfig)) }}
{{- end }}

{{/* Checks that can't be said in values.schema.json. Args: root, key, m. */}}
{{- define "regcache.validate" -}}
{{- $m := .m }}
{{- if and $m.credentials.existingSecret (not (or $m.credentials.username $m.credentials.usernameKey)) }}
{{- fail (printf "mirrors.%s.credentials: existingSecret needs username or usernameKey (upstream tokens go with a user name)" .key) }}
{{- end }}
{{- if and (or $m.credentials.username $m.credentials.usernameKey) (not $m.credentials.existingSecret) }}
{{- fail (printf "mirrors.%s.credentials: a username needs existingSecret holding the password" .key) }}
{{- end }}
{{- if and $m.persistence.enabled $m.gc.enabled (has "ReadWriteOncePod" $m.persistence.accessModes) }}
{{- fail (printf "mirrors.%s: the gc CronJob can't share a ReadWriteOncePod volume; set gc.enabled=false (the server still sweeps every sweepInterval) or use ReadWriteOnce" .key) }}
{{- end }}
{{- end }}

{{/* Volumes shared by the server pod and its gc Job. Args: root, key, m. */}}
{{- define "regcache.volumes" -}}
- name: config
  configMap:
    name: {{ include "regcache.mirrorName" . }}
- name: data
{{- if not .m.persistence.enabled }}
  emptyDir: {}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ default (include "regcache.mirrorName" .) .m.persistence.existingClaim }}
{{- end }}
- name: tmp
  emptyDir: {}
{{- with .m.credentials.existingSecret }}
- name: upstream-credentials
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: {{ $.m.credentials.passwordKey }}
        path: password
{{- end }}
{{- with .m.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "regcache.volumeMounts" -}}
- name: config
  mountPath: /etc/regcache
  readOnly: true
- name: data
  mountPath: /var/lib/regcache
- name: tmp
  mountPath: /tmp
{{- if .m.credentials.existingSecret }}
- name: upstream-credentials
  mountPath: /run/secrets/regcache-upstream
  readOnly: true
{{- end }}
{{- with .m.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Username from the Secret: REGCACHE_UPSTREAMS_0_USERNAME overrides the config file's (empty) username. */}}
{{- define "regcache.env" -}}
{{- if and .m.credentials.existingSecret .m.credentials.usernameKey }}
- name: REGCACHE_UPSTREAMS_0_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .m.credentials.existingSecret }}
      key: {{ .m.credentials.usernameKey }}
{{- end }}
{{- with .m.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "regcache.podSpecCommon" -}}
automountServiceAccountToken: false
# Service links would put REGCACHE_DOCKERHUB_PORT=tcp://... (one per mirror Service) into the
# environment, where regcache reads REGCACHE_* as settings and refuses unknown ones.
enableServiceLinks: false
{{- with .root.Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .m.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .m.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .m.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  {{- include "regcache.volumes" . | nindent 2 }}
{{- end }}
