#!/usr/bin/env bash
# Creates the kind cluster (if absent), builds and loads the image, installs or upgrades the
# chart with the kind values, and waits until exactly one node pod is Ready: the leader.
# Not `helm --wait`: followers are never Ready, so it would time out.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/kind-common.sh
source scripts/kind-common.sh

require docker kind kubectl helm
docker info >/dev/null 2>&1 || { echo "docker is installed but its daemon does not answer" >&2; exit 1; }

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config kind-config.yaml
fi

# Helm installs crds/ only on first install and never upgrades them: apply them every time.
kubectl --context "kind-${CLUSTER}" apply --server-side -f charts/simpleloggers/crds/

docker build -f deploy/Dockerfile -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"
# The image id in a pod annotation makes a rebuilt image a new StatefulSet revision, which the
# leader rolls out (OnDelete: followers first, itself last).
image_id="$(docker image inspect -f '{{.Id}}' "$IMAGE")"

helm upgrade --install "$RELEASE" charts/simpleloggers \
  --kube-context "kind-${CLUSTER}" --namespace "$NAMESPACE" --create-namespace \
  -f charts/simpleloggers/values-kind.yaml \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
  --set-string "node.podAnnotations.simpleloggers\.io/image-id=${image_id#sha256:}"

leader="$(wait_for_one_ready "${TIMEOUT:-300}")"
echo "ready: exactly one node pod is Ready, the leader: ${leader}"
"${KUBECTL[@]}" get pods -L simpleloggers.io/role
echo "try: curl -s -X POST --data hello http://localhost:3000/api/v1/log"
