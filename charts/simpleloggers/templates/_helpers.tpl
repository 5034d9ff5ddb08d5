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
manager, part-of. Not for pod templates (see simpleloggers.podLabels).
*/}}
{{- define "simpleloggers.labels" -}}
helm.sh/chart: {{ include "simpleloggers.chart" . }}
{{ include "simpleloggers.podLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/*
simpleloggers.podLabels: the labels of every pod template: the common labels without
helm.sh/chart and app.kubernetes.io/version. A label in a pod template is part of the pod's
revision, so a version label would restart the Consul servers (a write outage with one server)
and make the leader roll every node on a chart bump that changes nothing else; consul-k8s keeps
its pod labels version-free for the same reason. The image tag still rolls pods when it changes.
*/}}
{{- define "simpleloggers.podLabels" -}}
{{ include "simpleloggers.selectorLabels" . }}
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
{{- include "simpleloggers.consulServerUrl" . -}}
{{- else -}}
{{- .Values.consul.external.address -}}
{{- end -}}
{{- end -}}

{{/*
simpleloggers.validate: fails rendering on contradictory values that the schema cannot express.
*/}}
{{- define "simpleloggers.validate" -}}
{{- $minInsync := .Values.node.replication.minInsync -}}
{{- if and $minInsync (gt (int $minInsync) (int .Values.node.replicas)) -}}
{{- fail (printf "node.replication.minInsync (%d) must not exceed node.replicas (%d): the leader would refuse every write" (int $minInsync) (int .Values.node.replicas)) -}}
{{- end -}}
{{- if eq (int .Values.node.port) (int .Values.node.replicationPort) -}}
{{- fail (printf "node.replicationPort (%d) must differ from node.port: replication has a listener of its own so that only peers reach it" (int .Values.node.replicationPort)) -}}
{{- end -}}
{{- range $name, $token := .Values.node.auth -}}
{{- if and $token.enabled (not $token.create) (not $token.existingSecret) -}}
{{- fail (printf "node.auth.%s.enabled=true needs a Secret: set node.auth.%s.existingSecret, or node.auth.%s.create=true to generate one (or node.auth.%s.enabled=false to leave that API open)" $name $name $name $name) -}}
{{- end -}}
{{- end -}}
{{- $secret := .Values.node.replication.clusterSecret -}}
{{- if and (gt (int .Values.node.replicas) 1) (not $secret.create) (not $secret.existingSecret) (not $secret.allowNone) -}}
{{- fail (printf "node.replication.clusterSecret: with node.replicas=%d and neither create nor existingSecret, anything that reaches a node pod could fetch the whole log from the replication endpoint: set create=true or existingSecret, or allowNone=true to accept that" (int .Values.node.replicas)) -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.egress.enabled (not .Values.networkPolicy.egress.kubeApi) -}}
{{- fail "networkPolicy.egress.enabled=true needs networkPolicy.egress.kubeApi (the API server's address as NetworkPolicy peers, e.g. [{ipBlock: {cidr: 172.18.0.2/32}}]): the nodes' Kubernetes integration calls it" -}}
{{- end -}}
{{- $secretEnv := include "simpleloggers.secretEnvNames" . | splitList " " -}}
{{- range $where, $env := dict "node.extraEnv" .Values.node.extraEnv "producer.extraEnv" .Values.producer.extraEnv -}}
{{- range $env -}}
{{- if and (has .name $secretEnv) (hasKey . "value") -}}
{{- fail (printf "%s sets %s as a plain value: secrets never go in values; the chart sets it from a Secret (see the chart README, Access)" $where .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
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
(address, ACL token from a Secret, TLS CA path). Takes a dict: root, role (node or producer,
whose token it gets).
*/}}
{{- define "simpleloggers.consulEnv" -}}
{{- $root := .root -}}
- name: CONSUL_HTTP_ADDR
  value: {{ include "simpleloggers.consulHttpAddr" $root | quote }}
{{- include "simpleloggers.consulTokenEnv" . }}
{{- with include "simpleloggers.consulCaSource" $root | fromJson }}
# TLS to Consul: the CA that signed its certificate, mounted from {{ .kind }}/{{ .name }}.
- name: CONSUL_HTTP_SSL
  value: "true"
- name: CONSUL_CACERT
  value: /etc/consul-ca/{{ .key }}
{{- end }}
{{- end -}}

{{/*
simpleloggers.optionalEnv: env entries for the flags the chart leaves to the binary's default: takes
a dict of variable name -> value and renders one entry per value that is set (not empty, not
null), in name order; nothing at all when none is. Numbers (Helm parses YAML numbers as float64)
are printed as integers, never as 6.7108864e+07; values.schema.json has already checked the
format of each.
*/}}
{{- define "simpleloggers.optionalEnv" -}}
{{- range $name, $value := . }}
{{- if $value }}
- name: {{ $name }}
  value: {{ if kindIs "string" $value }}{{ $value | quote }}{{ else }}{{ $value | int64 | quote }}{{ end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
simpleloggers.consulCaSource: where the app's Consul CA comes from, as JSON {kind, name, key}
(kind Secret or ConfigMap), or {} when it needs none. The CA matters only when the app talks to
Consul over the network (agentless; with a sidecar it talks to its agent over loopback HTTP):
the in-chart CA when the chart runs TLS, else consul.external.caSecret or caConfigMap.
*/}}
{{- define "simpleloggers.consulCaSource" -}}
{{- $ext := .Values.consul.external -}}
{{- if .Values.consul.agent.enabled -}}
{}
{{- else if .Values.consul.server.enabled -}}
{{- if include "simpleloggers.consulTls" . -}}
{{- dict "kind" "Secret" "name" (include "simpleloggers.consulTlsSecretName" .) "key" "ca.crt" | toJson -}}
{{- else -}}
{}
{{- end -}}
{{- else if $ext.caSecret.name -}}
{{- dict "kind" "Secret" "name" $ext.caSecret.name "key" $ext.caSecret.key | toJson -}}
{{- else if $ext.caConfigMap.name -}}
{{- dict "kind" "ConfigMap" "name" $ext.caConfigMap.name "key" $ext.caConfigMap.key | toJson -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{/*
simpleloggers.consulCaVolume: true (non-empty) when the app mounts a Consul CA
(simpleloggers.consulCaSource).
*/}}
{{- define "simpleloggers.consulCaVolume" -}}
{{- if include "simpleloggers.consulCaSource" . | fromJson -}}
true
{{- end -}}
{{- end -}}

{{/*
simpleloggers.consulCaVolumeSource: the consul-ca volume (a list item): the CA key of
simpleloggers.consulCaSource, mounted at /etc/consul-ca.
*/}}
{{- define "simpleloggers.consulCaVolumeSource" -}}
{{- $src := include "simpleloggers.consulCaSource" . | fromJson -}}
- name: consul-ca
  {{- if eq $src.kind "Secret" }}
  secret:
    secretName: {{ $src.name }}
  {{- else }}
  configMap:
    name: {{ $src.name }}
  {{- end }}
    items:
      - key: {{ $src.key }}
        path: {{ $src.key }}
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
simpleloggers.consulAgentToken: true (non-empty) when the agent sidecars join an external Consul
with an ACL token. The agent does not read CONSUL_HTTP_TOKEN (only API clients such as the CLI
and the app do), so its own token goes into its configuration: acl.tokens.agent, written from the
Secret by the consul-agent-acl init container, as consul-k8s does for its client agents.
*/}}
{{- define "simpleloggers.consulAgentToken" -}}
{{- if and .Values.consul.agent.enabled (not .Values.consul.server.enabled) .Values.consul.external.tokenSecret.name -}}
true
{{- end -}}
{{- end -}}

{{/*
simpleloggers.consulContainerEnv: what every container running the official Consul image needs.
The image's entrypoint (dumb-init as PID 1, which reaps the probes' children) is kept; as uid
100 it must not chown the data dir nor su-exec, which CONSUL_DISABLE_PERM_MGMT turns off.
*/}}
{{- define "simpleloggers.consulContainerEnv" -}}
- name: CONSUL_DISABLE_PERM_MGMT
  value: "true"
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{/*
simpleloggers.consulAgentInitContainers: the init containers of a pod with a Consul agent: the
consul-agent-acl step (only with an agent token, see simpleloggers.consulAgentToken) and the
agent itself as a native sidecar (an init container with restartPolicy: Always). The agent
starts, and passes its startup probe once the catalog lists this pod's node at this pod's IP
(a previous pod of the same name has another IP), before the app starts; it stops after the
app, so the node can still release its lock and destroy its session through it. -node is the
pod name, so each pod has its own serfHealth; the agent advertises the pod IP so that gossip
and Consul's HTTP check on the node's /consul-check reach it; -retry-interval is short because
the default (30 s) is added to every cold start whose first join finds no server yet. Takes the
root context.
*/}}
{{- define "simpleloggers.consulAgentInitContainers" -}}
{{- if include "simpleloggers.consulAgentToken" . }}
- name: consul-agent-acl
  image: {{ include "simpleloggers.consulImage" . }}
  imagePullPolicy: {{ .Values.consul.image.pullPolicy }}
  command:
    - /bin/sh
    - -ec
    - |
      token="$(cat "$TOKEN_FILE")"
      case "$token" in
        "" | *[!A-Za-z0-9-]*)
          echo "consul-agent-acl: $TOKEN_FILE is empty or not a Consul ACL token (letters, digits, dashes)" >&2
          exit 1 ;;
      esac
      printf '{"acl": {"enabled": true, "default_policy": "deny", "down_policy": "extend-cache", "tokens": {"agent": "%s"}}}\n' "$token" >"$CONFIG_FILE"
  env:
    - name: TOKEN_FILE
      value: /consul/acl-token/{{ .Values.consul.external.tokenSecret.key }}
    - name: CONFIG_FILE
      value: /consul/acl/agent-token.json
  resources:
    {{- toYaml .Values.consul.agent.resources | nindent 4 }}
  securityContext:
    {{- include "simpleloggers.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: consul-acl-token
      mountPath: /consul/acl-token
      readOnly: true
    - name: consul-agent-acl
      mountPath: /consul/acl
{{- end }}
- name: consul-agent
  image: {{ include "simpleloggers.consulImage" . }}
  imagePullPolicy: {{ .Values.consul.image.pullPolicy }}
  restartPolicy: Always
  args:
    - consul
    - agent
    - -node=$(POD_NAME)
    - -advertise=$(POD_IP)
    - -bind=0.0.0.0
    - -client=127.0.0.1
    - -data-dir=/consul/data
    - -datacenter={{ .Values.consul.datacenter }}
    - -disable-host-node-id
    - -hcl=leave_on_terminate = true
    - -retry-interval={{ .Values.consul.retryInterval }}
    {{- range (include "simpleloggers.consulRetryJoin" . | trim | splitList "\n") }}
    - -retry-join={{ . | trim }}
    {{- end }}
    {{- if include "simpleloggers.consulAgentToken" . }}
    - -config-file=/consul/acl/agent-token.json
    {{- end }}
    {{- if include "simpleloggers.consulAcl" . }}
    - -config-file=/consul/acl-config/client-acl.json
    {{- end }}
    {{- if include "simpleloggers.gossipSecretName" . }}
    - -encrypt=$(CONSUL_GOSSIP_KEY)
    {{- end }}
    {{- if include "simpleloggers.consulTls" . }}
    - {{ printf "-hcl=%s" (include "simpleloggers.consulClientTlsHcl" .) | toJson }}
    {{- end }}
  env:
    {{- include "simpleloggers.consulContainerEnv" . | nindent 4 }}
    {{- include "simpleloggers.gossipEnv" . | nindent 4 }}
    # For the consul CLI of the startup probe: the agent's own token.
    {{- include "simpleloggers.consulTokenEnv" (dict "root" . "role" "client-agent") | nindent 4 }}
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
        - consul catalog nodes | awk -v node="$POD_NAME" -v addr="$POD_IP" '$1 == node && $3 == addr { found = 1 } END { exit !found }'
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
    - name: consul-agent-tmp
      mountPath: /tmp
    {{- if include "simpleloggers.consulAgentToken" . }}
    - name: consul-agent-acl
      mountPath: /consul/acl
      readOnly: true
    {{- end }}
    {{- if include "simpleloggers.consulAcl" . }}
    - name: consul-acl-config
      mountPath: /consul/acl-config
      readOnly: true
    {{- end }}
    {{- if include "simpleloggers.consulTls" . }}
    - name: consul-tls-ca
      mountPath: /consul/tls
      readOnly: true
    {{- end }}
{{- end -}}

{{/*
simpleloggers.consulAgentVolumes: the volumes the agent containers mount: its data dir, a
writable /tmp (the root filesystem is read-only; `consul snapshot save` and others write there)
and, with an agent token, the token Secret and the in-memory dir the agent's ACL config goes to.
*/}}
{{- define "simpleloggers.consulAgentVolumes" -}}
- name: consul-agent-data
  emptyDir: {}
- name: consul-agent-tmp
  emptyDir: {}
{{- if include "simpleloggers.consulAgentToken" . }}
- name: consul-acl-token
  secret:
    secretName: {{ .Values.consul.external.tokenSecret.name }}
- name: consul-agent-acl
  emptyDir:
    medium: Memory
{{- end }}
{{- if include "simpleloggers.consulAcl" . }}
- name: consul-acl-config
  secret:
    secretName: {{ include "simpleloggers.consulAclSecretName" . }}
    items:
      - key: client-acl.json
        path: client-acl.json
{{- end }}
{{- if include "simpleloggers.consulTls" . }}
- name: consul-tls-ca
  secret:
    secretName: {{ include "simpleloggers.consulTlsSecretName" . }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{/*
simpleloggers.clusterSecretCreated: true (non-empty) when the chart generates the cluster secret's
Secret: node.replication.clusterSecret.create and no existingSecret.
*/}}
{{- define "simpleloggers.clusterSecretCreated" -}}
{{- if and .Values.node.replication.clusterSecret.create (not .Values.node.replication.clusterSecret.existingSecret) -}}
true
{{- end -}}
{{- end -}}

{{/*
simpleloggers.clusterSecretName: the Secret the nodes read SIMPLELOGGERS_CLUSTER_SECRET from:
node.replication.clusterSecret.existingSecret, else the generated <fullname>-cluster-secret, else
empty (no secret: the internal replication endpoint is open).
*/}}
{{- define "simpleloggers.clusterSecretName" -}}
{{- if .Values.node.replication.clusterSecret.existingSecret -}}
{{- .Values.node.replication.clusterSecret.existingSecret -}}
{{- else if include "simpleloggers.clusterSecretCreated" . -}}
{{- printf "%s-cluster-secret" (include "simpleloggers.fullname" . | trunc 48 | trimSuffix "-") -}}
{{- end -}}
{{- end -}}

{{/*
simpleloggers.heldSecretValue: the base64 value under .key of the Secret .name in .namespace as
the cluster holds it now (`lookup`), or empty when there is no such Secret or key (a first
install, or `helm template`, which cannot look up). Every Secret the chart generates (cluster
secret, API tokens, Consul ACL tokens, gossip key) reads its held value back through this one
define, so an upgrade keeps what the pods already use. Takes a dict: namespace, name, key.
*/}}
{{- define "simpleloggers.heldSecretValue" -}}
{{- $secret := lookup "v1" "Secret" .namespace .name -}}
{{- if and $secret (hasKey $secret "data") (hasKey $secret.data .key) -}}
{{- index $secret.data .key -}}
{{- end -}}
{{- end -}}


{{/*
simpleloggers.generatedSecret: a whole Opaque Secret the chart generates and keeps: for each
entry of .data (key -> a freshly generated value, used only when the cluster does not hold one
under that key yet) the value the Secret already holds (simpleloggers.heldSecretValue), else the
fresh one. Takes a dict: root (the root context), name, component, data.
*/}}
{{- define "simpleloggers.generatedSecret" -}}
{{- $ns := include "simpleloggers.namespace" .root -}}
apiVersion: v1
kind: Secret
metadata:
  name: {{ .name }}
  namespace: {{ $ns }}
  labels:
    {{- include "simpleloggers.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
type: Opaque
data:
{{- range $key, $fresh := .data }}
{{- $held := include "simpleloggers.heldSecretValue" (dict "namespace" $ns "name" $.name "key" $key) }}
  {{ $key }}: {{ $held | default ($fresh | b64enc) | quote }}
{{- end }}
{{- end -}}

{{/*
simpleloggers.tokenSecretName: the Secret an API token (node.auth.apiToken or
node.auth.readToken, given as .token) is read from: its existingSecret, else the generated
<fullname>-<.suffix> when create is on, else empty; always empty while the token is disabled.
Takes a dict: root, token, suffix.
*/}}
{{- define "simpleloggers.tokenSecretName" -}}
{{- if .token.enabled -}}
{{- if .token.existingSecret -}}
{{- .token.existingSecret -}}
{{- else if .token.create -}}
{{- printf "%s-%s" (include "simpleloggers.fullname" .root | trunc 48 | trimSuffix "-") .suffix -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
simpleloggers.apiTokenSecretName: the Secret of the write API token (SIMPLELOGGERS_API_TOKEN),
or empty when node.auth.apiToken is disabled.
*/}}
{{- define "simpleloggers.apiTokenSecretName" -}}
{{- include "simpleloggers.tokenSecretName" (dict "root" . "token" .Values.node.auth.apiToken "suffix" "api-token") -}}
{{- end -}}

{{/*
simpleloggers.readTokenSecretName: the Secret of the read API token (SIMPLELOGGERS_READ_TOKEN),
or empty when node.auth.readToken is disabled.
*/}}
{{- define "simpleloggers.readTokenSecretName" -}}
{{- include "simpleloggers.tokenSecretName" (dict "root" . "token" .Values.node.auth.readToken "suffix" "read-token") -}}
{{- end -}}

{{/*
simpleloggers.tokenEnv: the env entries giving a container the API tokens it sends or checks,
each through a secretKeyRef (never a plain value): SIMPLELOGGERS_API_TOKEN when .write and the
write token is on, SIMPLELOGGERS_READ_TOKEN when .read and the read token is on. Takes a dict:
root, write, read.
*/}}
{{- define "simpleloggers.tokenEnv" -}}
{{- $auth := .root.Values.node.auth -}}
{{- with (and .write (include "simpleloggers.apiTokenSecretName" .root)) }}
- name: SIMPLELOGGERS_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $auth.apiToken.key }}
{{- end }}
{{- with (and .read (include "simpleloggers.readTokenSecretName" .root)) }}
- name: SIMPLELOGGERS_READ_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $auth.readToken.key }}
{{- end }}
{{- end -}}

{{/*
simpleloggers.secretEnvNames: the variables that carry secrets. The chart sets each from a
Secret; simpleloggers.validate refuses an extraEnv entry that gives one a plain `value`.
*/}}
{{- define "simpleloggers.secretEnvNames" -}}
SIMPLELOGGERS_API_TOKEN SIMPLELOGGERS_READ_TOKEN SIMPLELOGGERS_CLUSTER_SECRET CONSUL_HTTP_TOKEN
{{- end -}}

{{/*
simpleloggers.releasePeer: a NetworkPolicy peer (a list item) selecting this release's pods
whose app.kubernetes.io/component is one of .components, in the release namespace. Takes a
dict: root, components (a list).
*/}}
{{- define "simpleloggers.releasePeer" -}}
- podSelector:
    matchLabels:
      {{- include "simpleloggers.selectorLabels" .root | nindent 6 }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values:
          {{- toYaml .components | nindent 10 }}
{{- end -}}

{{/*
simpleloggers.consulAgentComponents: the components whose pods run a Consul agent (gossip
members): the in-chart servers, and the node and producer pods while they carry the agent
sidecar (the producer not when it sends to producer.target, which needs no Consul).
*/}}
{{- define "simpleloggers.consulAgentComponents" -}}
{{- $components := list -}}
{{- if .Values.consul.server.enabled -}}
{{- $components = append $components "consul-server" -}}
{{- end -}}
{{- if .Values.consul.agent.enabled -}}
{{- $components = append $components "node" -}}
{{- if and .Values.producer.enabled (not .Values.producer.target) -}}
{{- $components = append $components "producer" -}}
{{- end -}}
{{- end -}}
{{- toJson $components -}}
{{- end -}}

{{/*
simpleloggers.gossipIngress: the ingress rule (a list item) letting every Consul agent and
server of the release, and networkPolicy.consulExtraFrom, reach Serf LAN gossip (8301, TCP and
UDP).
*/}}
{{- define "simpleloggers.gossipIngress" -}}
- ports:
    - port: 8301
      protocol: TCP
    - port: 8301
      protocol: UDP
  from:
    {{- include "simpleloggers.releasePeer" (dict "root" . "components" (include "simpleloggers.consulAgentComponents" . | fromJsonArray)) | nindent 4 }}
    {{- with .Values.networkPolicy.consulExtraFrom }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
simpleloggers.consulEgress: the egress rule (a list item) letting a Consul agent or server
reach every other gossip member (8301, TCP and UDP) and the in-chart servers' RPC (8300) and
HTTP API (8500), or an external Consul's peers (networkPolicy.egress.consulExternal).
*/}}
{{- define "simpleloggers.consulEgress" -}}
- ports:
    - port: 8301
      protocol: TCP
    - port: 8301
      protocol: UDP
  to:
    {{- include "simpleloggers.releasePeer" (dict "root" . "components" (include "simpleloggers.consulAgentComponents" . | fromJsonArray)) | nindent 4 }}
{{- if .Values.consul.server.enabled }}
- ports:
    - port: 8300
      protocol: TCP
    - port: {{ ternary 8501 8500 (ne (include "simpleloggers.consulTls" .) "") }}
      protocol: TCP
  to:
    {{- include "simpleloggers.releasePeer" (dict "root" . "components" (list "consul-server")) | nindent 4 }}
{{- end }}
{{- with .Values.networkPolicy.egress.consulExternal }}
- to:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}

{{/*
simpleloggers.dnsEgress: the egress rule (a list item) letting a pod resolve names: port 53, UDP
and TCP, to networkPolicy.egress.dns.
*/}}
{{- define "simpleloggers.dnsEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  to:
    {{- toYaml .Values.networkPolicy.egress.dns | nindent 4 }}
{{- end -}}

{{/*
simpleloggers.consulAcl: true (non-empty) when the chart runs ACLs on its own Consul servers
(consul.server.enabled and consul.acl.enabled).
*/}}
{{- define "simpleloggers.consulAcl" -}}
{{- if and .Values.consul.server.enabled .Values.consul.acl.enabled -}}
true
{{- end -}}
{{- end -}}

{{/*
simpleloggers.consulAclSecretName: the Secret holding the in-chart Consul's ACL secret IDs
(initial management token, each role's accessor and secret) and the agents' ACL configuration.
*/}}
{{- define "simpleloggers.consulAclSecretName" -}}
{{- printf "%s-acl" (include "simpleloggers.consulServerName" .) -}}
{{- end -}}

{{/*
simpleloggers.consulAclRoles: the roles that get a Consul token (and a policy of their own):
each server's agent, each client agent (sidecar), the nodes, the producers.
*/}}
{{- define "simpleloggers.consulAclRoles" -}}
server-agent client-agent node producer
{{- end -}}

{{/*
simpleloggers.consulAclIds: the ACL Secret's IDs as JSON (key -> plain value):
management-token, and <role>-accessor and <role>-token per role; each the value the cluster's
Secret already holds (simpleloggers.heldSecretValue), else a fresh uuidv4. Consul takes
caller-chosen accessor and secret IDs, so the bootstrap Job needs no way to write them back.
*/}}
{{- define "simpleloggers.consulAclIds" -}}
{{- $ns := include "simpleloggers.namespace" . -}}
{{- $name := include "simpleloggers.consulAclSecretName" . -}}
{{- $keys := list "management-token" -}}
{{- range (include "simpleloggers.consulAclRoles" . | splitList " ") -}}
{{- $keys = concat $keys (list (printf "%s-accessor" .) (printf "%s-token" .)) -}}
{{- end -}}
{{- $ids := dict -}}
{{- range $keys -}}
{{- $held := include "simpleloggers.heldSecretValue" (dict "namespace" $ns "name" $name "key" .) -}}
{{- $_ := set $ids . (ternary ($held | b64dec) uuidv4 (ne $held "")) -}}
{{- end -}}
{{- toJson $ids -}}
{{- end -}}

{{/*
simpleloggers.consulAclConfig: an agent's ACL configuration as JSON: ACLs on, default deny,
cached decisions kept while the servers are unreachable (extend-cache), tokens set through the
API kept on disk, and the given tokens (.tokens: acl.tokens keys -> secret IDs).
*/}}
{{- define "simpleloggers.consulAclConfig" -}}
{{- dict "acl" (dict "enabled" true "default_policy" "deny" "down_policy" "extend-cache" "enable_token_persistence" true "tokens" .tokens) | toJson -}}
{{- end -}}

{{/*
simpleloggers.consulAclPolicy: the rules (HCL) of one role's policy (.role), the least each
needs (docs/consul-acl.md): a server agent and a client agent write only their own nodes (the
StatefulSet's pods by name, the producer's by its pod-name prefix) and read services; a node
registers its service, holds sessions on its agent's node (its pod's, or a server's when
agentless), writes the election key and what lives under it, and reads nodes (health); a
producer reads the election key. Takes a dict: root, role.
*/}}
{{- define "simpleloggers.consulAclPolicy" -}}
{{- $root := .root -}}
{{- $fullname := include "simpleloggers.fullname" $root -}}
{{- $server := include "simpleloggers.consulServerName" $root -}}
{{- if eq .role "server-agent" -}}
node_prefix "{{ $server }}-" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
{{- else if eq .role "client-agent" -}}
{{- range $i := until (int $root.Values.node.replicas) }}
node "{{ $fullname }}-{{ $i }}" {
  policy = "write"
}
{{- end }}
node_prefix "{{ $fullname }}-producer-" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
{{- else if eq .role "node" -}}
service "{{ $root.Values.node.serviceName }}" {
  policy = "write"
}
{{- if $root.Values.consul.agent.enabled }}
{{- range $i := until (int $root.Values.node.replicas) }}
session "{{ $fullname }}-{{ $i }}" {
  policy = "write"
}
{{- end }}
{{- else }}
session_prefix "{{ $server }}-" {
  policy = "write"
}
{{- end }}
key_prefix "{{ $root.Values.node.electionKey }}" {
  policy = "write"
}
node_prefix "" {
  policy = "read"
}
{{- else if eq .role "producer" -}}
key "{{ $root.Values.node.electionKey }}" {
  policy = "read"
}
{{- end }}
{{- end -}}

{{/*
simpleloggers.consulTokenEnv: CONSUL_HTTP_TOKEN for a container talking to Consul as .role
(node, producer, client-agent), from the in-chart ACL Secret, or consul.external.tokenSecret
with an external Consul; nothing without ACLs. Takes a dict: root, role.
*/}}
{{- define "simpleloggers.consulTokenEnv" -}}
{{- $v := .root.Values -}}
{{- if include "simpleloggers.consulAcl" .root }}
- name: CONSUL_HTTP_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "simpleloggers.consulAclSecretName" .root }}
      key: {{ .role }}-token
{{- else if and (not $v.consul.server.enabled) $v.consul.external.tokenSecret.name }}
- name: CONSUL_HTTP_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $v.consul.external.tokenSecret.name }}
      key: {{ $v.consul.external.tokenSecret.key }}
{{- end }}
{{- end -}}

{{/*
simpleloggers.gossipSecretName: the Secret every Consul agent and server of the release reads
its gossip encryption key from: consul.gossipEncryption.existingSecret, else (in-chart servers)
the generated <consul server name>-gossip; empty when gossip is not encrypted (off, or an
external Consul without an existingSecret, whose key the chart cannot know).
*/}}
{{- define "simpleloggers.gossipSecretName" -}}
{{- $g := .Values.consul.gossipEncryption -}}
{{- if $g.enabled -}}
{{- if $g.existingSecret -}}
{{- $g.existingSecret -}}
{{- else if .Values.consul.server.enabled -}}
{{- printf "%s-gossip" (include "simpleloggers.consulServerName" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
simpleloggers.gossipEnv: CONSUL_GOSSIP_KEY from the gossip Secret, for `-encrypt=$(CONSUL_GOSSIP_KEY)`;
nothing when gossip is not encrypted.
*/}}
{{- define "simpleloggers.gossipEnv" -}}
{{- with include "simpleloggers.gossipSecretName" . }}
- name: CONSUL_GOSSIP_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.consul.gossipEncryption.key }}
{{- end }}
{{- end -}}

{{/*
simpleloggers.consulTls: true (non-empty) when the chart runs TLS on its own Consul
(consul.server.enabled and consul.tls.enabled).
*/}}
{{- define "simpleloggers.consulTls" -}}
{{- if and .Values.consul.server.enabled .Values.consul.tls.enabled -}}
true
{{- end -}}
{{- end -}}

{{/*
simpleloggers.consulTlsSecretName: the Secret with the in-chart Consul's CA (ca.crt, ca.key)
and server certificate (tls.crt, tls.key).
*/}}
{{- define "simpleloggers.consulTlsSecretName" -}}
{{- printf "%s-tls" (include "simpleloggers.consulServerName" .) -}}
{{- end -}}

{{/*
simpleloggers.consulServerUrl: the in-chart servers' HTTP API through their client Service:
https on 8501 with TLS, else http on 8500.
*/}}
{{- define "simpleloggers.consulServerUrl" -}}
{{- $host := printf "%s.%s.svc" (include "simpleloggers.consulServerName" .) (include "simpleloggers.namespace" .) -}}
{{- if include "simpleloggers.consulTls" . -}}
{{- printf "https://%s:8501" $host -}}
{{- else -}}
{{- printf "http://%s:8500" $host -}}
{{- end -}}
{{- end -}}

{{/*
simpleloggers.consulServerTlsSans: the server certificate's DNS names: server.<dc>.consul (what
verify_server_hostname checks), each server's stable name in the headless Service (a wildcard,
so a changed consul.server.replicas needs no new certificate), the client Service (agentless
apps, the ACL Job) and localhost. As JSON.
*/}}
{{- define "simpleloggers.consulServerTlsSans" -}}
{{- $ns := include "simpleloggers.namespace" . -}}
{{- $server := include "simpleloggers.consulServerName" . -}}
{{- $headless := include "simpleloggers.consulServerHeadlessName" . -}}
{{- list (printf "server.%s.consul" .Values.consul.datacenter) (printf "*.%s.%s.svc" $headless $ns) (printf "*.%s.%s.svc.cluster.local" $headless $ns) (printf "%s.%s.svc" $server $ns) (printf "%s.%s.svc.cluster.local" $server $ns) $server "localhost" | toJson -}}
{{- end -}}

{{/*
simpleloggers.consulServerTlsHcl: the servers' TLS configuration (HCL, for -hcl): the generated
CA and server certificate, verify_outgoing everywhere, verify_incoming on internal RPC (agents
present the certificates auto_encrypt gave them) but not on HTTPS (API clients have none),
verify_server_hostname, auto_encrypt for the agents, HTTPS on 8501 on every address and plain
HTTP on loopback only (the probes and `kubectl exec` CLI).
*/}}
{{- define "simpleloggers.consulServerTlsHcl" -}}
tls {
  defaults {
    ca_file = "/consul/tls/ca.crt"
    cert_file = "/consul/tls/tls.crt"
    key_file = "/consul/tls/tls.key"
    verify_outgoing = true
  }
  internal_rpc {
    verify_incoming = true
    verify_server_hostname = true
  }
  https {
    verify_incoming = false
  }
}
auto_encrypt {
  allow_tls = true
}
ports {
  https = 8501
}
addresses {
  http = "127.0.0.1"
  https = "0.0.0.0"
}
{{- end -}}

{{/*
simpleloggers.consulClientTlsHcl: an agent sidecar's TLS configuration (HCL, for -hcl): the CA
to verify the servers (verify_outgoing, verify_server_hostname) and its own certificate from
the servers (auto_encrypt); its HTTP API stays on loopback, inside the pod.
*/}}
{{- define "simpleloggers.consulClientTlsHcl" -}}
tls {
  defaults {
    ca_file = "/consul/tls/ca.crt"
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
}
auto_encrypt {
  tls = true
}
{{- end -}}
