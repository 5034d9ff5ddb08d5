#!/usr/bin/env bash
# Deletes the kind cluster (and with it the release, its volumes and the loaded image).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/kind-common.sh
source deploy/kind-common.sh

require kind
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind delete cluster --name "$CLUSTER"
else
  echo "no kind cluster named ${CLUSTER}"
fi
