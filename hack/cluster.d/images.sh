# shellcheck shell=bash
# Sourced by hack/cluster (its settings: STATE, PKI, BIN, ...): images in the node's containerd: the pause image
# (built with gcc and umoci) and `load-image`.

ctr_() { "$CTR" --address "$RUN/containerd.sock" -n k8s.io "$@"; }

task_gone() { ! ctr_ tasks ls -q | grep -x "$1" >/dev/null; }

# (grep without -q reads to the end: no SIGPIPE for ctr under pipefail.)
has_image() { ctr_ images ls -q | grep -x "$1" >/dev/null; }

pause_archive() { printf '%s/pause-%s.oci.tar' "$IMAGES_DIR" "$(sha256sum "$REPO_ROOT/images/pause/pause.c" | cut -c1-12)"; }

build_pause() {
  local archive work
  archive="$(pause_archive)"
  [[ -f "$archive" ]] && return
  log "building the pause image $PAUSE_IMAGE"
  mkdir -p "$IMAGES_DIR"
  work="$(mktemp -d "$IMAGES_DIR/pause.XXXXXX")"
  gcc -static -Os -s -o "$work/pause" "$REPO_ROOT/images/pause/pause.c"
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:3.10"
  umoci insert --image "$work/oci:3.10" "$work/pause" /pause
  umoci config --image "$work/oci:3.10" --config.entrypoint /pause --config.user 65535:65535 \
    --os linux --architecture amd64
  umoci gc --layout "$work/oci"
  # Name the image fully for containerd's importer.
  sed -i "s#\"org.opencontainers.image.ref.name\":\"3.10\"#&,\"io.containerd.image.name\":\"$PAUSE_IMAGE\"#" "$work/oci/index.json"
  grep -q io.containerd.image.name "$work/oci/index.json" || die "could not name the pause image"
  tar -C "$work/oci" -cf "$archive.tmp" .
  mv -f "$archive.tmp" "$archive"
  rm -rf "$work"
}

# load-image NAME_OR_ARCHIVE
cmd_load_image() {
  local src="${1:-}" tmp="" before after id="" stamp=""
  [[ -n "$src" ]] || die "usage: hack/cluster load-image IMAGE_NAME|ARCHIVE_FILE"
  is_running containerd || die "the cluster is not up (hack/cluster up)"
  if [[ ! -f "$src" ]]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    if command -v podman >/dev/null 2>&1 && podman image exists "$src" 2>/dev/null; then
      # The same image (by ID) imported before under this name: nothing to do (~20 s saved).
      id="$(podman image inspect --format '{{.Id}}' "$src")"
      stamp="$STATE/loaded/$(printf '%s' "$src" | tr -c 'A-Za-z0-9._-' '_')"
      if [[ "$(cat "$stamp" 2>/dev/null)" == "$id" ]] && has_image "$src"; then
        log "$src ($id) is in containerd already"
        return 0
      fi
      log "exporting $src from podman storage"
      podman save --format docker-archive -o "$tmp/image.tar" "$src" >&2
    elif command -v buildah >/dev/null 2>&1 && buildah inspect --type image "$src" >/dev/null 2>&1; then
      log "exporting $src from buildah storage"
      buildah push --quiet "$src" "docker-archive:$tmp/image.tar:$(buildah inspect --type image --format '{{.FromImage}}' "$src")" >&2
    else
      die "$src is neither a file nor an image in the local podman/buildah storage"
    fi
    src="$tmp/image.tar"
  fi
  before="$(ctr_ images ls -q | sort)"
  ctr_ images import --all-platforms "$src" >&2
  after="$(ctr_ images ls -q | sort)"
  comm -13 <(echo "$before") <(echo "$after") | grep -v '^sha256:' || true
  if [[ -n "$id" ]]; then
    mkdir -p "$STATE/loaded"
    echo "$id" >"$stamp"
  else
    rm -rf "$STATE/loaded" # an archive may have replaced any name: trust no stamp
  fi
  log "imported into containerd (namespace k8s.io); use imagePullPolicy: Never"
}
