{{/*
simpleloggers.name: the chart name, or global.nameOverride; truncated to 63 characters.
*/}}
{{- define "simpleloggers.name" -}}
{{- default .Chart.Name .Values.global.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
simpleloggers.fullname: the prefix of every object name: global.fullnameOverride, else
<release>-<name>, else <release> when the release name already contains the name. Truncated to
63 characters (a DNS label). The node StatefulSet and the LogCluster carry exactly this name, so a
node can derive both from its own pod name (<fullname>-<ordinal>).
*/}}
{{- define "simpleloggers.fullname" -}}
{{- if .Values.global.fullnameOverride -}}
{{- .Values.global.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.global.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
simpleloggers.chart: chart name and version, for the helm.sh/chart label.
*/}}
{{- define "simpleloggers.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
simpleloggers.namespace: the release namespace.
*/}}
{{- define "simpleloggers.namespace" -}}
{{- .Release.Namespace -}}
{{- end -}}

{{/*
simpleloggers.selectorLabels: the labels that identify this release's pods; combined with
app.kubernetes.io/component (node, producer, consul-server) in every selector.
*/}}
{{- define "simpleloggers.selectorLabels" -}}
app.kubernetes.io/name: {{ include "simpleloggers.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
simpleloggers.labels: the common labels on every object: selector labels, chart, version,
manager, part-of.
*/}}
{{- define "simpleloggers.labels" -}}
helm.sh/chart: {{ include "simpleloggers.chart" . }}
{{ include "simpleloggers.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: simpleloggers
{{- end -}}

{{/*
simpleloggers.nodeSelectorLabels: the node pods' selector. The main Service, the peers
Service, the PDB and the StatefulSet all select with exactly this, so no producer or Consul pod
can ever receive the leader's traffic.
*/}}
{{- define "simpleloggers.nodeSelectorLabels" -}}
{{ include "simpleloggers.selectorLabels" . }}
app.kubernetes.io/component: node
{{- end -}}

{{/*
simpleloggers.image: the simpleloggers image reference; the tag defaults to appVersion.
*/}}
{{- define "simpleloggers.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
simpleloggers.consulImage: the pinned Consul image reference.
*/}}
{{- define "simpleloggers.consulImage" -}}
{{- printf "%s:%s" .Values.consul.image.repository .Values.consul.image.tag -}}
{{- end -}}

{{/*
simpleloggers.serviceAccountName: the node pods' ServiceAccount.
*/}}
{{- define "simpleloggers.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "simpleloggers.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
simpleloggers.consulServerName: the Consul server StatefulSet and its client Service.
*/}}
{{- define "simpleloggers.consulServerName" -}}
{{- printf "%s-consul-server" (include "simpleloggers.fullname" . | trunc 49 | trimSuffix "-") -}}
{{- end -}}

{{/*
simpleloggers.consulServerHeadlessName: the headless Service giving each server a DNS name,
used for retry-join.
*/}}
{{- define "simpleloggers.consulServerHeadlessName" -}}
{{- printf "%s-headless" (include "simpleloggers.consulServerName" .) -}}
{{- end -}}

{{/*
simpleloggers.consulRetryJoin: the gossip addresses an agent or server retry-joins: each
in-chart server's stable DNS name, or consul.external.retryJoin. One per line.
*/}}
{{- define "simpleloggers.consulRetryJoin" -}}
{{- if .Values.consul.server.enabled -}}
{{- $server := include "simpleloggers.consulServerName" . -}}
{{- $headless := include "simpleloggers.consulServerHeadlessName" . -}}
{{- $ns := include "simpleloggers.namespace" . -}}
{{- range $i := until (int .Values.consul.server.replicas) }}
{{ printf "%s-%d.%s.%s.svc" $server $i $headless $ns }}
{{- end -}}
{{- else -}}
{{- range .Values.consul.external.retryJoin }}
{{ . }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
simpleloggers.consulHttpAddr: what the app sets CONSUL_HTTP_ADDR to: its agent sidecar on
loopback, else (agentless) the in-chart server Service, else consul.external.address.
*/}}
{{- define "simpleloggers.consulHttpAddr" -}}
{{- if .Values.consul.agent.enabled -}}
http://127.0.0.1:8500
{{- else if .Values.consul.server.enabled -}}
{{- printf "http://%s.%s.svc:8500" (include "simpleloggers.consulServerName" .) (include "simpleloggers.namespace" .) -}}
{{- else -}}
{{- .Values.consul.external.address -}}
{{- end -}}
{{- end -}}

{{/*
simpleloggers.validate: fails rendering on contradictory values that the schema cannot express.
*/}}
{{- define "simpleloggers.validate" -}}
{{- if not .Values.consul.server.enabled -}}
{{- if and (not .Values.consul.agent.enabled) (not .Values.consul.external.address) -}}
{{- fail "consul.server.enabled=false and consul.agent.enabled=false: set consul.external.address" -}}
{{- end -}}
{{- if and .Values.consul.agent.enabled (not .Values.consul.external.retryJoin) -}}
{{- fail "consul.server.enabled=false with agent sidecars: set consul.external.retryJoin (or consul.agent.enabled=false)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
simpleloggers.consulEnv: the Consul client environment shared by the node and the producer
(address, ACL token from a Secret, TLS CA path).
*/}}
{{- define "simpleloggers.consulEnv" -}}
- name: CONSUL_HTTP_ADDR
  value: {{ include "simpleloggers.consulHttpAddr" . | quote }}
{{- if and (not .Values.consul.server.enabled) .Values.consul.external.tokenSecret.name }}
- name: CONSUL_HTTP_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.consul.external.tokenSecret.name }}
      key: {{ .Values.consul.external.tokenSecret.key }}
{{- end }}
{{- if and (not .Values.consul.server.enabled) (not .Values.consul.agent.enabled) .Values.consul.external.caSecret.name }}
- name: CONSUL_CACERT
  value: /etc/consul-ca/{{ .Values.consul.external.caSecret.key }}
{{- end }}
{{- end -}}

{{/*
simpleloggers.consulCaVolume: true (non-empty) when the app mounts the external Consul CA.
The CA matters only when the app talks to Consul directly (agentless).
*/}}
{{- define "simpleloggers.consulCaVolume" -}}
{{- if and (not .Values.consul.server.enabled) (not .Values.consul.agent.enabled) .Values.consul.external.caSecret.name -}}
true
{{- end -}}
{{- end -}}

{{/*
simpleloggers.podSecurityContext: the restricted pod security context (Pod Security
"restricted" profile): non-root, RuntimeDefault seccomp. uid/gid given by the caller's dict
(uid, fsGroup).
*/}}
{{- define "simpleloggers.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
{{- if .fsGroup }}
fsGroup: {{ .fsGroup }}
fsGroupChangePolicy: OnRootMismatch
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
simpleloggers.containerSecurityContext: the restricted container security context: no
privilege escalation, read-only root filesystem, every capability dropped.
*/}}
{{- define "simpleloggers.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
simpleloggers.consulAgentSidecar: the Consul client agent as a native sidecar (an init
container with restartPolicy: Always): it starts, and passes its startup probe once it has
joined and sees itself in the catalog, before the app starts; it stops after the app, so the
node can still release its lock and destroy its session through it. -node is the pod name, so
each pod has its own serfHealth; the agent advertises the pod IP so the node's /healthz check
and gossip reach it. Takes the root context.
*/}}
{{- define "simpleloggers.consulAgentSidecar" -}}
- name: consul-agent
  image: {{ include "simpleloggers.consulImage" . }}
  imagePullPolicy: {{ .Values.consul.image.pullPolicy }}
  restartPolicy: Always
  command:
    - consul
  args:
    - agent
    - -node=$(POD_NAME)
    - -advertise=$(POD_IP)
    - -bind=0.0.0.0
    - -client=127.0.0.1
    - -data-dir=/consul/data
    - -datacenter={{ .Values.consul.datacenter }}
    - -disable-host-node-id
    - -hcl=leave_on_terminate = true
    {{- range (include "simpleloggers.consulRetryJoin" . | trim | splitList "\n") }}
    - -retry-join={{ . | trim }}
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    {{- if and (not .Values.consul.server.enabled) .Values.consul.external.tokenSecret.name }}
    - name: CONSUL_HTTP_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ .Values.consul.external.tokenSecret.name }}
          key: {{ .Values.consul.external.tokenSecret.key }}
    {{- end }}
  ports:
    - name: serf-lan
      containerPort: 8301
      protocol: TCP
    - name: serf-lan-udp
      containerPort: 8301
      protocol: UDP
  startupProbe:
    exec:
      command:
        - /bin/sh
        - -ec
        - consul catalog nodes | grep -q "^${POD_NAME} "
    periodSeconds: {{ .Values.consul.agent.startupProbe.periodSeconds }}
    failureThreshold: {{ .Values.consul.agent.startupProbe.failureThreshold }}
    timeoutSeconds: 2
  resources:
    {{- toYaml .Values.consul.agent.resources | nindent 4 }}
  securityContext:
    {{- include "simpleloggers.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: consul-agent-data
      mountPath: /consul/data
{{- end -}}
