#!/usr/bin/env bash
# Shared by deploy/kind-*.sh (sourced, not run): names, tool checks, a portable clock and the
# leader queries. Override any name through the environment; any release name works.

CLUSTER="${KIND_CLUSTER:-simpleloggers}"
RELEASE="${RELEASE:-simpleloggers}"
NAMESPACE="${NAMESPACE:-simpleloggers}"
IMAGE="${IMAGE:-simpleloggers:dev}"
ELECTION_KEY="${ELECTION_KEY:-service/simpleloggers/leader}"

# chart_fullname RELEASE: the chart's simpleloggers.fullname for a release installed without
# name overrides: the release name when it contains "simpleloggers", else
# <release>-simpleloggers; cut to 63 characters, then one trailing dash dropped.
# tests/chart/test_scripts.py checks it against the chart's own rendering.
chart_fullname() {
  local name="$1"
  [[ "$name" == *simpleloggers* ]] || name="${name}-simpleloggers"
  name="${name:0:63}"
  echo "${name%-}"
}

FULLNAME="$(chart_fullname "$RELEASE")"
# The main Service carries the full name.
SERVICE="${FULLNAME}"
# simpleloggers.consulServerName: the full name cut to 49 characters, then -consul-server.
CONSUL="${FULLNAME:0:49}"
CONSUL="${CONSUL%-}-consul-server"
# simpleloggers.tokenSecretName: the full name cut to 48 characters, then -api-token or
# -read-token (the chart's generated token Secrets; override for node.auth.*.existingSecret).
TOKEN_PREFIX="${FULLNAME:0:48}"
TOKEN_PREFIX="${TOKEN_PREFIX%-}"
API_TOKEN_SECRET="${API_TOKEN_SECRET:-${TOKEN_PREFIX}-api-token}"
API_TOKEN_KEY="${API_TOKEN_KEY:-api-token}"
READ_TOKEN_SECRET="${READ_TOKEN_SECRET:-${TOKEN_PREFIX}-read-token}"
READ_TOKEN_KEY="${READ_TOKEN_KEY:-read-token}"
# simpleloggers.consulAclSecretName: the in-chart Consul's ACL IDs (absent with ACLs off).
CONSUL_ACL_SECRET="${CONSUL}-acl"
KUBECTL=(kubectl --context "kind-${CLUSTER}" --namespace "${NAMESPACE}")
NODE_SELECTOR="app.kubernetes.io/instance=${RELEASE},app.kubernetes.io/component=node"

# require TOOL...: exits naming every missing tool.
require() {
  local missing=() tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    echo "missing tools: ${missing[*]} (install them and retry)" >&2
    exit 1
  fi
}

# now_ms: wall-clock milliseconds without GNU date's %N (BSD and macOS date print a literal N):
# bash 5's EPOCHREALTIME, else perl (on macOS by default), else whole seconds.
now_ms() {
  if [[ -n "${EPOCHREALTIME:-}" ]]; then
    local us="${EPOCHREALTIME/[.,]/}" # the decimal separator follows the locale
    echo "$((10#$us / 1000))"
  elif command -v perl >/dev/null 2>&1; then
    perl -MTime::HiRes=time -e 'printf "%d\n", time() * 1000'
  else
    echo "$(($(date +%s) * 1000))"
  fi
}

# ready_node_pods: the node pods whose Ready condition is True, one per line.
ready_node_pods() {
  "${KUBECTL[@]}" get pods -l "$NODE_SELECTOR" \
    -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    awk '$2 == "True" { print $1 }'
}

# ready_endpoints: the pods behind the main Service's ready endpoints (EndpointSlices).
ready_endpoints() {
  "${KUBECTL[@]}" get endpointslices -l "kubernetes.io/service-name=${SERVICE}" \
    -o jsonpath='{range .items[*].endpoints[*]}{.targetRef.name}{" "}{.conditions.ready}{"\n"}{end}' |
    awk '$2 == "true" { print $1 }' | sort -u
}

# lock_holder: the node named in the election key while a session holds it (empty otherwise).
# With the chart's Consul ACLs it reads with CONSUL_READ_TOKEN (load it once with
# load_consul_token), which reaches the consul CLI on stdin, never on a command line.
lock_holder() {
  # shellcheck disable=SC2016 # expanded by the pod's shell, not this one
  printf '%s' "${CONSUL_READ_TOKEN:-}" |
    "${KUBECTL[@]}" exec -i "statefulset/${CONSUL}" -c consul -- sh -c \
      'CONSUL_HTTP_TOKEN="$(cat)"; export CONSUL_HTTP_TOKEN; exec consul kv get -detailed "$1"' lock_holder "$ELECTION_KEY" 2>/dev/null |
    awk '$1 == "Session" { held = ($2 != "-") } $1 == "Value" { value = $2 }
         END { if (held && match(value, /"name":"[^"]*"/)) print substr(value, RSTART + 8, RLENGTH - 9) }'
}

# wait_for_one_ready TIMEOUT_S: waits until exactly one node pod is Ready (the leader).
wait_for_one_ready() {
  local deadline=$((SECONDS + $1)) ready
  while :; do
    ready="$(ready_node_pods)"
    if [[ -n "$ready" && "$(wc -l <<<"$ready")" -eq 1 ]]; then
      echo "$ready"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      echo "timed out after $1 s waiting for exactly one Ready node pod" >&2
      "${KUBECTL[@]}" get pods -o wide >&2
      return 1
    fi
    sleep 1
  done
}

# secret_value SECRET KEY: the decoded value under KEY of SECRET; empty when there is no such
# Secret (the chart creates a token's Secret only while the token is on); fails with kubectl.
secret_value() {
  local encoded
  encoded="$("${KUBECTL[@]}" get secret "$1" --ignore-not-found -o "jsonpath={.data.$2}")" || return 1
  [[ -z "$encoded" ]] || base64 --decode <<<"$encoded"
}

# bearer_header TOKEN FILE: writes `Authorization: Bearer TOKEN` to FILE for `curl -H @FILE`
# (printf is a builtin, so the token appears in no command line); nothing for an empty token.
bearer_header() {
  [[ -z "$1" ]] || printf 'Authorization: Bearer %s\n' "$1" >"$2"
}

# load_consul_token: sets CONSUL_READ_TOKEN to the producer's Consul token (it may only read the
# election key) from the chart's ACL Secret; empty with ACLs off. Fails with kubectl.
load_consul_token() {
  CONSUL_READ_TOKEN="$(secret_value "$CONSUL_ACL_SECRET" producer-token)"
}
