{{/*
Names, labels and the workload table of the chart.

Every Deployment, Service, PodDisruptionBudget, HPA, ServiceMonitor and NetworkPolicy is rendered
from one list, "sp.workloads": what the chosen pattern runs, with each workload's entry point
(python -m <module>), settings prefix, ports and probe paths. It mirrors what
services/stack/patterns.py starts for `make up PATTERN=<pattern>` (tests/chart holds them together).
*/}}

{{- define "sp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<suffix>", a DNS label. Call with (list $ "suffix"). */}}
{{- define "sp.resourceName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "sp.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource. Call with (dict "root" $ "component" "router" "variant" "stable"). */}}
{{- define "sp.labels" -}}
helm.sh/chart: {{ include "sp.chart" .root }}
{{ include "sp.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: serving-patterns
serving-patterns.io/pattern: {{ .root.Values.pattern }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sp.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- if .variant }}
serving-patterns.io/variant: {{ .variant }}
{{- end }}
{{- end -}}

{{- define "sp.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "sp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sp.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sp.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod-level scheduling fields shared by every pod. */}}
{{- define "sp.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
{{ toYaml . | indent 2 }}
{{- end }}
{{- end -}}

{{- define "sp.routed" -}}
{{- if has .Values.pattern (list "shadow" "canary" "ab-test" "bandit") }}true{{ end -}}
{{- end -}}

{{/* The model supervisor runs with the canary pattern behind the project's router (it writes the
router's PUT /admin/routing), when supervisor.enabled. */}}
{{/* The supervisor writes the routing ConfigMap through the API server (supervisor.actuator: configmap):
it then runs as its own ServiceAccount (templates/serviceaccount.yaml, supervisor-rbac.yaml). */}}
{{- define "sp.supervisorWritesConfigMap" -}}
{{- if and (include "sp.supervised" .) (eq .Values.supervisor.actuator "configmap") }}true{{ end -}}
{{- end -}}

{{/* The rollout spec the supervisor reads: supervisor.rolloutSpec, else the canary pattern's file. */}}
{{- define "sp.rolloutSpec" -}}
{{- if .Values.supervisor.rolloutSpec -}}
{{- toYaml .Values.supervisor.rolloutSpec -}}
{{- else -}}
{{- .Files.Get "files/rollout/canary.yaml" -}}
{{- end -}}
{{- end -}}

{{- define "sp.supervisorServiceAccountName" -}}
{{- include "sp.resourceName" (list . "supervisor") -}}
{{- end -}}

{{- define "sp.supervised" -}}
{{- if and (eq .Values.pattern "canary") (eq .Values.routing.provider "router") .Values.supervisor.enabled }}true{{ end -}}
{{- end -}}

{{- define "sp.usesKafka" -}}
{{- if or (has .Values.pattern (list "model-as-data" "stream-scoring")) (include "sp.routerSharesFeedback" .) }}true{{ end -}}
{{- end -}}

{{/* Several router pods (router.replicas > 1 or autoscaling) share rewards and outcomes through
the feedback topic on Kafka (services/router/feedback_log.py): always for bandit and ab-test
(their policies learn from feedback), for shadow and canary when Kafka is available. */}}
{{- define "sp.routerSharesFeedback" -}}
{{- if and (include "sp.routed" .) (eq .Values.routing.provider "router") (or (gt (int (include "sp.routerReplicas" .)) 1) .Values.router.autoscaling.enabled) (or (has .Values.pattern (list "ab-test" "bandit")) .Values.kafka.enabled .Values.kafka.bootstrapServers) }}true{{ end -}}
{{- end -}}

{{/* Router pods: router.replicas, or for "auto" 2 for bandit and ab-test if Kafka is available, else 1. */}}
{{- define "sp.routerReplicas" -}}
{{- if ne (toString .Values.router.replicas) "auto" -}}
{{- .Values.router.replicas -}}
{{- else if and (has .Values.pattern (list "ab-test" "bandit")) (or .Values.kafka.enabled .Values.kafka.bootstrapServers) -}}
2
{{- else -}}
1
{{- end -}}
{{- end -}}

{{/* Model messages signed with the release's key: model-as-data, and stream-scoring workers that
follow the models topic (scoring.settings.follow_models). A publisher Job then publishes `model`. */}}
{{- define "sp.followsModels" -}}
{{- if or (eq .Values.pattern "model-as-data") (and (eq .Values.pattern "stream-scoring") .Values.scoring.settings.follow_models) }}true{{ end -}}
{{- end -}}

{{- define "sp.svcHost" -}}
{{- $root := index . 0 -}}
{{- printf "%s.%s.svc.%s" (include "sp.resourceName" (list $root (index . 1))) $root.Release.Namespace $root.Values.clusterDomain -}}
{{- end -}}

{{- define "sp.kafkaBootstrap" -}}
{{- if .Values.kafka.enabled -}}
{{- printf "%s:%v" (include "sp.svcHost" (list . "kafka")) .Values.kafka.port -}}
{{- else -}}
{{- .Values.kafka.bootstrapServers -}}
{{- end -}}
{{- end -}}

{{- define "sp.modelRepository" -}}/app/models/repository{{- end -}}
{{- define "sp.stateDir" -}}/var/run/serving-patterns{{- end -}}
{{- define "sp.routingDir" -}}/etc/serving-patterns/routing{{- end -}}
{{- define "sp.adminTokenDir" -}}/var/run/secrets/serving-patterns/router-admin{{- end -}}
{{- define "sp.tokenKeyDir" -}}/var/run/secrets/serving-patterns/router-token-key{{- end -}}
{{- define "sp.rolloutDir" -}}/etc/serving-patterns/rollout{{- end -}}
{{- define "sp.signingKeyDir" -}}/var/run/secrets/serving-patterns/model-signing{{- end -}}

{{- define "sp.adminTokenSecret" -}}
{{- .Values.router.adminToken.existingSecret | default (include "sp.resourceName" (list . "router-admin")) -}}
{{- end -}}

{{- define "sp.tokenKeySecret" -}}
{{- .Values.router.tokenKey.existingSecret | default (include "sp.resourceName" (list . "router-token-key")) -}}
{{- end -}}

{{- define "sp.signingKeySecret" -}}
{{- .Values.modelSigning.existingSecret | default (include "sp.resourceName" (list . "model-signing")) -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------------
Routing config of the routed patterns: files/routing/<pattern>.yaml (a copy of
patterns/<pattern>/routing.yaml, kept identical by tests/chart), `routing.config` merged over it,
variant URLs pointed at the chart's model-server Services.
--------------------------------------------------------------------------------------------- */}}

{{- define "sp.routingSource" -}}
{{- $file := printf "files/routing/%s.yaml" .Values.pattern -}}
{{- $text := .Files.Get $file -}}
{{- if not $text -}}
{{- fail (printf "the chart has no routing config %s for pattern %s" $file .Values.pattern) -}}
{{- end -}}
{{- $text -}}
{{- end -}}

{{/* Variant names in the order of the routing file (order matters: the first is the A/B control and
the default fallback), then variants added by routing.config, alphabetically. Returns {names: [...]}. */}}
{{- define "sp.variantNames" -}}
{{- $text := include "sp.routingSource" . -}}
{{- $block := regexFind "(?ms)^variants:[ \t]*\n(.*?)(\n[^ \t#\n]|\\z)" $text -}}
{{- $names := list -}}
{{- range regexFindAll "(?m)^  [A-Za-z0-9][A-Za-z0-9_.-]*:" $block -1 -}}
{{- $names = append $names (. | trimPrefix "  " | trimSuffix ":") -}}
{{- end -}}
{{- $extra := keys ((.Values.routing.config).variants | default dict) | sortAlpha -}}
{{- range $extra -}}
{{- if not (has . $names) -}}
{{- $names = append $names . -}}
{{- end -}}
{{- end -}}
names: {{ toJson $names }}
{{- end -}}

{{/* The merged routing config as a dict (JSON), URLs not yet rewritten. */}}
{{- define "sp.routingMerged" -}}
{{- $base := include "sp.routingSource" . | fromYaml -}}
{{- if and (eq $base.policy.kind "ab") (include "sp.routerSharesFeedback" .) -}}
{{- /* Each router pod counts only its own assignments; outcomes are shared (feedback topic). */ -}}
{{- $_ := set (index $base.policy "params") "count_by" "outcomes" -}}
{{- end -}}
{{- $merged := mergeOverwrite (deepCopy $base) (deepCopy (.Values.routing.config | default dict)) -}}
{{- toJson $merged -}}
{{- end -}}

{{/* The router's routing.yaml: keys in the router's canonical order, variants in file order. */}}
{{- define "sp.routingConfig" -}}
{{- $root := . -}}
{{- $cfg := include "sp.routingMerged" . | fromJson -}}
{{- $names := (include "sp.variantNames" . | fromYaml).names -}}
# Generated by the serving-patterns chart from patterns/{{ .Values.pattern }}/routing.yaml
# (+ values routing.config); variant URLs point at this release's model-server Services.
{{- range $key := list "name" "model" }}
{{- if hasKey $cfg $key }}
{{ $key }}: {{ index $cfg $key | toJson }}
{{- end }}
{{- end }}
variants:
{{- range $v := $names }}
{{- $vc := index $cfg.variants $v }}
  {{ $v }}:
    url: {{ printf "http://%s:%v" (include "sp.svcHost" (list $root (printf "model-server-%s" $v))) $root.Values.modelServer.port | quote }}
    grpc: {{ printf "%s:%v" (include "sp.svcHost" (list $root (printf "model-server-%s" $v))) $root.Values.modelServer.grpcPort | quote }}
{{- range $k := list "model" "version" "timeout_s" }}
{{- if hasKey $vc $k }}
    {{ $k }}: {{ index $vc $k | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- range $key := list "policy" "fallback" "sticky" "override_header" "outlier_detection" "shadow" "feedback" }}
{{- if hasKey $cfg $key }}
{{- $val := index $cfg $key }}
{{- if kindIs "map" $val }}
{{ $key }}:
{{ toYaml $val | indent 2 }}
{{- else }}
{{ $key }}: {{ $val | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------------
The workloads of the pattern. Each: id (resource-name suffix), component (app.kubernetes.io/component,
named as the local stack's process), variant, key (values block), module (python -m), prefix
(settings env prefix), ports, ready / live paths, entry (reached by clients).
--------------------------------------------------------------------------------------------- */}}
{{- define "sp.workloads" -}}
{{- $p := .Values.pattern -}}
{{- $ms := .Values.modelServer -}}
workloads:
{{- if eq $p "embedded" }}
  - {id: app, component: embedded-app, key: app, module: services.apps.embedded, prefix: EMBEDDED_, kind: app, entry: true,
     ports: [{name: http, port: {{ .Values.app.port }}}], ready: /readyz, live: /healthz}
{{- else if eq $p "model-as-service" }}
  - {id: model-server, component: model-server, key: modelServer, module: services.model_server, prefix: MODEL_SERVER_, kind: model-server, entry: false,
     ports: [{name: http, port: {{ $ms.port }}}, {name: grpc, port: {{ $ms.grpcPort }}}], ready: /v2/health/ready, live: /v2/health/live}
  - {id: app, component: model-as-service-app, key: app, module: services.apps.remote, prefix: REMOTE_, kind: app, entry: true,
     ports: [{name: http, port: {{ .Values.app.port }}}], ready: /readyz, live: /healthz}
{{- else if eq $p "model-as-data" }}
  - {id: app, component: streaming-app, key: app, module: services.apps.streaming, prefix: STREAMING_, kind: app, entry: true,
     ports: [{name: http, port: {{ .Values.app.port }}}], ready: /readyz, live: /healthz}
{{- else if eq $p "stream-scoring" }}
  - {id: scoring-worker, component: scoring-worker, key: scoring, module: services.kafka.scoring, prefix: SCORING_, kind: scoring, entry: false,
     ports: [{name: http, port: {{ .Values.scoring.port }}}], ready: /readyz, live: /healthz}
{{- else }}
{{- $cfg := include "sp.routingMerged" . | fromJson }}
{{- range $v := (include "sp.variantNames" . | fromYaml).names }}
{{- $version := (index $cfg.variants $v).version }}
  - {id: model-server-{{ $v }}, component: model-server, variant: {{ $v }}, key: modelServer, module: services.model_server, prefix: MODEL_SERVER_, kind: model-server, entry: false,
     version: {{ $version | toJson }},
     ports: [{name: http, port: {{ $ms.port }}}, {name: grpc, port: {{ $ms.grpcPort }}}], ready: /v2/health/ready, live: /v2/health/live}
{{- end }}
{{- if eq .Values.routing.provider "router" }}
  - {id: router, component: router, key: router, module: services.router, prefix: ROUTER_, kind: router, entry: true,
     ports: [{name: http, port: {{ .Values.router.port }}}{{ if .Values.router.grpcPort }}, {name: grpc, port: {{ .Values.router.grpcPort }}}{{ end }}], ready: /v2/health/ready, live: /v2/health/live}
{{- end }}
{{- if include "sp.supervised" . }}
  - {id: supervisor, component: supervisor, key: supervisor, module: services.supervisor, prefix: SUPERVISOR_, kind: supervisor, entry: false,
     ports: [{name: http, port: {{ .Values.supervisor.port }}}], ready: /readyz, live: /healthz}
{{- end }}
{{- end }}
{{- end -}}

{{/* Settings (field name -> value) the chart sets for a workload; `settings` of the values block go over them. */}}
{{- define "sp.chartSettings" -}}
{{- $root := .root -}}
{{- $w := .w -}}
{{- $v := $root.Values -}}
{{- $s := dict "host" "0.0.0.0" "port" (index $w.ports 0).port "log_level" $v.logLevel "shutdown_grace_s" $v.shutdownGraceSeconds -}}
{{- if ne $w.kind "router" -}}
{{- $_ := set $s "model_repository" (include "sp.modelRepository" $root) -}}
{{- end -}}
{{- if has $w.kind (list "app" "scoring") -}}
{{- $_ := set $s "model_name" $v.model.name -}}
{{- if and (not (kindIs "invalid" $v.model.version)) (ne $w.module "services.apps.streaming") -}}
{{- $_ := set $s "model_version" $v.model.version -}}
{{- end -}}
{{- end -}}
{{- if eq $w.module "services.apps.remote" -}}
{{- $_ := set $s "server_address" (printf "%s:%v" (include "sp.svcHost" (list $root "model-server")) $v.modelServer.grpcPort) -}}
{{- $_ := set $s "server_url" (printf "http://%s:%v" (include "sp.svcHost" (list $root "model-server")) $v.modelServer.port) -}}
{{- end -}}
{{- if eq $w.module "services.apps.streaming" -}}
{{- $_ := set $s "bootstrap_servers" (include "sp.kafkaBootstrap" $root) -}}
{{- $_ := set $s "signing_key_file" (printf "%s/%s" (include "sp.signingKeyDir" $root) $v.modelSigning.key) -}}
{{- end -}}
{{- if eq $w.kind "scoring" -}}
{{- $_ := set $s "bootstrap_servers" (include "sp.kafkaBootstrap" $root) -}}
{{- if include "sp.followsModels" $root -}}
{{- $_ := set $s "signing_key_file" (printf "%s/%s" (include "sp.signingKeyDir" $root) $v.modelSigning.key) -}}
{{- end -}}
{{- end -}}
{{- if eq $w.kind "model-server" -}}
{{- $_ := set $s "grpc_port" $v.modelServer.grpcPort -}}
{{- if and $w.variant (kindIs "float64" $w.version) -}}
{{- $_ := set $s "version_policy" (printf "specific:%d" (int $w.version)) -}}
{{- else if $w.variant -}}
{{- $_ := set $s "version_policy" "all" -}}
{{- end -}}
{{- end -}}
{{- if eq $w.kind "router" -}}
{{- $_ := set $s "grpc_port" $v.router.grpcPort -}}
{{- $_ := set $s "routing_config" (printf "%s/routing.yaml" (include "sp.routingDir" $root)) -}}
{{- $_ := set $s "state_file" (printf "%s/router-state.json" (include "sp.stateDir" $root)) -}}
{{- $_ := set $s "admin_token_file" (printf "%s/%s" (include "sp.adminTokenDir" $root) $v.router.adminToken.key) -}}
{{- /* The routing file is a read-only ConfigMap: changes made through PUT /admin/routing are kept
       in the state file; the ConfigMap (helm upgrade) stays the source of truth. */ -}}
{{- $_ := set $s "admin_writes_config" false -}}
{{- /* Request ids are feedback tokens signed with a key every replica shares (services/router/tokens.py). */ -}}
{{- $_ := set $s "token_key_file" (printf "%s/%s" (include "sp.tokenKeyDir" $root) $v.router.tokenKey.key) -}}
{{- if include "sp.routerSharesFeedback" $root -}}
{{- $_ := set $s "kafka_bootstrap_servers" (include "sp.kafkaBootstrap" $root) -}}
{{- $_ := set $s "feedback_topic" $v.router.feedback.topic -}}
{{- $_ := set $s "feedback_topic_partitions" $v.router.feedback.partitions -}}
{{- end -}}
{{- end -}}
{{- if eq $w.kind "supervisor" -}}
{{- $_ := set $s "router_url" (printf "http://%s:%v" (include "sp.svcHost" (list $root "router")) $v.router.port) -}}
{{- $_ := set $s "admin_token_file" (printf "%s/%s" (include "sp.adminTokenDir" $root) $v.router.adminToken.key) -}}
{{- $_ := set $s "rollout_spec" (printf "%s/rollout.yaml" (include "sp.rolloutDir" $root)) -}}
{{- $_ := set $s "state_file" (printf "%s/supervisor-state.json" (include "sp.stateDir" $root)) -}}
{{- $_ := set $s "actuator" $v.supervisor.actuator -}}
{{- if eq $v.supervisor.actuator "configmap" -}}
{{- $_ := set $s "routing_configmap" (include "sp.resourceName" (list $root "routing")) -}}
{{- $_ := set $s "routing_configmap_namespace" $root.Release.Namespace -}}
{{- end -}}
{{- end -}}
{{- toJson $s -}}
{{- end -}}

{{/* The container env of a workload: chart settings, then the values block's settings, as PREFIX_FIELD. */}}
{{- define "sp.env" -}}
{{- $s := include "sp.chartSettings" . | fromJson -}}
{{- $user := (index .root.Values .w.key).settings | default dict -}}
{{- $all := mergeOverwrite $s $user -}}
{{- range $k := keys $all | sortAlpha }}
- name: {{ printf "%s%s" $.w.prefix (upper $k) }}
  value: {{ index $all $k | toString | quote }}
{{- end }}
{{- end -}}

{{/* Fail early, with a message that says why, on combinations the schema cannot express well. */}}
{{- define "sp.validate" -}}
{{- $v := .Values -}}
{{- if and (has $v.pattern (list "ab-test" "bandit")) (ne $v.routing.provider "router") -}}
{{- fail (printf "pattern %s needs routing.provider=router, not %s: A/B tests and bandits keep per-request assignments, feedback (POST /feedback) and policy state in the project's router; Gateway API and Istio can only split traffic by weight" $v.pattern $v.routing.provider) -}}
{{- end -}}
{{- if and (include "sp.routerSharesFeedback" .) (not $v.kafka.enabled) (not $v.kafka.bootstrapServers) -}}
{{- fail (printf "pattern %s with router.replicas > 1 (or router.autoscaling) needs Kafka: the replicas share rewards and outcomes through the feedback topic; set kafka.bootstrapServers to an existing cluster or kafka.enabled=true, or router.replicas=1" $v.pattern) -}}
{{- end -}}
{{- if and (include "sp.usesKafka" .) (not $v.kafka.enabled) (not $v.kafka.bootstrapServers) -}}
{{- fail (printf "pattern %s needs Kafka: set kafka.bootstrapServers to an existing cluster (host:port,...) or kafka.enabled=true for a single-node demo broker" $v.pattern) -}}
{{- end -}}
{{- if and (eq $v.pattern "ab-test") (include "sp.routerSharesFeedback" .) (ne (((include "sp.routingMerged" . | fromJson).policy.params | default dict).count_by | default "assignments") "outcomes") -}}
{{- fail "ab-test with several router replicas needs routing.config.policy.params.count_by=outcomes: each replica counts only its own assignments, while outcomes are shared through the feedback topic" -}}
{{- end -}}
{{- if and $v.router.persistence.enabled (or (gt (int (include "sp.routerReplicas" .)) 1) $v.router.autoscaling.enabled) -}}
{{- fail "router.persistence.enabled needs router.replicas=1 and no autoscaling: the state file is one ReadWriteOnce volume" -}}
{{- end -}}
{{- if include "sp.routed" . -}}
{{- $cfg := include "sp.routingMerged" . | fromJson -}}
{{- $names := (include "sp.variantNames" . | fromYaml).names -}}
{{- range $n := $names -}}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$" $n) -}}
{{- fail (printf "routing variant name %q cannot name Kubernetes resources: use 1-20 lower-case letters, digits or '-'" $n) -}}
{{- end -}}
{{- end -}}
{{- $params := $cfg.policy.params | default dict -}}
{{- range $field := list "weights" "split" -}}
{{- with index $params $field -}}
{{- $total := 0.0 -}}
{{- range $arm, $w := . -}}
{{- if not (has $arm $names) -}}
{{- fail (printf "routing.config policy.params.%s names %q, which is not a variant (variants: %s)" $field $arm (join ", " $names)) -}}
{{- end -}}
{{- $total = addf $total $w -}}
{{- end -}}
{{- if not (or (eq $total 100.0) (eq $total 1.0)) -}}
{{- fail (printf "routing policy.params.%s sum to %v; they must sum to 100 (percent) or 1 (fractions)" $field $total) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if ne $v.routing.provider "router" -}}
{{- if not (has $cfg.policy.kind (list "shadow" "canary")) -}}
{{- fail (printf "routing.provider=%s renders shadow and canary policies only, not %q: use routing.provider=router" $v.routing.provider $cfg.policy.kind) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Mesh routing (gateway-api, istio): which variant answers, which are mirrored, weights in percent. */}}
{{- define "sp.meshPlan" -}}
{{- $cfg := include "sp.routingMerged" . | fromJson -}}
{{- $names := (include "sp.variantNames" . | fromYaml).names -}}
{{- $params := $cfg.policy.params | default dict -}}
{{- $override := "x-variant" -}}
{{- if hasKey $cfg "override_header" -}}{{- $override = $cfg.override_header | default "" -}}{{- end -}}
{{- $plan := dict "kind" $cfg.policy.kind "names" $names "override" $override -}}
{{- if eq $cfg.policy.kind "shadow" -}}
{{- $primary := $params.primary | default $cfg.fallback | default (first $names) -}}
{{- $shadows := $params.shadows | default (without $names $primary) -}}
{{- $rate := 1.0 -}}
{{- if and $cfg.shadow (hasKey $cfg.shadow "sample_rate") -}}
{{- $rate = $cfg.shadow.sample_rate | float64 -}}
{{- end -}}
{{- $_ := set $plan "weights" (dict $primary 100) -}}
{{- $_ := set $plan "mirrors" $shadows -}}
{{- $_ := set $plan "mirrorPercent" (round (mulf $rate 100) 0 | int) -}}
{{- else -}}
{{- $weights := dict -}}
{{- $total := 0.0 -}}
{{- range $n, $w := $params.weights -}}{{- $total = addf $total $w -}}{{- end -}}
{{- range $n := $names -}}
{{- $w := (index $params.weights $n) | default 0 | float64 -}}
{{- if eq $total 1.0 -}}{{- $w = mulf $w 100 -}}{{- end -}}
{{- $_ := set $weights $n (round $w 0 | int) -}}
{{- end -}}
{{- $_ := set $plan "weights" $weights -}}
{{- $_ := set $plan "mirrors" list -}}
{{- $_ := set $plan "mirrorPercent" 0 -}}
{{- end -}}
{{- toJson $plan -}}
{{- end -}}
