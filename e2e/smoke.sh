#!/usr/bin/env bash
# Smoke test of the e2e control plane: builds it (scripts/setup-k8s.sh, cached), brings a cluster
# up in a temporary folder (e2e/cluster.sh), rolls out a 3-replica StatefulSet with a volume claim
# template on the KWOK nodes, checks that its PVCs bind and its pods spread over the 3 zones,
# restarts kube-apiserver and checks the objects survive, runs `kubectl version` and `helm version`,
# and always tears the cluster down. Exits non-zero on any failure, printing the component logs.
#   E2E_KEEP=1 e2e/smoke.sh   # keep the temporary folder (logs) after a successful run
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$SECONDS
bin=$(scripts/setup-k8s.sh)
echo "smoke: setup-k8s.sh took $((SECONDS - t0)) s"
export PATH="$bin:$PATH"

wd=$(mktemp -d "${TMPDIR:-/tmp}/rmq-e2e-smoke.XXXXXX")
ok=0
finish() {
  if [ "$ok" != 1 ]; then
    echo "smoke: FAILED; component logs follow (kept in $wd)" >&2
    if [ -f "$wd/kubeconfig" ]; then
      kubectl --kubeconfig "$wd/kubeconfig" get nodes,pods,pvc,pv -A -o wide >&2 2>&1 || true
      kubectl --kubeconfig "$wd/kubeconfig" get events -A >&2 2>&1 || true
    fi
    e2e/cluster.sh logs "$wd" >&2 || true
  fi
  e2e/cluster.sh down "$wd" || true
  if [ "$ok" = 1 ] && [ -z "${E2E_KEEP:-}" ]; then rm -rf "$wd"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM

t1=$SECONDS
export KUBECONFIG
KUBECONFIG=$(K8S_BIN="$bin" e2e/cluster.sh up "$wd")
echo "smoke: cluster up in $((SECONDS - t1)) s"

echo "smoke: kubectl version"
kubectl version 2>&1 | sed 's/^/  /'
server=$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')
client=$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')
[ "$server" = v1.37.2 ] && [ "$client" = v1.37.2 ] ||
  { echo "smoke: expected v1.37.2 client and server, got $client / $server" >&2; exit 1; }
echo "smoke: helm version"
HOME="$wd" helm version 2>&1 | sed 's/^/  /'

kubectl get nodes -L topology.kubernetes.io/zone | sed 's/^/  /'

t2=$SECONDS
kubectl apply -f - <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: smoke}
spec:
  clusterIP: None
  selector: {app: smoke}
  ports: [{name: p, port: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: smoke}
spec:
  serviceName: smoke
  replicas: 3
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: smoke}}
  template:
    metadata: {labels: {app: smoke}}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: topology.kubernetes.io/zone
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {matchLabels: {app: smoke}}
      containers:
      - name: main
        image: busybox
        command: [sleep, infinity]
        resources: {requests: {cpu: 100m, memory: 64Mi}}
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
EOF
kubectl rollout status statefulset/smoke --timeout=120s
deadline=$((SECONDS + 60))
until [ "$(kubectl get pvc -l app=smoke -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c '^Bound$')" = 3 ]; do
  [ $SECONDS -lt $deadline ] || { echo "smoke: PVCs not Bound after 60 s" >&2; exit 1; }
  sleep 0.5
done
echo "smoke: StatefulSet ready and 3 PVCs Bound in $((SECONDS - t2)) s"
kubectl get pods,pvc -o wide | sed 's/^/  /'
zones=$(kubectl get pods -l app=smoke -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u | wc -l)
[ "$zones" = 3 ] || { echo "smoke: pods are on $zones nodes, expected one per zone" >&2; exit 1; }

t3=$SECONDS
e2e/cluster.sh restart-apiserver "$wd"
kubectl rollout status statefulset/smoke --timeout=60s >/dev/null
[ "$(kubectl get pvc -l app=smoke --no-headers | grep -c Bound)" = 3 ]
echo "smoke: kube-apiserver restarted, StatefulSet still ready, in $((SECONDS - t3)) s"

echo "smoke: component RSS"
for c in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
  pid=$(cat "$wd/$c.pid")
  printf '  %-24s %6d MB\n' "$c" "$(($(awk '/^VmRSS/ {print $2}' "/proc/$pid/status") / 1024))"
done

ok=1
echo "smoke: PASS in $((SECONDS - t0)) s"
