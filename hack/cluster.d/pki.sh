# shellcheck shell=bash
# Sourced by hack/cluster (its settings: STATE, PKI, BIN, ...): certificates, kubeconfigs and the components'
# configuration files in the state dir.

# new_ca NAME CN: a self-signed CA.
new_ca() {
  [[ -f "$PKI/$1.crt" && -f "$PKI/$1.key" ]] && return
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$PKI/$1.key" -out "$PKI/$1.crt" -days 3650 -sha256 \
    -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  chmod 600 "$PKI/$1.key"
}

# issue NAME SUBJECT EXTENSIONS [CA]: a key and a certificate signed by CA (default: ca).
issue() {
  local name="$1" subj="$2" ext="$3" ca="${4:-ca}"
  [[ -f "$PKI/$name.crt" && -f "$PKI/$name.key" ]] && return
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%b\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
  chmod 600 "$PKI/$name.key"
}

ensure_pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  [[ -f "$PKI/ca.crt" ]] || log "creating certificates in $PKI"
  new_ca ca wasinn-cluster-ca
  # The aggregation layer's request-header authentication has a CA of its own.
  new_ca front-proxy-ca wasinn-front-proxy-ca
  local client="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
  local server="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth"
  local both="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth"
  issue etcd-server "/CN=etcd-server" "$both\nsubjectAltName=IP:127.0.0.1,DNS:localhost"
  issue apiserver-etcd-client "/CN=kube-apiserver-etcd-client" "$client"
  # Pods reach the apiserver as kubernetes.default.svc / the Service IP, the host at the node IP.
  local sans="IP:127.0.0.1,IP:$KUBERNETES_SVC_IP,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  if [[ -f "$PKI/apiserver.crt" ]] && ! cert_has_sans "$PKI/apiserver.crt" "$sans"; then
    log "the apiserver certificate lacks some of $sans: issuing a new one"
    rm -f "$PKI/apiserver.crt" "$PKI/apiserver.key"
  fi
  issue apiserver "/CN=kube-apiserver" "$server\nsubjectAltName=$sans"
  issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  issue admin "/O=system:masters/CN=wasinn-admin" "$client"
  issue kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  issue kube-scheduler "/CN=system:kube-scheduler" "$client"
  issue kube-proxy "/CN=system:kube-proxy" "$client"
  issue coredns "/CN=system:coredns" "$client"
  issue kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  issue kubelet "/CN=$NODE_NAME" "$server\nsubjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
  issue front-proxy-client "/CN=front-proxy-client" "$client" front-proxy-ca
  if [[ ! -f "$PKI/sa.key" ]]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$PKI/sa.key" 2>/dev/null
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    chmod 600 "$PKI/sa.key"
  fi
}

# cert_has_sans CERT SANS: CERT names every entry of SANS (IP:a,DNS:b,... as in openssl's ext).
cert_has_sans() {
  local have want
  have="$(openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null | tail -n +2 |
    sed -e 's/IP Address:/IP:/g' -e 's/[[:space:]]//g' | tr ',' '\n')"
  for want in ${2//,/ }; do
    grep -qxF "$want" <<<"$have" || return 1
  done
}

# kubeconfig FILE USER CERTNAME: a kubeconfig with the certificates embedded.
kubeconfig() {
  local file="$1" user="$2" cert="$3"
  write_if_changed "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: wasinn
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: wasinn
  context:
    cluster: wasinn
    user: $user
    namespace: default
current-context: wasinn
EOF
  chmod 600 "$file"
}

ensure_configs() {
  mkdir -p "$STATE/cni/net.d" "$STATE/cni/ipam" "$STATE/pod-logs" "$STATE/kubelet" "$STATE/etcd"
  chmod 700 "$STATE/etcd"
  kubeconfig "$KUBECONFIG_ADMIN" wasinn-admin admin
  kubeconfig "$STATE/kube-controller-manager.kubeconfig" system:kube-controller-manager kube-controller-manager
  kubeconfig "$STATE/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler
  kubeconfig "$STATE/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
  kubeconfig "$STATE/coredns.kubeconfig" system:coredns coredns
  kubeconfig "$STATE/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet-client
  render "$HERE/containerd.toml.tmpl" | write_if_changed "$STATE/containerd.toml"
  render "$HERE/cni.conflist.tmpl" | write_if_changed "$STATE/cni/net.d/10-wasinn.conflist"
  render "$HERE/kubelet.yaml.tmpl" | write_if_changed "$STATE/kubelet.yaml"
  render "$HERE/kube-proxy.yaml.tmpl" | write_if_changed "$STATE/kube-proxy.yaml"
  render "$HERE/Corefile.tmpl" | write_if_changed "$STATE/Corefile"
  # Upstream resolver of Pods with dnsPolicy Default: none (Pods have no way out); cluster
  # names are CoreDNS's (clusterDNS in kubelet.yaml).
  printf '# wasinn dev cluster: no DNS for Pods\nsearch default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\n' |
    write_if_changed "$STATE/resolv.conf"
}
