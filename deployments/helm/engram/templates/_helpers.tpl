{{/*
Chart name, at most 63 characters.
*/}}
{{- define "engram.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, at most 63 characters (a DNS label). When the
release name already contains the chart name, the release name alone.
*/}}
{{- define "engram.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "engram.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Headless Service: stable pod DNS names (<pod>.<headless>) and the gossip
seed. Its name must leave room in 63 characters.
*/}}
{{- define "engram.headlessServiceName" -}}
{{- printf "%s-headless" (include "engram.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
The gossip seed: the headless Service's fully qualified name, which resolves
to every pod's IP (not-ready pods included, publishNotReadyAddresses).
*/}}
{{- define "engram.clusterSeed" -}}
{{- printf "%s.%s.svc.%s:7946" (include "engram.headlessServiceName" .) .Release.Namespace (.Values.clusterDomain | trimSuffix ".") }}
{{- end }}

{{/*
Name prefix for CronJobs: a CronJob name is at most 52 characters.
*/}}
{{- define "engram.cronJobPrefix" -}}
{{- include "engram.fullname" . | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
The server's URL inside the namespace (client Service).
*/}}
{{- define "engram.url" -}}
{{- printf "http://%s:%d" (include "engram.fullname" .) (int .Values.service.httpPort) }}
{{- end }}

{{/*
Selector labels of the Engram server pods. Immutable in a StatefulSet
selector: never add a label that changes between releases.
*/}}
{{- define "engram.selectorLabels" -}}
app.kubernetes.io/name: {{ include "engram.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Common labels of the server's objects.
*/}}
{{- define "engram.labels" -}}
helm.sh/chart: {{ include "engram.chart" . }}
{{ include "engram.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels of the client-side objects (CronJobs, test pod), which must not match
the server's selector. Call with (dict "ctx" $ "component" "backup").
*/}}
{{- define "engram.componentLabels" -}}
{{- $ctx := .ctx -}}
helm.sh/chart: {{ include "engram.chart" $ctx }}
app.kubernetes.io/name: {{ include "engram.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- if $ctx.Chart.AppVersion }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
{{- end }}

{{/*
Labels that let a client pod through the NetworkPolicy (when it is enabled).
*/}}
{{- define "engram.clientPodLabels" -}}
{{- if .Values.networkPolicy.enabled -}}
{{- with .Values.networkPolicy.allowedClientLabels -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "engram.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "engram.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image: repository@digest, else repository:tag (tag defaults to the
chart's appVersion).
*/}}
{{- define "engram.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
Pod-level settings shared by every pod of the chart: no API token, no
service-link variables (Kubernetes injects <NAME>_SERVICE_HOST, <NAME>_PORT_...
for every Service of the namespace; a Service named engram or engram-* gives
ENGRAM_* variables, and the binary refuses ENGRAM_* variables that are not
configuration keys), the pod securityContext and image pull secrets.
*/}}
{{- define "engram.podCommon" -}}
serviceAccountName: {{ include "engram.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.securityContext.pod | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
One TOML value: string (quoted; JSON escapes are valid TOML escapes), boolean,
number (an integral number is written without a fraction, so integer keys
stay integers; float keys accept integers), or an array of those.
*/}}
{{- define "engram.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- ternary "true" "false" $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (float64 (int64 $v)) (float64 $v) -}}
{{- int64 $v -}}
{{- else -}}
{{- $v -}}
{{- end -}}
{{- else if kindIs "slice" $v -}}
{{- $items := list -}}
{{- range $v -}}
{{- $items = append $items (include "engram.toml.value" .) -}}
{{- end -}}
[{{ join ", " $items }}]
{{- else -}}
{{- $v -}}
{{- end -}}
{{- end -}}

{{/*
One TOML table and, after it, its sub-tables: (dict "path" "memory" "table"
$map). Scalars and arrays first under [path], then [path.child] for every
map value. Null values are skipped.
*/}}
{{- define "engram.toml.table" -}}
{{- $path := .path -}}
{{- $table := .table -}}
{{- $lines := list -}}
{{- $children := list -}}
{{- range $k, $v := $table -}}
{{- if kindIs "map" $v -}}
{{- $children = append $children $k -}}
{{- else if not (kindIs "invalid" $v) -}}
{{- $lines = append $lines (printf "%s = %s" $k (include "engram.toml.value" $v)) -}}
{{- end -}}
{{- end -}}
{{- if $lines -}}
{{- if $path -}}
{{- printf "\n[%s]" $path -}}
{{- end -}}
{{- range $lines -}}
{{- printf "\n%s" . -}}
{{- end -}}
{{- printf "\n" -}}
{{- end -}}
{{- range $children -}}
{{- $child := . -}}
{{- if $path -}}
{{- $child = printf "%s.%s" $path . -}}
{{- end -}}
{{- include "engram.toml.table" (dict "path" $child "table" (get $table .)) -}}
{{- end -}}
{{- end -}}

{{/*
The metadata group's voters (pod names <fullname>-<ordinal>): metadataVoters
when set, else pod 0 below 3 replicas and pods 0-2 from 3 on. A list.
*/}}
{{- define "engram.metadataVoters" -}}
{{- $fullname := include "engram.fullname" . -}}
{{- if .Values.metadataVoters -}}
{{- toJson .Values.metadataVoters -}}
{{- else if lt (int .Values.replicaCount) 3 -}}
{{- toJson (list (printf "%s-0" $fullname)) -}}
{{- else -}}
{{- toJson (list (printf "%s-0" $fullname) (printf "%s-1" $fullname) (printf "%s-2" $fullname)) -}}
{{- end -}}
{{- end }}

{{/*
engram.toml from .Values.config. data_dir and server.bind/http_port/grpc_port
are never written: the container's arguments set them (the schema refuses
them too). With cluster.enabled and no cluster.network.seeds, the seed is the
headless Service (engram.clusterSeed); with cluster.enabled and no
cluster.metadata.voters, the voters are engram.metadataVoters; without
cluster.replication.replication_factor it is replicaCount, at most 3. Works
on a copy: .Values is left alone.
*/}}
{{- define "engram.configToml" -}}
{{- $cfg := omit (deepCopy (.Values.config | default dict)) "data_dir" -}}
{{- if hasKey $cfg "server" -}}
{{- $_ := set $cfg "server" (omit (get $cfg "server") "bind" "http_port" "grpc_port") -}}
{{- end -}}
{{- $cluster := get $cfg "cluster" -}}
{{- if kindIs "map" $cluster -}}
{{- if eq (toString (get $cluster "enabled")) "true" -}}
{{- $network := get $cluster "network" -}}
{{- if not (kindIs "map" $network) -}}
{{- $network = dict -}}
{{- end -}}
{{- if not (hasKey $network "seeds") -}}
{{- $_ := set $network "seeds" (list (include "engram.clusterSeed" .)) -}}
{{- end -}}
{{- $_ := set $cluster "network" $network -}}
{{- $metadata := get $cluster "metadata" -}}
{{- if not (kindIs "map" $metadata) -}}
{{- $metadata = dict -}}
{{- end -}}
{{- if not (hasKey $metadata "voters") -}}
{{- $_ := set $metadata "voters" (include "engram.metadataVoters" . | fromJsonArray) -}}
{{- end -}}
{{- $_ := set $cluster "metadata" $metadata -}}
{{- $replication := get $cluster "replication" -}}
{{- if not (kindIs "map" $replication) -}}
{{- $replication = dict -}}
{{- end -}}
{{- if not (hasKey $replication "replication_factor") -}}
{{- $_ := set $replication "replication_factor" (min (int .Values.replicaCount) 3) -}}
{{- end -}}
{{- $_ := set $cluster "replication" $replication -}}
{{- end -}}
{{- end -}}
{{- include "engram.toml.table" (dict "path" "" "table" $cfg) | trim -}}
{{- end -}}

{{/*
checkov exceptions shared by every workload that runs the Engram image:
local builds have no registry digest, and a node-loaded image must not be
pulled (imagePullPolicy Always would fail).
*/}}
{{- define "engram.imageCheckovSkips" -}}
checkov.io/skip-image-digest: "CKV_K8S_43=Images are built locally without a registry (no digest exists); set image.digest when pulling from a registry"
checkov.io/skip-pull-policy: "CKV_K8S_15=The image may be loaded into the nodes without a registry; imagePullPolicy Always would fail there (set image.pullPolicy when using a registry)"
{{- end }}
