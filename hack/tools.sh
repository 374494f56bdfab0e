#!/usr/bin/env bash
# hack/tools.sh: the chart tools, built with Go from the Go module proxy (no GitHub releases).
#
#   hack/tools.sh             install pinned helm and kubeconform, and kubeconform's Kubernetes
#                             schemas (quick when already there)
#   hack/tools.sh bindir      print the directory holding the binaries
#   hack/tools.sh schemadir   print the directory holding the Kubernetes JSON schemas
#
# Binaries go to $WASINN_TOOLS_BIN (default ~/.cache/wasinn/tools/bin), outside the repository;
# a stamp per tool and version makes a second run a no-op. Versions: hack/versions.env. Go: GO,
# else `go` on PATH, else /usr/local/go/bin/go.
#
# kubeconform downloads its schemas from GitHub by default, which offline machines cannot. The
# schemas are made here instead from the OpenAPI document (api/openapi-spec/swagger.json) of the
# k8s.io/kubernetes Go module of $K8S_VERSION (the one hack/cluster runs), fetched through the Go module proxy like
# the binaries, by hack/openapi2jsonschema.py ($PYTHON, default .venv/bin/python, needs PyYAML).
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The API the chart is validated against: the version hack/cluster runs.
KUBERNETES_VERSION="v$K8S_VERSION"
TOOLS="$CACHE/tools"
BIN="${WASINN_TOOLS_BIN:-$TOOLS/bin}"
SCHEMAS="$TOOLS/schemas/${KUBERNETES_VERSION#v}-standalone-strict"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"

# install NAME PACKAGE VERSION [LDFLAGS]: the stamp records the version and flags it was built with
install_tool() {
  local name="$1" package="$2" version="$3" ldflags="${4:-}" stamp start
  stamp="$BIN/.$name.stamp"
  if [[ -x "$BIN/$name" && -f "$stamp" && "$(cat "$stamp")" == "$version $ldflags" ]]; then
    return 0
  fi
  find_go
  mkdir -p "$BIN"
  log "building $name $version with $("$GO" env GOVERSION) (one-time; minutes on a small machine)"
  start=$SECONDS
  GOBIN="$BIN" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    "$GO" install -trimpath -ldflags "-s -w $ldflags" "$package@$version"
  echo "$version $ldflags" >"$stamp"
  log "$name $version built in $((SECONDS - start))s: $BIN/$name"
}

# Helm's own release build stamps the Kubernetes version of its client-go (v0.X.Y -> 1.X) as the
# default for `helm template` / `helm lint` (.Capabilities.KubeVersion); `go install` alone
# leaves v1.20. Read it from Helm's go.mod, as its Makefile does.
helm_ldflags() {
  local gomod minor
  find_go
  gomod="$(cd "${TMPDIR:-/tmp}" && GOFLAGS=-mod=mod "$GO" mod download -json "helm.sh/helm/v3@$HELM_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
  minor="$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod" | head -n1)"
  [[ -n "$minor" ]] || die "cannot read client-go's version from $gomod"
  local flags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in pkg/chartutil pkg/lint/rules; do
    flags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$minor"
  done
  echo "$flags"
}

install_schemas() {
  local dir start
  [[ -f "$SCHEMAS/.complete" ]] && return 0
  find_go
  start=$SECONDS
  log "fetching k8s.io/kubernetes@$KUBERNETES_VERSION from the Go module proxy for its OpenAPI document"
  dir="$(cd "${TMPDIR:-/tmp}" && GOFLAGS=-mod=mod "$GO" mod download -json \
    "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
  [[ -f "$dir/api/openapi-spec/swagger.json" ]] || die "no swagger.json in k8s.io/kubernetes@$KUBERNETES_VERSION ($dir)"
  rm -rf "$SCHEMAS"
  "$PYTHON" "$REPO_ROOT/hack/openapi2jsonschema.py" --swagger "$dir/api/openapi-spec/swagger.json" "$SCHEMAS"
  touch "$SCHEMAS/.complete"
  log "Kubernetes $KUBERNETES_VERSION schemas written in $((SECONDS - start))s: $SCHEMAS"
}

case "${1:-install}" in
  install)
    if [[ ! -f "$BIN/.helm.stamp" || "$(cut -d' ' -f1 "$BIN/.helm.stamp")" != "$HELM_VERSION" ]]; then
      install_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "$(helm_ldflags)"
    fi
    install_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION" \
      "-X main.version=$KUBECONFORM_VERSION"
    install_schemas
    echo "$BIN"
    ;;
  bindir) echo "$BIN" ;;
  schemadir) echo "$SCHEMAS" ;;
  -h | --help) usage ;;
  *) die "unknown command ${1} (install | bindir | schemadir)" ;;
esac
