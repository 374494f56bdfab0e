#!/usr/bin/env bash
# hack/e2e-kind.sh: the end-to-end suite (tests/cluster/test_e2e.py, the README's "Install on
# Kubernetes" walked command by command) on a kind cluster, wherever Docker runs.
#
#   hack/e2e-kind.sh [PYTEST_ARGS...]
#
# Creates (or reuses) the kind cluster $WASINN_KIND_CLUSTER (default wasinn-e2e): a control
# plane and one worker labelled wasinn.dev/openvino=true with the models directory mounted at
# the same path (hostPath volumes of the tests point there); builds the images with docker
# (hack/build-images.sh) and `kind load`s them; runs the suite with that kubeconfig and
# WASINN_E2E_IMAGES_LOADED=1 (busybox comes from Docker Hub there); deletes the cluster unless
# WASINN_KIND_KEEP=1.
#
# Needs: docker (a running engine), kind, the venv with kubectl (make venv), helm
# (hack/tools.sh), the guests (hack/build-guests.sh build/guests). Exits 3, naming what is
# missing, when docker or kind is not there (tests/kind skips then).
#
# Environment: WASINN_KIND_CLUSTER, WASINN_KIND_KEEP, WASINN_MODELS_DIR (default
# ../shared/models), KIND_NODE_IMAGE (a kindest/node image for `kind create cluster --image`).
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NAME="${WASINN_KIND_CLUSTER:-wasinn-e2e}"
IMAGES=(localhost/wasinn-operator:dev localhost/wasinn-proplet:dev localhost/wasinn-mosquitto:dev)

missing=()
command -v docker >/dev/null 2>&1 || missing+=(docker)
if [[ ${#missing[@]} -eq 0 ]] && ! docker info >/dev/null 2>&1; then
  missing+=("a running Docker engine (docker info fails)")
fi
command -v kind >/dev/null 2>&1 || missing+=(kind)
if [[ ${#missing[@]} -gt 0 ]]; then
  printf '[e2e-kind] missing: %s\n' "$(IFS=,; echo "${missing[*]}")" >&2
  exit 3
fi

PYTEST="$REPO_ROOT/.venv/bin/pytest"
[[ -x "$PYTEST" ]] || die "no venv: run make venv (or make test)"
[[ -f "$REPO_ROOT/build/guests/classify-c.wasm" ]] ||
  "$REPO_ROOT/hack/build-guests.sh" "$REPO_ROOT/build/guests"
"$REPO_ROOT/hack/tools.sh" >/dev/null
MODELS_DIR="$(cd "${WASINN_MODELS_DIR:-$REPO_ROOT/../shared/models}" && pwd -P)"

WORK="$(mktemp -d)"
KUBECONFIG_FILE="$WORK/kubeconfig"
cleanup() {
  if [[ "${WASINN_KIND_KEEP:-}" != 1 ]]; then
    kind delete cluster --name "$NAME" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! kind get clusters 2>/dev/null | grep -qx "$NAME"; then
  cat >"$WORK/kind.yaml" <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
    labels:
      wasinn.dev/openvino: "true"
    extraMounts:
      - hostPath: $MODELS_DIR
        containerPath: $MODELS_DIR
        readOnly: true
YAML
  log "creating kind cluster $NAME"
  kind create cluster --name "$NAME" --config "$WORK/kind.yaml" --wait 180s \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi
kind get kubeconfig --name "$NAME" >"$KUBECONFIG_FILE"
export KUBECONFIG="$KUBECONFIG_FILE"
find_kubectl
"$KUBECTL" label node "$NAME-worker" wasinn.dev/openvino=true --overwrite

log "building the images with docker"
WASINN_IMAGE_BUILDER=docker "$REPO_ROOT/hack/build-images.sh" proplet operator mosquitto
log "loading them into the nodes"
kind load docker-image --name "$NAME" "${IMAGES[@]}"

log "running tests/cluster/test_e2e.py"
cd "$REPO_ROOT"
WASINN_E2E_IMAGES_LOADED=1 WASINN_MODELS_DIR="$MODELS_DIR" \
  "$PYTEST" -m cluster tests/cluster/test_e2e.py -p no:cacheprovider "$@"
