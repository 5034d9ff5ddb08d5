#!/usr/bin/env bash
# Creates the kind cluster (if absent), builds the image and loads it into every kind node,
# installs or upgrades the chart with the kind values, and waits until exactly one node pod is
# Ready: the leader. `helm --wait` waits for the Consul servers and the producer; Helm counts
# the nodes' OnDelete StatefulSet as ready at once, hence the wait for one Ready node after it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/kind-common.sh
source deploy/kind-common.sh

require docker kind kubectl helm
docker info >/dev/null 2>&1 || { echo "docker is installed but its daemon does not answer" >&2; exit 1; }

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config kind-config.yaml
fi

# Helm installs crds/ only on first install and never upgrades them: apply them every time.
kubectl --context "kind-${CLUSTER}" apply --server-side -f charts/simpleloggers/crds/

docker build -f deploy/Dockerfile -t "$IMAGE" .
# Not `kind load docker-image`: with Docker's containerd image store (the default in recent
# Docker) its archive names platforms whose content is absent and the nodes' import fails (kind
# issue 3795). A single-platform archive loads with either store. `docker save --platform`
# needs Docker 28; an older Docker has only the classic store, where a plain save is fine.
archive="$(mktemp "${TMPDIR:-/tmp}/simpleloggers-image.XXXXXX")"
trap 'rm -f "$archive"' EXIT
platform="$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$IMAGE")"
docker save --platform "$platform" -o "$archive" "$IMAGE" 2>/dev/null || docker save -o "$archive" "$IMAGE"
kind load image-archive "$archive" --name "$CLUSTER"
# The image id in the node and producer pod annotations makes a rebuilt image (same tag) a new
# revision of both: the producer Deployment rolls, and the leader rolls the nodes (OnDelete:
# followers first, itself last).
image_id="$(docker image inspect -f '{{.Id}}' "$IMAGE")"

helm upgrade --install "$RELEASE" charts/simpleloggers \
  --kube-context "kind-${CLUSTER}" --namespace "$NAMESPACE" --create-namespace \
  -f charts/simpleloggers/values-kind.yaml \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
  --set-string "node.podAnnotations.simpleloggers\.io/image-id=${image_id#sha256:}" \
  --set-string "producer.podAnnotations.simpleloggers\.io/image-id=${image_id#sha256:}" \
  --wait --timeout "${TIMEOUT:-300}s"

leader="$(wait_for_one_ready "${TIMEOUT:-300}")"
echo "ready: exactly one node pod is Ready, the leader: ${leader}"
"${KUBECTL[@]}" get pods -L simpleloggers.io/role
echo "try: TOKEN=\"\$(kubectl --context kind-${CLUSTER} -n ${NAMESPACE} get secret ${API_TOKEN_SECRET} -o jsonpath='{.data.${API_TOKEN_KEY}}' | base64 --decode)\""
echo "     curl -s -X POST -H \"Authorization: Bearer \$TOKEN\" --data hello http://localhost:3000/api/v1/log"
