# shellcheck shell=bash
# Sourced by hack/cluster (its settings: STATE, PKI, BIN, ...): the Kubernetes and CoreDNS builds (Go module
# proxy), cached under $CACHE/k8s.

build_k8s() {
  local b need=0
  for b in "${K8S_BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || need=1; done
  ((need == 0)) && return
  find_go
  mkdir -p "$K8S_DIR/src" "$BIN"
  log "building Kubernetes v$K8S_VERSION (${K8S_BINARIES[*]}) with $("$GO" version | cut -d' ' -f3);"
  log "  this takes ~25 min on 2 cores the first time; log: $K8S_DIR/build.log"
  "$0" _build >"$K8S_DIR/build.log" 2>&1 || {
    tail -n 30 "$K8S_DIR/build.log" >&2
    die "Kubernetes build failed, see $K8S_DIR/build.log"
  }
  log "built $("$BIN/kubelet" --version)"
}

build_coredns() {
  [[ -x "$COREDNS" ]] && return
  find_go
  mkdir -p "$COREDNS_DIR/src"
  log "building CoreDNS v$COREDNS_VERSION (~5 min the first time); log: $COREDNS_DIR/build.log"
  "$0" _build-coredns >"$COREDNS_DIR/build.log" 2>&1 || {
    tail -n 30 "$COREDNS_DIR/build.log" >&2
    die "CoreDNS build failed, see $COREDNS_DIR/build.log"
  }
}

build_coredns_inner() {
  find_go
  cd "$COREDNS_DIR/src" || exit
  export GOFLAGS=-mod=mod CGO_ENABLED=0 GOWORK=off
  render "$HERE/coredns.mod.tmpl" >go.mod
  cp "$HERE/coredns.go.tmpl" main.go
  rm -f go.sum
  "$GO" mod tidy
  mkdir -p "$COREDNS_DIR/bin"
  "$GO" build -trimpath -ldflags="-s -w" -o "$COREDNS.tmp" .
  mv -f "$COREDNS.tmp" "$COREDNS"
}

# Runs as its own process (so that errexit holds), output to build.log.
build_k8s_inner() {
  local b kmod info replaces date pkg ldflags="-s -w" pkgs=()
  find_go
  cd "$K8S_DIR/src" || exit
  export GOFLAGS=-mod=mod CGO_ENABLED=0 GOWORK=off
  # k8s.io/kubernetes replaces its staging modules with ./staging/src/k8s.io/<name>:
  # replace each with its published release v0.<minor>.<patch> instead.
  kmod="$("$GO" mod download -json "k8s.io/kubernetes@v$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
  info="${kmod%.mod}.info"
  [[ -f "$kmod" ]] || die "could not download k8s.io/kubernetes@v$K8S_VERSION"
  replaces="$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\t\1 => \1 v0.'"${K8S_VERSION#*.}"'#p' "$kmod")"
  [[ -n "$replaces" ]] || die "no staging modules found in $kmod"
  awk -v ver="$K8S_VERSION" -v rep="$replaces" \
    '{ gsub(/@K8S_VERSION@/, ver); if ($0 == "@REPLACES@") print rep; else print }' \
    "$HERE/go.mod.tmpl" >go.mod
  cp "$HERE/tools.go.tmpl" tools.go
  rm -f go.sum
  "$GO" mod tidy
  date="$(sed -n 's/.*"Time": *"\([^"]*\)".*/\1/p' "$info" 2>/dev/null || true)"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
    ldflags+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION") -X $pkg.gitTreeState=clean"
    ldflags+=" -X $pkg.buildDate=${date:-1970-01-01T00:00:00Z}"
  done
  for b in "${K8S_BINARIES[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  rm -rf "$BIN.tmp"
  mkdir -p "$BIN.tmp"
  "$GO" build -trimpath -tags=selinux,notest,providerless -ldflags="$ldflags" -o "$BIN.tmp/" "${pkgs[@]}"
  for b in "${K8S_BINARIES[@]}"; do mv -f "$BIN.tmp/$b" "$BIN/$b"; done
  rmdir "$BIN.tmp"
}
