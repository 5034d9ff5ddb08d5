#!/usr/bin/env bash
# End-to-end checks on the kind cluster deploy/kind-up.sh made:
#  1. the Service has exactly one ready endpoint, and it is the Consul lock holder;
#  2. a message goes through `kubectl port-forward svc/...` (with the write token from its Secret);
#  3. deleting the leader pod: time until the single ready endpoint is the new leader;
#  4. the producer's messages keep being acknowledged (the leader's log end offset grows);
#  5. `helm test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/kind-common.sh
source deploy/kind-common.sh

require kubectl helm curl base64
PORT="${PF_PORT:-13000}"
FAILOVER_LIMIT_MS="${FAILOVER_LIMIT_MS:-15000}"

fail() { echo "FAIL: $*" >&2; exit 1; }

pf=""
headers="$(mktemp -d "${TMPDIR:-/tmp}/simpleloggers-e2e.XXXXXX")"
trap '[[ -z "$pf" ]] || kill "$pf" 2>/dev/null || true; rm -rf "$headers"' EXIT

# The API tokens from the chart's Secrets (node.auth): writes send the write token, reads the
# read token, each through a header file; a token that is off has no Secret and is not sent.
token="$(secret_value "$API_TOKEN_SECRET" "$API_TOKEN_KEY")" || fail "cannot read the Secret ${API_TOKEN_SECRET}"
bearer_header "$token" "$headers/write"
read_token="$(secret_value "$READ_TOKEN_SECRET" "$READ_TOKEN_KEY")" || fail "cannot read the Secret ${READ_TOKEN_SECRET}"
bearer_header "$read_token" "$headers/read"
load_consul_token || fail "cannot read the Secret ${CONSUL_ACL_SECRET}"
write_auth=()
[[ -z "$token" ]] || write_auth=(-H "@$headers/write")
read_auth=()
[[ -z "$read_token" ]] || read_auth=(-H "@$headers/read")

# one_leader: prints the single ready endpoint if it is also the lock holder, else fails.
one_leader() {
  local endpoints holder
  endpoints="$(ready_endpoints)"
  [[ -n "$endpoints" && "$(wc -l <<<"$endpoints")" -eq 1 ]] || return 1
  holder="$(lock_holder)"
  [[ "$endpoints" == "$holder" ]] || return 1
  echo "$endpoints"
}

# end_offset: the log end offset of the node the NodePort (localhost:3000) reaches.
end_offset() {
  curl -fsS --max-time 2 ${read_auth[@]+"${read_auth[@]}"} http://localhost:3000/api/v1/status | grep -o '"log_end_offset":[0-9]*' | cut -d: -f2
}

leader="$(wait_for_one_ready 120)"
leader="$(one_leader)" || fail "the Service's ready endpoints ($(ready_endpoints | paste -sd, -)) are not exactly the lock holder ($(lock_holder))"
echo "1. ok: the Service's only ready endpoint is the lock holder ${leader}"

"${KUBECTL[@]}" port-forward "svc/${SERVICE}" "${PORT}:3000" >/dev/null 2>&1 &
pf=$!
for _ in $(seq 50); do
  curl -fsS --max-time 1 "http://127.0.0.1:${PORT}/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
ack="$(curl -fsS --max-time 5 ${write_auth[@]+"${write_auth[@]}"} -X POST --data "e2e $(date +%s)" \
  "http://127.0.0.1:${PORT}/api/v1/log")" ||
  fail "POST through port-forward failed"
kill "$pf" 2>/dev/null || true
echo "2. ok: message acknowledged through port-forward: ${ack}"

end_offset >/dev/null || fail "no status through the NodePort (localhost:3000)"
start_ms="$(now_ms)"
"${KUBECTL[@]}" delete pod "$leader" --wait=false >/dev/null
while :; do
  new="$(one_leader)" && [[ "$new" != "$leader" ]] && break
  elapsed_ms=$(($(now_ms) - start_ms))
  ((elapsed_ms < FAILOVER_LIMIT_MS)) || fail "no new single leader endpoint after ${elapsed_ms} ms"
  sleep 0.1
done
elapsed_ms=$(($(now_ms) - start_ms))
echo "3. ok: failover ${leader} -> ${new}: the single ready endpoint is the new leader after ${elapsed_ms} ms"

# Each leader appends to its own log, so compare offsets on the new leader over a few seconds.
before="$(end_offset)" || fail "no status from the new leader"
sleep 5
after="$(end_offset)" || fail "no status from the new leader"
((after > before)) || fail "the new leader's log end offset did not grow (${before} -> ${after})"
restarts="$("${KUBECTL[@]}" get pods -l "app.kubernetes.io/instance=${RELEASE},app.kubernetes.io/component=producer" \
  -o jsonpath='{.items[*].status.containerStatuses[?(@.name=="producer")].restartCount}')"
[[ "${restarts:-0}" =~ ^0( 0)*$ ]] || fail "the producer restarted (${restarts})"
echo "4. ok: the producer's messages are still acknowledged (log end offset ${before} -> ${after})"

wait_for_one_ready 120 >/dev/null
helm test "$RELEASE" --kube-context "kind-${CLUSTER}" --namespace "$NAMESPACE" --logs
echo "5. ok: helm test passed"
echo "PASS"
