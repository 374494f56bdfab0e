# shellcheck shell=bash
# Sourced by hack/cluster (its settings: STATE, PKI, BIN, ...): up, down, purge, status and env.

bootstrap() {
  wait_for "node $NODE_NAME to register" 120 kc get node "$NODE_NAME" ||
    die "the kubelet did not register, see $LOGS/kubelet.log"
  kc label node "$NODE_NAME" "$NODE_LABEL" --overwrite >/dev/null
  wait_for "node $NODE_NAME to be Ready" 120 kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s ||
    die "node $NODE_NAME is not Ready, see $LOGS/kubelet.log"
  wait_for "the default ServiceAccount" 60 kc get serviceaccount default -n default ||
    die "no default ServiceAccount, see $LOGS/kube-controller-manager.log"
  wait_for "kube-proxy to program iptables" 60 kube_proxy_synced ||
    die "kube-proxy programmed no rules, see $LOGS/kube-proxy.log"
  forward_chain_first
  ensure_models
}

ensure_models() {
  local dir current
  [[ -d "$MODELS_DIR" ]] || die "models directory $MODELS_DIR does not exist (set WASINN_MODELS_DIR)"
  dir="$(cd "$MODELS_DIR" && pwd -P)"
  current="$(kc get pv wasinn-models -o jsonpath='{.spec.hostPath.path}' 2>/dev/null || true)"
  if [[ "$current" == "$dir" ]] && models_bound; then
    return 0
  elif [[ -n "$current" && "$current" != "$dir" ]]; then
    log "the models volume points at $current, not $dir: recreating it"
    kc delete pvc models -n default --ignore-not-found --wait=false >/dev/null
    kc delete pv wasinn-models --ignore-not-found --timeout=60s >/dev/null
  fi
  MODELS_DIR="$dir" render "$HERE/models.yaml.tmpl" | kc apply -f - >/dev/null
  wait_for "claim default/models to be Bound" 60 models_bound || die "claim default/models is not Bound"
}

models_bound() { [[ "$(kc get pvc models -n default -o 'jsonpath={.status.phase}' 2>/dev/null)" == Bound ]]; }

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do is_running "$c" || return 1; done
}

all_current() {
  local c
  for c in "${COMPONENTS[@]}"; do is_current "$c" || return 1; done
}

cmd_up() {
  local start=$SECONDS
  [[ $EUID -eq 0 ]] || die "hack/cluster needs root (containers, bridges, iptables)"
  mkdir -p "$STATE" "$RUN" "$LOGS"
  chmod 700 "$STATE"
  exec 9>"$STATE/lock"
  flock -w 1800 9 || die "another hack/cluster holds $STATE/lock"
  # Certificates and configuration files first (quick when nothing changed): a running
  # component whose files or command line changed is restarted below.
  if [[ -f "$PKI/ca.crt" ]]; then
    ensure_pki
    ensure_configs
  fi
  if all_current && curl -sf --cacert "$PKI/ca.crt" "$APISERVER_URL/readyz" >/dev/null 2>&1; then
    find_kubectl
    kc label node "$NODE_NAME" "$NODE_LABEL" --overwrite >/dev/null
    ensure_models
    log "cluster already running (KUBECONFIG=$KUBECONFIG_ADMIN)"
    return 0
  fi
  ensure_packages
  build_k8s
  build_coredns
  build_pause
  find_kubectl
  ensure_pki
  ensure_configs
  ensure_network
  start_etcd
  start_apiserver
  start_controllers
  start_dns
  start_containerd
  start_node
  bootstrap
  log "cluster up in $((SECONDS - start))s: Kubernetes v$K8S_VERSION, node $NODE_NAME, logs in $LOGS"
  log "use it with: export KUBECONFIG=$KUBECONFIG_ADMIN"
}

# Kill every task in containerd's k8s.io namespace and note the Pods' network namespaces.
stop_containers() {
  local ids id ns
  is_running containerd || return 0
  ids="$(ctr_ containers ls -q 2>/dev/null || true)"
  for id in $ids; do
    ns="$(ctr_ containers info "$id" 2>/dev/null |
      sed -n 's#.*"path": *"\(/var/run/netns/[^"]*\)".*#\1#p; s#.*"path": *"\(/run/netns/[^"]*\)".*#\1#p' | head -n1)"
    [[ -n "$ns" ]] && echo "$ns" >>"$RUN/netns.list"
  done
  for id in $ids; do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  for id in $ids; do
    wait_for "task $id to stop" 20 task_gone "$id" || true
    ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
  done
}

# containerd-shim processes of our containerd (identified by our socket path).
our_shims() {
  local p
  for p in /proc/[0-9]*; do
    [[ -r "$p/cmdline" ]] || continue
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "containerd-shim.* -address $RUN/containerd.sock"; then
      echo "${p#/proc/}"
    fi
  done
}

unmount_state() {
  local m
  # Deepest first: tmpfs of projected volumes, overlay rootfs, netns.
  awk -v s="$STATE/" 'index($2, s) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
}

# The kubelet puts every Pod process under the kubepods cgroups: kill what is left there (if
# containerd had died, its shims could not stop the containers), then remove the cgroups.
remove_pod_cgroups() {
  local d pid
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d "$d" ]] || continue
    while read -r pid; do
      log "killing leftover Pod process $pid"
      kill -KILL "$pid" 2>/dev/null || true
    done < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
  done
  sleep 0.2
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d "$d" ]] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

cmd_down() {
  local c pid i
  mkdir -p "$RUN" "$LOGS"
  exec 9>"$STATE/lock"
  flock -w 600 9 || die "another hack/cluster holds $STATE/lock"
  for c in kube-proxy kubelet coredns kube-scheduler kube-controller-manager; do stop_component "$c"; done
  stop_containers
  stop_component containerd
  for pid in $(our_shims); do
    log "stopping leftover containerd-shim (pid $pid)"
    stop_pid "$pid" containerd-shim
  done
  stop_component kube-apiserver
  stop_component etcd
  remove_pod_cgroups
  unmount_state
  cleanup_network
  # The kubelet's device-plugin socket ignores --root-dir.
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || true
  for i in "${COMPONENTS[@]}"; do rm -f "$(pidfile "$i")" "$(sigfile "$i")"; done
  log "cluster down (data kept in $STATE; \`hack/cluster purge\` deletes it)"
}

cmd_purge() {
  cmd_down
  unmount_state
  log "deleting $STATE"
  rm -rf "$STATE"
}

cmd_status() {
  local c pid ok=0
  echo "Kubernetes:  v$K8S_VERSION ($BIN)"
  echo "state dir:   $STATE"
  echo "logs:        $LOGS"
  echo "kubeconfig:  $KUBECONFIG_ADMIN"
  echo "apiserver:   $APISERVER_URL"
  echo "models:      $(cd "$MODELS_DIR" 2>/dev/null && pwd -P || echo "$MODELS_DIR (missing)")"
  for c in "${COMPONENTS[@]}"; do
    if pid="$(component_pid "$c")"; then
      printf '  %-24s running (pid %s)\n' "$c" "$pid"
    else
      printf '  %-24s stopped\n' "$c"
      ok=1
    fi
  done
  if ((ok == 0)) && curl -sf --cacert "$PKI/ca.crt" "$APISERVER_URL/readyz" >/dev/null 2>&1; then
    kc get nodes -o wide 2>/dev/null || ok=1
  else
    ok=1
  fi
  ((ok == 0)) && echo "cluster: running" || echo "cluster: not (fully) running"
  return "$ok"
}

cmd_env() {
  [[ -f "$KUBECONFIG_ADMIN" ]] || die "no cluster yet: run hack/cluster up"
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
}
