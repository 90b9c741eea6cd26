#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the e2e tests: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and KWOK (fake nodes; Pods go Running/Ready without
# pulling images), built by scripts/setup-k8s.sh. Everything lives under WORKDIR: certs, etcd data,
# logs, pid files and the admin kubeconfig.
#
#   e2e/cluster.sh up WORKDIR                 # start; prints WORKDIR/kubeconfig on stdout
#   e2e/cluster.sh env WORKDIR                # prints: export KUBECONFIG=...; export PATH=BIN:$PATH
#   e2e/cluster.sh restart-apiserver WORKDIR  # stops and restarts kube-apiserver only (etcd keeps state)
#   e2e/cluster.sh down WORKDIR               # stops what up started (safe to repeat)
#   e2e/cluster.sh logs WORKDIR               # tails every component log (for failure reports)
#
# `up` also creates 3 KWOK nodes (zone-a/b/c in topology.kubernetes.io/zone, 32 CPU / 128Gi /
# 110 pods each), a default StorageClass `standard` (kubernetes.io/no-provisioner, Immediate
# binding) and E2E_PVS (default 60) hostPath PersistentVolumes of 10Gi in it (reclaim policy
# Retain: a PV whose claim is deleted stays Released), so StatefulSet volume claims bind.
# K8S_BIN picks the binaries (default: scripts/setup-k8s.sh, instant when cached).
# Idle RSS is about 600 MB in all (apiserver ~290, controller-manager ~120, scheduler ~75,
# etcd ~60, kwok ~60).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
  exit 2
}

[ $# -eq 2 ] || usage
cmd="$1"
mkdir -p "$2"
wd="$(cd "$2" && pwd)"

# --- process helpers -----------------------------------------------------------------------------

# The pid in WORKDIR/NAME.pid if that process is still ours (alive, and its command line names
# WORKDIR, so a recycled pid is never touched).
live_pid() {
  local f="$wd/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$wd" || return 1
  echo "$pid"
}

# Running, not a zombie (a zombie's cmdline is empty; PID 1 may not reap in a container).
running() { [ -n "$({ tr -d '\0' < "/proc/$1/cmdline"; } 2>/dev/null)" ]; }

stop() {
  local name="$1" pid i
  if pid=$(live_pid "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      running "$pid" || break
      sleep 0.1
    done
    if running "$pid"; then
      log "$name ($pid) did not stop in 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$wd/$name.pid"
}

# start NAME ARGS...: runs BIN/NAME ARGS in the background, output appended to WORKDIR/NAME.log.
start() {
  local name="$1"
  shift
  echo "=== $(date -u +%FT%TZ) start $name" >> "$wd/$name.log"
  "$bin/$name" "$@" </dev/null >> "$wd/$name.log" 2>&1 &
  echo $! > "$wd/$name.pid"
}

alive_or_die() {
  local name="$1"
  live_pid "$name" >/dev/null && return 0
  log "$name exited; last lines of $wd/$name.log:"
  tail -n 40 "$wd/$name.log" >&2 || true
  exit 1
}

# A loopback port below the kernel's ephemeral range: a port from bind(":0") can be taken
# by an outgoing connection before the component that should listen on it starts.
free_port() {
  python3 - <<'PY'
import random, socket
lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
lo, hi = (10000, lo) if lo >= 12000 else (hi + 1, 65536)
for port in random.sample(range(lo, hi), 200):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free loopback port")
PY
}

kctl() { "$bin/kubectl" --kubeconfig "$wd/kubeconfig" "$@"; }

wait_ready() {
  local deadline=$((SECONDS + ${1:-90}))
  until kctl get --raw /readyz >/dev/null 2>&1; do
    alive_or_die kube-apiserver
    [ $SECONDS -lt $deadline ] || die "kube-apiserver not ready after ${1:-90} s (see $wd/kube-apiserver.log)"
    sleep 0.3
  done
}

load_state() {
  [ -f "$wd/cluster.env" ] || die "no cluster in $wd (run: $0 up $wd)"
  # shellcheck disable=SC1091
  . "$wd/cluster.env"
}

# --- components ----------------------------------------------------------------------------------

start_etcd() {
  start etcd --name e2e --data-dir "$wd/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "e2e=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync --quota-backend-bytes $((1 << 30)) --log-level warn
}

start_apiserver() {
  start kube-apiserver \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --endpoint-reconciler-type none \
    --cert-dir "$wd/pki" --tls-cert-file "$wd/pki/apiserver.crt" --tls-private-key-file "$wd/pki/apiserver.key" \
    --client-ca-file "$wd/pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$wd/pki/sa.pub" --service-account-signing-key-file "$wd/pki/sa.key" \
    --authorization-mode Node,RBAC \
    --service-cluster-ip-range 10.96.0.0/16 \
    --shutdown-send-retry-after=true \
    --allow-privileged=true --profiling=false --v=1
}

start_controller_manager() {
  start kube-controller-manager \
    --kubeconfig "$wd/kubeconfig" --leader-elect=false --secure-port 0 \
    --service-account-private-key-file "$wd/pki/sa.key" --root-ca-file "$wd/pki/ca.crt" \
    --cluster-signing-cert-file "$wd/pki/ca.crt" --cluster-signing-key-file "$wd/pki/ca.key" \
    --profiling=false --v=1
}

start_scheduler() {
  start kube-scheduler --kubeconfig "$wd/kubeconfig" --leader-elect=false --secure-port 0 \
    --profiling=false --v=1
}

start_kwok() {
  start kwok --kubeconfig "$wd/kubeconfig" --config "$stages" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --manage-nodes-with-label-selector= --cidr 10.244.0.1/16 --node-ip 10.255.0.1
}

# --- certificates --------------------------------------------------------------------------------

gen_certs() {
  local p="$wd/pki"
  mkdir -p "$p"
  (
    cd "$p"
    exec 2>openssl.log
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=e2e-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    leaf() { # leaf NAME SUBJECT EXTENSIONS
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
      printf '%s\n' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.crt"
    }
    leaf apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    leaf admin "/O=system:masters/CN=e2e-admin" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
  ) || { cat "$p/openssl.log" >&2; die "openssl failed"; }
}

write_kubeconfig() {
  local b64="base64 -w0"
  cat > "$wd/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $($b64 "$wd/pki/ca.crt")
users:
- name: e2e-admin
  user:
    client-certificate-data: $($b64 "$wd/pki/admin.crt")
    client-key-data: $($b64 "$wd/pki/admin.key")
contexts:
- name: e2e
  context: {cluster: e2e, user: e2e-admin}
current-context: e2e
EOF
  chmod 600 "$wd/kubeconfig"
}

# --- cluster objects -----------------------------------------------------------------------------

base_objects() {
  local z pvs="${E2E_PVS:-60}" i
  {
    for z in a b c; do
      cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$z
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-$z
    topology.kubernetes.io/zone: zone-$z
    topology.kubernetes.io/region: e2e
status:
  allocatable: {cpu: "32", memory: 128Gi, pods: "110", ephemeral-storage: 1Ti}
  capacity: {cpu: "32", memory: 128Gi, pods: "110", ephemeral-storage: 1Ti}
EOF
    done
    cat <<EOF
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
reclaimPolicy: Retain
EOF
    for i in $(seq -w 1 "$pvs"); do
      cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: e2e-pv-$i
  labels: {e2e/pv: "true"}
spec:
  storageClassName: standard
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: /tmp/e2e-pv-$i}
EOF
    done
  } | kctl apply -f - >/dev/null
}

# --- subcommands ---------------------------------------------------------------------------------

up() {
  local t0=$SECONDS name
  for name in "${components[@]}"; do
    live_pid "$name" >/dev/null && die "$name is already running for $wd (run: $0 down $wd)"
  done
  if [ -n "${K8S_BIN:-}" ]; then bin="$K8S_BIN"; else bin=$("$here/../scripts/setup-k8s.sh"); fi
  stages="$(dirname "$bin")/kwok-stages.yaml"
  for name in "${components[@]}" kubectl; do [ -x "$bin/$name" ] || die "no $bin/$name"; done
  [ -f "$stages" ] || die "no $stages"

  rm -rf "$wd/etcd" "$wd/pki" "$wd"/*.log
  etcd_port=$(free_port)
  etcd_peer_port=$(free_port)
  api_port=$(free_port)
  while [ "$etcd_peer_port" = "$etcd_port" ]; do etcd_peer_port=$(free_port); done
  while [ "$api_port" = "$etcd_port" ] || [ "$api_port" = "$etcd_peer_port" ]; do api_port=$(free_port); done
  cat > "$wd/cluster.env" <<EOF
bin=$bin
stages=$stages
etcd_port=$etcd_port
etcd_peer_port=$etcd_peer_port
api_port=$api_port
EOF
  gen_certs
  write_kubeconfig

  # From here on, a failure leaves nothing running (the logs stay in WORKDIR).
  up_ok=0
  trap '[ "$up_ok" = 1 ] || { log "up failed: stopping what started (logs in $wd)"; down; }' EXIT
  start_etcd
  start_apiserver
  wait_ready 90
  alive_or_die etcd
  log "kube-apiserver ready on https://127.0.0.1:$api_port after $((SECONDS - t0)) s"
  start_controller_manager
  start_scheduler
  start_kwok
  base_objects
  # Wait for the nodes to be Ready (kwok) and the service account machinery (controller-manager).
  local deadline=$((SECONDS + 60))
  until kctl wait --for=condition=Ready node --all --timeout=1s >/dev/null 2>&1; do
    alive_or_die kwok
    [ $SECONDS -lt $deadline ] || die "nodes not Ready after 60 s (see $wd/kwok.log)"
  done
  deadline=$((SECONDS + 60))
  until kctl -n default get serviceaccount default >/dev/null 2>&1; do
    alive_or_die kube-controller-manager
    [ $SECONDS -lt $deadline ] || die "no default service account after 60 s"
    sleep 0.3
  done
  for name in "${components[@]}"; do alive_or_die "$name"; done
  up_ok=1
  log "up in $((SECONDS - t0)) s: 3 kwok nodes, StorageClass standard, ${E2E_PVS:-60} PVs; KUBECONFIG=$wd/kubeconfig"
  echo "$wd/kubeconfig"
}

# term_wait NAME...: SIGTERM to those still running, then up to 10 s for them to exit, then SIGKILL.
term_wait() {
  local name pid pids=() i
  for name in "$@"; do
    if pid=$(live_pid "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for i in $(seq 1 100); do
    for pid in "${pids[@]}"; do running "$pid" && break; pid=; done
    [ -z "${pid:-}" ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    running "$pid" && { log "pid $pid did not stop in 10 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
  done
  for name in "$@"; do rm -f "$wd/$name.pid"; done
}

# Everything but etcd at once, then etcd: kube-apiserver drains its in-flight requests before it
# exits, which hangs (up to its 60 s request timeout) if etcd is already gone.
down() {
  term_wait kwok kube-scheduler kube-controller-manager kube-apiserver
  term_wait etcd
}

case "$cmd" in
up) up ;;
down)
  down
  log "down: $wd"
  ;;
env)
  load_state
  echo "export KUBECONFIG=$wd/kubeconfig"
  echo "export PATH=$bin:\$PATH"
  ;;
restart-apiserver)
  load_state
  t0=$SECONDS
  stop kube-apiserver
  start_apiserver
  wait_ready 90
  log "kube-apiserver restarted in $((SECONDS - t0)) s"
  ;;
logs)
  for f in "$wd"/*.log; do
    [ -f "$f" ] || continue
    echo "===== $f (last 60 lines)"
    tail -n 60 "$f"
  done
  ;;
*) usage ;;
esac
