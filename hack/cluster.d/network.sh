# shellcheck shell=bash
# Sourced by hack/cluster (its settings: STATE, PKI, BIN, ...): the Pods' bridge and the iptables chains that
# keep Pod traffic on it.

ensure_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE ($NODE_IP/${POD_CIDR#*/})"
    ip link add "$BRIDGE" type bridge
  fi
  # "replace" is idempotent: no EEXIST when an earlier run (or a crash) left the address on.
  ip addr replace "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE" ||
    die "cannot put $NODE_IP on $BRIDGE; addresses now: $(ip -4 -o addr show 2>&1 | tr '\n' ';')"
  ip link set "$BRIDGE" up
  # Forwarding only for packets that arrive on our bridge (Pod -> Service -> Pod).
  sysctl -qw "net.ipv4.conf.$BRIDGE.forwarding=1"
  # Service replies between Pods on one bridge must pass iptables (conntrack un-DNAT).
  [[ -f /proc/sys/net/bridge/bridge-nf-call-iptables ]] ||
    die "br_netfilter is not available in this kernel: Pod-to-Service traffic cannot work"
  [[ "$(</proc/sys/net/bridge/bridge-nf-call-iptables)" == 1 ]] || {
    echo 0 >"$RUN/bridge-nf-call-iptables.orig"
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
  }
  # Safety net: Pod traffic never leaves the bridge, and nothing else reaches the Pods.
  if ! iptables -w -L "$FWD_CHAIN" -n >/dev/null 2>&1; then
    iptables -w -N "$FWD_CHAIN"
    iptables -w -A "$FWD_CHAIN" -s "$POD_CIDR" ! -o "$BRIDGE" -j DROP
    iptables -w -A "$FWD_CHAIN" -d "$POD_CIDR" ! -i "$BRIDGE" -j DROP
  fi
  forward_chain_first
  # The node IP serves the apiserver and the kubelet: to the host itself (lo) and the Pods
  # (Pod -> Service IP -> DNAT -> node IP:port is INPUT here, not FORWARD), to nobody else,
  # whatever the host's INPUT policy and whatever routes others have to 10.201.0.1.
  local want
  want="$(printf '%s\n' "-N $IN_CHAIN" \
    "-A $IN_CHAIN -s $POD_CIDR -d $NODE_IP/32 -i $BRIDGE -p tcp -m tcp --dport $APISERVER_PORT -j ACCEPT" \
    "-A $IN_CHAIN -s $POD_CIDR -d $NODE_IP/32 -i $BRIDGE -p udp -m udp --dport 53 -j ACCEPT" \
    "-A $IN_CHAIN -s $POD_CIDR -d $NODE_IP/32 -i $BRIDGE -p tcp -m tcp --dport 53 -j ACCEPT" \
    "-A $IN_CHAIN -i lo -j RETURN" "-A $IN_CHAIN -i $BRIDGE -j RETURN" \
    "-A $IN_CHAIN -d $NODE_IP/32 -j DROP")"
  if [[ "$(iptables -w -S "$IN_CHAIN" 2>/dev/null)" != "$want" ]]; then
    iptables -w -N "$IN_CHAIN" 2>/dev/null || iptables -w -F "$IN_CHAIN"
    iptables -w -A "$IN_CHAIN" -s "$POD_CIDR" -d "$NODE_IP/32" -i "$BRIDGE" -p tcp -m tcp --dport "$APISERVER_PORT" -j ACCEPT
    iptables -w -A "$IN_CHAIN" -s "$POD_CIDR" -d "$NODE_IP/32" -i "$BRIDGE" -p udp -m udp --dport 53 -j ACCEPT
    iptables -w -A "$IN_CHAIN" -s "$POD_CIDR" -d "$NODE_IP/32" -i "$BRIDGE" -p tcp -m tcp --dport 53 -j ACCEPT
    iptables -w -A "$IN_CHAIN" -i lo -j RETURN
    iptables -w -A "$IN_CHAIN" -i "$BRIDGE" -j RETURN
    iptables -w -A "$IN_CHAIN" -d "$NODE_IP/32" -j DROP
  fi
  iptables -w -C INPUT -j "$IN_CHAIN" 2>/dev/null || iptables -w -I INPUT 1 -j "$IN_CHAIN"
}

# Keep our safety chain ahead of kube-proxy's FORWARD rules (which it inserts at the top).
forward_chain_first() {
  [[ "$(iptables -w -S FORWARD | sed -n 2p)" == "-A FORWARD -j $FWD_CHAIN" ]] && return
  while iptables -w -D FORWARD -j "$FWD_CHAIN" 2>/dev/null; do :; done
  iptables -w -I FORWARD 1 -j "$FWD_CHAIN"
}

kube_proxy_synced() { iptables -w -C FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD; }

# remove_kube_chains iptables|ip6tables: the KUBE-* chains that kube-proxy and the kubelet
# left (kube-proxy --cleanup leaves its canaries, KUBE-FIREWALL, KUBE-MARK-MASQ ...), and the
# rules of the built-in chains that jump to them.
remove_kube_chains() {
  local cmd="$1" table rule chain
  command -v "$cmd" >/dev/null 2>&1 || return 0
  for table in raw mangle nat filter; do
    "$cmd-save" -t "$table" >/dev/null 2>&1 || continue
    while read -r rule; do
      # iptables-save quotes its rules for a shell: word-split them the same way.
      eval "set -- ${rule/#-A/-D}"
      "$cmd" -w -t "$table" "$@" 2>/dev/null || true
    done < <("$cmd-save" -t "$table" | grep -E '^-A [A-Z]+ .*-j KUBE-' | grep -vE '^-A KUBE-')
    while read -r chain; do "$cmd" -w -t "$table" -F "$chain" 2>/dev/null || true; done \
      < <("$cmd-save" -t "$table" | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p')
    while read -r chain; do "$cmd" -w -t "$table" -X "$chain" 2>/dev/null || true; done \
      < <("$cmd-save" -t "$table" | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p')
  done
}

cleanup_network() {
  local ns
  # Network namespaces of Pod sandboxes (recorded while containerd still ran).
  if [[ -f "$RUN/netns.list" ]]; then
    while read -r ns; do
      [[ -n "$ns" && -e "$ns" ]] || continue
      umount "$ns" 2>/dev/null || true
      rm -f "$ns"
    done <"$RUN/netns.list"
    rm -f "$RUN/netns.list"
  fi
  rm -rf "$STATE/cni/ipam"
  if [[ -x "$BIN/kube-proxy" ]]; then
    "$BIN/kube-proxy" --cleanup >>"$LOGS/kube-proxy.log" 2>&1 || true
  fi
  remove_kube_chains iptables
  remove_kube_chains ip6tables
  while iptables -w -D FORWARD -j "$FWD_CHAIN" 2>/dev/null; do :; done
  iptables -w -F "$FWD_CHAIN" 2>/dev/null || true
  iptables -w -X "$FWD_CHAIN" 2>/dev/null || true
  while iptables -w -D INPUT -j "$IN_CHAIN" 2>/dev/null; do :; done
  iptables -w -F "$IN_CHAIN" 2>/dev/null || true
  iptables -w -X "$IN_CHAIN" 2>/dev/null || true
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "removing bridge $BRIDGE"
    ip link del "$BRIDGE"
  fi
  if [[ -f "$RUN/bridge-nf-call-iptables.orig" ]]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables="$(<"$RUN/bridge-nf-call-iptables.orig")" || true
    rm -f "$RUN/bridge-nf-call-iptables.orig"
  fi
}
