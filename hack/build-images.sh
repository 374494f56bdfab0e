#!/usr/bin/env bash
# hack/build-images.sh: build the container images of wasinn-operator.
#
#   hack/build-images.sh [NAME...]                build the images: proplet, operator,
#                                                 mosquitto (the chart's quick-start broker),
#                                                 all (= proplet operator; the default)
#   hack/build-images.sh wheels                   only the wheels (build/images/wheels)
#   hack/build-images.sh base                     only the local debian:bookworm base (buildah)
#   hack/build-images.sh save IMAGE FILE          write IMAGE to FILE as a docker archive (an
#                                                 OCI archive when FILE ends in .oci.tar), for
#                                                 `hack/cluster load-image FILE`
#
# Builder: `docker build` where a Docker engine answers (`docker info`), else buildah
# (`buildah bud --isolation oci --runtime runc`, as root; buildah, podman, runc and debootstrap
# are installed from Debian when missing). Nothing is pulled from a container registry by the
# buildah path: the debian:bookworm base is made locally with `debootstrap --variant=minbase`
# (cached as $WASINN_CACHE/images/bookworm-rootfs.tar) and tagged debian:bookworm, so the same
# Containerfiles build here and on any machine with Docker. The proplet and operator images are
# the targets `proplet` and `operator` of images/wasinn/Containerfile (`--target`), which share
# every layer but their last; mosquitto is images/mosquitto/Containerfile.
#
# Python packages never come from PyPI inside the build: the project's wheel and every
# dependency's wheel (CPython 3.11, manylinux) are made on the host into build/images/wheels
# and installed offline with `pip install --no-index`. A source change rebuilds only the
# project's wheel and the images' small top layer; a pyproject.toml change, the dependencies.
#
# Environment (all optional):
#   WASINN_PROPLET_IMAGE   proplet tag, default localhost/wasinn-proplet:dev
#   WASINN_OPERATOR_IMAGE  operator tag, default localhost/wasinn-operator:dev
#   WASINN_MOSQUITTO_IMAGE mosquitto tag, default localhost/wasinn-mosquitto:dev
#   WASMTIME_CLI           a wasmtime CLI binary built with wasi-nn, put into the proplet image
#                          as /usr/local/bin/wasmtime (give the image its own tag then)
#   WASINN_BASE_IMAGE      the FROM image, default debian:bookworm
#   WASINN_IMAGE_BUILDER   docker | buildah (default: docker if `docker info` works)
#   WASINN_FORCE_BUILD=1   run the builder even when the image is up to date
#   WASINN_CACHE           cache root, default ~/.cache/wasinn
#   CONTAINERS_CONF        podman/buildah config, default hack/containers.conf
#   PYTHON                 a python with pip for the wheels, default .venv/bin/python
#   DEBIAN_MIRROR          debootstrap's mirror, default http://deb.debian.org/debian
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BUILD="$REPO_ROOT/build/images"
WHEELS="$BUILD/wheels"
PROPLET_IMAGE="${WASINN_PROPLET_IMAGE:-localhost/wasinn-proplet:dev}"
OPERATOR_IMAGE="${WASINN_OPERATOR_IMAGE:-localhost/wasinn-operator:dev}"
MOSQUITTO_IMAGE="${WASINN_MOSQUITTO_IMAGE:-localhost/wasinn-mosquitto:dev}"
BASE_IMAGE="${WASINN_BASE_IMAGE:-debian:bookworm}"
ROOTFS_TAR="$CACHE/images/bookworm-rootfs.tar"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The images' Python: Debian bookworm's python3.
PY_VERSION="3.11"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO_ROOT/hack/containers.conf}"

# ------------------------------------------------------------------------------------ builder

BUILDER=""
pick_builder() {
  [[ -n "$BUILDER" ]] && return 0
  BUILDER="${WASINN_IMAGE_BUILDER:-}"
  if [[ -z "$BUILDER" ]]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
      BUILDER=docker
    else
      BUILDER=buildah
    fi
  fi
  case "$BUILDER" in
    docker) ;;
    buildah) ensure_tools ;;
    *) die "WASINN_IMAGE_BUILDER must be docker or buildah, not '$BUILDER'" ;;
  esac
  log "builder: $BUILDER"
}

# Debian packages the buildah path needs: tool name -> package.
ensure_tools() {
  local -A pkg_of=([buildah]=buildah [podman]=podman [runc]=runc [debootstrap]=debootstrap)
  local tool missing=()
  for tool in "${!pkg_of[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x "/usr/sbin/$tool" ]] || missing+=("${pkg_of[$tool]}")
  done
  if ((${#missing[@]})); then
    command -v apt-get >/dev/null 2>&1 ||
      die "no Docker engine and no apt-get to install ${missing[*]}: install them, or use Docker"
    apt_install "${missing[@]}"
  fi
  [[ "$(id -u)" == 0 ]] || die "the buildah path runs as root (debootstrap, runc); or use Docker"
}

# ------------------------------------------------------------------------------- base image

# The local debian:bookworm: debootstrap --variant=minbase, with the apt sources and cleanup of
# Docker's official image, imported into the podman/buildah storage under both names.
ensure_base() {
  case "$BASE_IMAGE" in
    debian:bookworm | docker.io/library/debian:bookworm) ;;
    *) return 0 ;; # another base: buildah pulls it if it is missing
  esac
  if podman image exists docker.io/library/debian:bookworm &&
    podman image exists localhost/debian:bookworm; then
    return 0
  fi
  if [[ ! -s "$ROOTFS_TAR" ]]; then
    local dir
    mkdir -p "$(dirname "$ROOTFS_TAR")"
    dir="$(mktemp -d "$(dirname "$ROOTFS_TAR")/rootfs.XXXXXX")"
    log "bootstrapping debian bookworm (minbase) from $DEBIAN_MIRROR (~1 min)"
    debootstrap --variant=minbase bookworm "$dir" "$DEBIAN_MIRROR" >"$dir.log" 2>&1 || {
      tail -n 20 "$dir.log" >&2
      rm -rf "$dir"
      die "debootstrap failed, see $dir.log"
    }
    rm -f "$dir/etc/apt/sources.list"
    install -m 0644 "$REPO_ROOT/images/base/debian.sources" "$dir/etc/apt/sources.list.d/debian.sources"
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb \
      "$dir"/var/log/* "$dir"/tmp/* "$dir"/var/tmp/*
    : >"$dir/etc/resolv.conf"
    : >"$dir/etc/hostname"
    tar --numeric-owner --xattrs --sort=name -C "$dir" -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$dir" "$dir.log"
  fi
  log "importing $ROOTFS_TAR as debian:bookworm"
  podman import --quiet --message "debootstrap --variant=minbase bookworm" \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$ROOTFS_TAR" docker.io/library/debian:bookworm >/dev/null
  podman tag docker.io/library/debian:bookworm localhost/debian:bookworm
}

# ----------------------------------------------------------------------------------- wheels

python_for_pip() {
  local py="${PYTHON:-}"
  [[ -n "$py" ]] || { [[ -x "$REPO_ROOT/.venv/bin/python" ]] && py="$REPO_ROOT/.venv/bin/python"; }
  [[ -n "$py" ]] || py=python3
  "$py" -m pip --version >/dev/null 2>&1 || die "$py has no pip (run \`make venv\` or set PYTHON)"
  printf '%s' "$py"
}

# build/images/wheels/: project/ holds the project's wheel (rebuilt when operator/,
# pyproject.toml or README.md change); deps/ every dependency's wheel for CPython 3.11 on
# manylinux and pip/ pip's own wheel (both re-downloaded when pyproject.toml changes).
build_wheels() {
  local py arch src_key deps_key
  py="$(python_for_pip)"
  arch="$(uname -m)"
  src_key="$(
    cd "$REPO_ROOT" &&
      find operator -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' ! -name '*.pyc' ! -name '*.so' -print0 |
      sort -z | xargs -0 sha256sum | cat - pyproject.toml setup.py README.md | sha256sum | cut -c1-16
  )"
  deps_key="$( (
    cat "$REPO_ROOT/pyproject.toml"
    echo "$arch $PY_VERSION"
  ) | sha256sum | cut -c1-16)"
  mkdir -p "$BUILD"
  if [[ ! -f "$BUILD/.deps-$deps_key" ]] || ! compgen -G "$WHEELS/pip/pip-*.whl" >/dev/null; then
    rm -rf "$WHEELS" "$BUILD"/.deps-* "$BUILD"/.src-*
  fi
  mkdir -p "$WHEELS/project" "$WHEELS/deps" "$WHEELS/pip"
  if [[ ! -f "$BUILD/.src-$src_key" ]]; then
    log "building the wasinn-operator wheel"
    rm -f "$WHEELS"/project/*.whl "$BUILD"/.src-*
    local epoch
    epoch="$(git -C "$REPO_ROOT" log -1 --format=%ct 2>/dev/null || echo 315532800)"
    SOURCE_DATE_EPOCH="$epoch" "$py" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS/project" \
      "$REPO_ROOT" >"$BUILD/wheel.log" 2>&1 || {
      cat "$BUILD/wheel.log" >&2
      die "pip wheel of the project failed"
    }
    touch "$BUILD/.src-$src_key"
  fi
  if [[ ! -f "$BUILD/.deps-$deps_key" ]]; then
    log "downloading dependency wheels (cp${PY_VERSION/./}, manylinux $arch)"
    local glibc platforms=()
    # pip does not widen --platform by itself: every manylinux tag bookworm's glibc 2.36 runs.
    for ((glibc = 36; glibc >= 5; glibc--)); do platforms+=(--platform "manylinux_2_${glibc}_$arch"); done
    platforms+=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch")
    platforms+=(--platform "manylinux1_$arch")
    # The dependencies as pyproject.toml names them: the project's own wheel carries a C
    # extension built here (tag linux_$arch), which pip would refuse for a manylinux target.
    "$py" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
      "$REPO_ROOT/pyproject.toml" >"$BUILD/requirements.txt"
    "$py" -m pip download --quiet --dest "$WHEELS/deps" --only-binary=:all: \
      "${platforms[@]}" --python-version "$PY_VERSION" \
      --implementation cp --abi "cp${PY_VERSION/./}" -r "$BUILD/requirements.txt" pip >&2 ||
      die "pip download failed (a dependency without a wheel for CPython $PY_VERSION?)"
    mv "$WHEELS"/deps/pip-*.whl "$WHEELS/pip/"
    touch "$BUILD/.deps-$deps_key"
  fi
}

# build/images/context/NAME: hard links to the wheels, and wasmtime-cli/ (empty, or the CLI).
make_context() {
  local name="$1" cli="${2:-}" ctx="$BUILD/context/$1" sub
  rm -rf "$ctx"
  mkdir -p "$ctx/wasmtime-cli"
  # The broker's image needs no Python.
  [[ "$name" == mosquitto ]] && printf '%s' "$ctx" && return 0
  for sub in pip:pip deps:wheels project:project; do
    cp -al "$WHEELS/${sub%%:*}" "$ctx/${sub#*:}" 2>/dev/null || cp -a "$WHEELS/${sub%%:*}" "$ctx/${sub#*:}"
  done
  if [[ -n "$cli" ]]; then
    [[ -x "$cli" ]] || die "WASMTIME_CLI=$cli is not an executable file"
    cp -p "$cli" "$ctx/wasmtime-cli/wasmtime"
  fi
  printf '%s' "$ctx"
}

# ------------------------------------------------------------------------------------ build

# A label on the image: the hash of its Containerfile, build context, build args and base
# image. When the tagged image carries the same one, nothing changed and the build is skipped
# (buildah's layer cache alone still spends ~15 s hashing the venv layers).
FINGERPRINT_LABEL="dev.wasinn.build-fingerprint"

engine() {
  if [[ "$BUILDER" == docker ]]; then docker "$@"; else podman "$@"; fi
}

fingerprint() {
  local containerfile="$1" ctx="$2" base_id
  shift 2
  base_id="$(engine image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)"
  {
    printf '%s\n' "$base_id" "$@"
    sha256sum "$containerfile"
    (cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum)
  } | sha256sum | cut -c1-32
}

build_image() {
  local name="$1" tag="$2" ctx containerfile target args=() start fp current
  ctx="$(make_context "$name" "$([[ "$name" == proplet ]] && printf '%s' "${WASMTIME_CLI:-}")")"
  containerfile="images/$name/Containerfile" target=""
  if [[ "$name" == proplet || "$name" == operator ]]; then
    containerfile="images/wasinn/Containerfile" target="$name" # one file, a target each
  fi
  args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  [[ -z "$target" ]] || args+=(--target "$target")
  if [[ "$name" == proplet && -n "${WASMTIME_CLI:-}" ]]; then
    args+=(--build-arg "WASMTIME_CLI=wasmtime-cli/wasmtime")
  fi
  fp="$(fingerprint "$REPO_ROOT/$containerfile" "$ctx" "${args[@]}")"
  current="$(engine image inspect --format "{{index .Config.Labels \"$FINGERPRINT_LABEL\"}}" \
    "$tag" 2>/dev/null || true)"
  if [[ "$current" == "$fp" && "${WASINN_FORCE_BUILD:-}" != 1 ]]; then
    log "$tag is up to date"
    return 0
  fi
  args+=(--label "$FINGERPRINT_LABEL=$fp" -f "$REPO_ROOT/$containerfile" -t "$tag")
  start=$SECONDS
  log "building $tag ($containerfile${target:+, target $target})"
  if [[ "$BUILDER" == docker ]]; then
    docker build "${args[@]}" "$ctx" >&2
  else
    buildah bud --isolation oci --runtime runc --network host --layers --pull=false --force-rm \
      "${args[@]}" "$ctx" >&2
  fi
  log "built $tag in $((SECONDS - start)) s"
}

save_image() {
  local image="$1" file="$2" format=docker-archive
  [[ "$file" == *.oci.tar ]] && format=oci-archive
  pick_builder
  mkdir -p "$(dirname "$file")"
  rm -f "$file"
  if [[ "$BUILDER" == docker ]]; then
    docker save -o "$file" "$image"
  else
    podman save --quiet --format "$format" -o "$file" "$image"
  fi
  log "saved $image to $file ($format)"
}

main() {
  local what="${1:-all}" name names=()
  case "$what" in
    -h | --help | help)
      usage
      return 0
      ;;
    save)
      [[ $# -eq 3 ]] || die "usage: hack/build-images.sh save IMAGE FILE"
      save_image "$2" "$3"
      return 0
      ;;
    wheels)
      mkdir -p "$BUILD"
      exec 9>"$BUILD/.lock"
      flock 9
      build_wheels
      return 0
      ;;
    base)
      pick_builder
      [[ "$BUILDER" == buildah ]] && ensure_base
      return 0
      ;;
  esac
  for name in "${@:-all}"; do
    case "$name" in
      all) names+=(proplet operator) ;;
      proplet | operator | mosquitto) names+=("$name") ;;
      *) die "unknown command '$name' (proplet, operator, mosquitto, all, wheels, base, save IMAGE FILE)" ;;
    esac
  done
  pick_builder
  # One build at a time per checkout: the wheels and contexts under build/images are shared.
  mkdir -p "$BUILD"
  exec 9>"$BUILD/.lock"
  flock 9
  [[ " ${names[*]} " == *" proplet "* || " ${names[*]} " == *" operator "* ]] && build_wheels
  if [[ "$BUILDER" == buildah ]]; then ensure_base; fi
  for name in "${names[@]}"; do
    case "$name" in
      proplet) build_image proplet "$PROPLET_IMAGE" ;;
      operator) build_image operator "$OPERATOR_IMAGE" ;;
      mosquitto) build_image mosquitto "$MOSQUITTO_IMAGE" ;;
    esac
  done
}

main "$@"
