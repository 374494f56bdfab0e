# shellcheck shell=bash
# Sourced by hack/cluster (its settings: STATE, PKI, BIN, ...): the components as processes (started
# detached, identified by PID and binary, restarted when their command line or files change),
# their command lines, and their start in order.

pidfile() { printf '%s/%s.pid' "$RUN" "$1"; }

component_binary() {
  case "$1" in
    etcd) echo "$ETCD" ;;
    containerd) echo "$CONTAINERD" ;;
    coredns) echo "$COREDNS" ;;
    *) echo "$BIN/$1" ;;
  esac
}

# component_pid NAME: print the PID of our running NAME (checked against its binary).
component_pid() {
  local f pid exe
  f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(<"$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  [[ "${exe% (deleted)}" == "$(component_binary "$1")" ]] || return 1
  echo "$pid"
}

is_running() { component_pid "$1" >/dev/null; }

sigfile() { printf '%s/%s.sig' "$RUN" "$1"; }

# component_sig BIN ARGS...: a digest of the command line and of the files it names (a path
# under the state dir, alone or after `=`), and of the state-dir files those name in turn
# (kube-proxy.yaml -> kube-proxy.kubeconfig): it changes whenever a restart is due.
component_sig() {
  local a f g
  {
    printf '%s\n' "$@"
    for a in "$@"; do
      f="${a#*=}"
      [[ "$f" == "$STATE"/* && -f "$f" ]] || continue
      sha256sum "$f"
      case "$f" in
        *.yaml | *.toml | */Corefile)
          while read -r g; do
            if [[ -f "$g" ]]; then sha256sum "$g"; fi
          done < <(grep -o "$STATE/[^\"' ]*" "$f" | sort -u || true)
          ;;
      esac
    done
  } | sha256sum | cut -d' ' -f1
}

# is_current NAME: NAME runs with the command line and configuration files it would get now.
is_current() {
  local ARGS=() sig
  is_running "$1" || return 1
  component_args "$1"
  sig="$(component_sig "$(component_binary "$1")" "${ARGS[@]}")"
  [[ "$(cat "$(sigfile "$1")" 2>/dev/null)" == "$sig" ]]
}

# start_component NAME: start NAME (command line from component_args) detached (own session),
# log to $LOGS/NAME.log. A running NAME whose command line or configuration files changed (or
# that an older hack/cluster started, which recorded no signature) is restarted.
start_component() {
  local name="$1" bin sig ARGS=()
  bin="$(component_binary "$name")"
  component_args "$name"
  sig="$(component_sig "$bin" "${ARGS[@]}")"
  if is_running "$name"; then
    [[ "$(cat "$(sigfile "$name")" 2>/dev/null)" == "$sig" ]] && return 0
    log "$name runs with another configuration: restarting it"
    stop_component "$name"
  fi
  log "starting $name"
  {
    echo "---- $(date -Is) starting: $bin ${ARGS[*]}"
  } >>"$LOGS/$name.log"
  # (9>&-: the daemons must not inherit our lock.)
  setsid "$bin" "${ARGS[@]}" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
  echo $! >"$(pidfile "$name")"
  echo "$sig" >"$(sigfile "$name")"
  sleep 0.2
  is_running "$name" || {
    tail -n 20 "$LOGS/$name.log" >&2
    die "$name exited at once, see $LOGS/$name.log"
  }
}

# stop_pid PID NAME: TERM, wait up to 10 s, then KILL.
stop_pid() {
  local pid="$1" name="$2" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  log "$name (pid $pid) ignored SIGTERM: killing"
  kill -KILL "$pid" 2>/dev/null || true
}

stop_component() {
  local pid
  if pid="$(component_pid "$1")"; then
    log "stopping $1 (pid $pid)"
    stop_pid "$pid" "$1"
  fi
  rm -f "$(pidfile "$1")" "$(sigfile "$1")"
}

# component_args NAME: the command line of NAME (after its binary), into the array ARGS.
component_args() {
  local kcfg="$STATE/kube-controller-manager.kubeconfig" scfg="$STATE/kube-scheduler.kubeconfig"
  case "$1" in
    etcd)
      ARGS=(
        --name wasinn --data-dir "$STATE/etcd"
        --listen-client-urls "https://127.0.0.1:$ETCD_PORT"
        --advertise-client-urls "https://127.0.0.1:$ETCD_PORT"
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT"
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT"
        --initial-cluster "wasinn=http://127.0.0.1:$ETCD_PEER_PORT"
        --listen-metrics-urls "http://127.0.0.1:$ETCD_METRICS_PORT"
        --cert-file "$PKI/etcd-server.crt" --key-file "$PKI/etcd-server.key"
        --client-cert-auth --trusted-ca-file "$PKI/ca.crt"
        --quota-backend-bytes 2147483648 --snapshot-count 10000
      )
      ;;
    kube-apiserver)
      # shellcheck disable=SC2054 # --authorization-mode=Node,RBAC is one argument
      ARGS=(
        --bind-address="$NODE_IP" --secure-port="$APISERVER_PORT"
        --advertise-address="$NODE_IP" --endpoint-reconciler-type=lease
        --etcd-servers="https://127.0.0.1:$ETCD_PORT" --etcd-cafile="$PKI/ca.crt"
        --etcd-certfile="$PKI/apiserver-etcd-client.crt" --etcd-keyfile="$PKI/apiserver-etcd-client.key"
        --client-ca-file="$PKI/ca.crt"
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key"
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt"
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key"
        --kubelet-certificate-authority="$PKI/ca.crt"
        --kubelet-preferred-address-types=InternalIP
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction
        --service-account-issuer=https://kubernetes.default.svc.cluster.local
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key"
        --requestheader-client-ca-file="$PKI/front-proxy-ca.crt"
        --requestheader-allowed-names=front-proxy-client
        --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group
        --requestheader-extra-headers-prefix=X-Remote-Extra-
        --proxy-client-cert-file="$PKI/front-proxy-client.crt"
        --proxy-client-key-file="$PKI/front-proxy-client.key"
        --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true --profiling=false
      )
      ;;
    kube-controller-manager)
      # WatchListClient=false: Debian's etcd 3.4.23 lacks RequestWatchProgress, so the apiserver
      # refuses watch-list streams and the controller-manager would log a fallback for each.
      ARGS=(
        --kubeconfig="$kcfg" --authentication-kubeconfig="$kcfg" --authorization-kubeconfig="$kcfg"
        --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --leader-elect=false
        --cluster-name=wasinn --cluster-signing-cert-file="$PKI/ca.crt"
        --cluster-signing-key-file="$PKI/ca.key" --root-ca-file="$PKI/ca.crt"
        --service-account-private-key-file="$PKI/sa.key" --use-service-account-credentials=true
        --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=false --profiling=false
        --feature-gates=WatchListClient=false
      )
      ;;
    kube-scheduler)
      ARGS=(
        --kubeconfig="$scfg" --authentication-kubeconfig="$scfg" --authorization-kubeconfig="$scfg"
        --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --leader-elect=false --profiling=false
      )
      ;;
    containerd)
      ARGS=(
        --config "$STATE/containerd.toml"
      )
      ;;
    kubelet)
      ARGS=(
        --config="$STATE/kubelet.yaml" --kubeconfig="$STATE/kubelet.kubeconfig"
        --root-dir="$STATE/kubelet" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
        --node-labels="$NODE_LABEL" --pod-infra-container-image="$PAUSE_IMAGE"
      )
      ;;
    kube-proxy)
      ARGS=(
        --config="$STATE/kube-proxy.yaml"
      )
      ;;
    coredns)
      ARGS=(
        -conf "$STATE/Corefile"
      )
      ;;
    *) die "unknown component $1" ;;
  esac
}

start_etcd() {
  start_component etcd
  wait_for "etcd" 60 curl -sf "http://127.0.0.1:$ETCD_METRICS_PORT/health" ||
    die "etcd is not healthy, see $LOGS/etcd.log"
}

start_apiserver() {
  start_component kube-apiserver
  wait_for "kube-apiserver" 120 curl -sf --cacert "$PKI/ca.crt" "$APISERVER_URL/readyz" ||
    die "kube-apiserver is not ready, see $LOGS/kube-apiserver.log"
}

start_controllers() {
  start_component kube-controller-manager
  start_component kube-scheduler
}

dns_answers() { busybox nslookup kubernetes.default.svc.cluster.local "$NODE_IP" >/dev/null 2>&1; }

start_dns() {
  kc apply -f "$HERE/coredns-rbac.yaml" >/dev/null
  start_component coredns
  wait_for "CoreDNS" 60 dns_answers || die "CoreDNS does not answer, see $LOGS/coredns.log"
}

start_containerd() {
  start_component containerd
  wait_for "containerd" 60 ctr_ version || die "containerd does not answer, see $LOGS/containerd.log"
  local archive
  archive="$(pause_archive)"
  if ! has_image "$PAUSE_IMAGE" || [[ "$(cat "$STATE/pause.imported" 2>/dev/null)" != "$archive" ]]; then
    log "importing $PAUSE_IMAGE into containerd"
    ctr_ images import "$archive" >&2
    has_image "$PAUSE_IMAGE" || die "the pause image did not import as $PAUSE_IMAGE"
    echo "$archive" >"$STATE/pause.imported"
  fi
}

start_node() {
  start_component kubelet
  start_component kube-proxy
}
