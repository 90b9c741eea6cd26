#!/usr/bin/env bash
# Builds the Kubernetes control plane the e2e tests run on loopback (there is no docker, kind or
# download site here: everything comes from Go modules through the module proxy):
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   etcd (go.etcd.io/etcd/server/v3 etcdmain), kwok (sigs.k8s.io/kwok), helm (helm.sh/helm/v3)
# into $HOME/.cache/rocketmq-k8s/k8s-<version>/bin (kept between runs; a warm machine passes
# through in well under a second), plus kwok-stages.yaml next to bin/ (KWOK's own Stage configs,
# so fake Pods become Running/Ready). Progress goes to stderr; the last line on stdout is the bin
# folder:  bin=$(scripts/setup-k8s.sh)
#
# Cold: about 10 minutes on 2 cores, 3 GB peak RSS, 4 GB Go build cache, 1 GB module cache.
set -euo pipefail
exec </dev/null

k8s_version="v1.37.2"     # k8s.io/kubernetes; its staging modules are published as v0.37.2
staging_version="v0.${k8s_version#v1.}"
etcd_version="v3.6.16"
kwok_version="v0.8.0"
helm_version="v3.22.0"

cache="${RMQ_CLIENT_CACHE:-$HOME/.cache/rocketmq-k8s}"
root="$cache/k8s-$k8s_version"
bin="$root/bin"
stages="$root/kwok-stages-$kwok_version.yaml"
mkdir -p "$bin"

export GOWORK=off GOFLAGS="${GOFLAGS:-} -buildvcs=false" CGO_ENABLED=0

log() { echo "setup-k8s: $*" >&2; }

# Tests may call this concurrently: one build at a time.
exec 9>"$cache/k8s-$k8s_version.lock"
flock 9

# Version stamps: a binary counts as installed only once its stamp names the wanted version
# (a bumped version above rebuilds just that tool).
installed() { [ -x "$bin/$1" ] && [ "$(cat "$bin/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" > "$bin/.$1.version"; }

# --- Kubernetes: a module of our own requiring k8s.io/kubernetes, with every staging module
# (which its go.mod replaces by ./staging/... paths that do not exist outside its repository)
# replaced by the published module of the matching v0.x version.
k8s_tools=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
need_k8s=0
for t in "${k8s_tools[@]}"; do installed "$t" "$k8s_version" || need_k8s=1; done
if [ "$need_k8s" = 1 ]; then
  start=$SECONDS
  src="$root/src-kubernetes"
  rm -rf "$src"
  mkdir -p "$src"
  cd "$src"
  log "building Kubernetes $k8s_version (about 8 minutes cold)"
  go mod init rocketmq-k8s.local/k8sbin >/dev/null 2>&1
  # k8s.io/kubernetes's own go.mod, as the module proxy serves it.
  modfile=$(go mod download -json "k8s.io/kubernetes@$k8s_version" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
  [ -f "$modfile" ] || { log "no go.mod for k8s.io/kubernetes@$k8s_version"; exit 1; }
  staging=$(awk '
    $1 == "replace" && $3 == "=>" && $4 ~ /^\.\/staging\// { print $2; next }
    $2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "$modfile" | sort -u)
  [ -n "$staging" ] || { log "found no staging modules in $modfile"; exit 1; }
  edits=(-require "k8s.io/kubernetes@$k8s_version")
  for m in $staging; do edits+=(-replace "$m=$m@$staging_version"); done
  go mod edit "${edits[@]}"
  log "replaced $(echo "$staging" | wc -l) staging modules with $staging_version"
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go mod tidy >&2
  # Without these the binaries report v0.0.0-master, which trips version checks (helm, kubectl).
  minor="${k8s_version#v1.}"
  minor="${minor%%.*}"
  ldflags="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  pkgs=()
  for t in "${k8s_tools[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$t"); done
  go build -trimpath -ldflags "$ldflags" -o "$bin/" "${pkgs[@]}" >&2
  for t in "${k8s_tools[@]}"; do stamp "$t" "$k8s_version"; done
  log "built Kubernetes in $((SECONDS - start)) s"
fi
for t in "${k8s_tools[@]}"; do log "$t $k8s_version in $bin/$t"; done

# --- etcd: a three-line main around etcdmain (etcd's own cmd module is not go-installable).
if ! installed etcd "$etcd_version"; then
  start=$SECONDS
  src="$root/src-etcd"
  rm -rf "$src"
  mkdir -p "$src"
  cd "$src"
  go mod init rocketmq-k8s.local/etcd >/dev/null 2>&1
  cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go get "go.etcd.io/etcd/server/v3@$etcd_version" >&2
  go mod tidy >&2
  go build -trimpath -ldflags "-s -w" -o "$bin/etcd" . >&2
  stamp etcd "$etcd_version"
  log "built etcd in $((SECONDS - start)) s"
fi
log "etcd $etcd_version in $bin/etcd"

# --- kwok and helm: plain go install.
if ! installed kwok "$kwok_version"; then
  GOBIN="$bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$kwok_version" >&2
  stamp kwok "$kwok_version"
fi
log "kwok $kwok_version in $bin/kwok"

if ! installed helm "$helm_version"; then
  GOBIN="$bin" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" \
    "helm.sh/helm/v3/cmd/helm@$helm_version" >&2
  stamp helm "$helm_version"
fi
log "helm $helm_version in $bin/helm"

# --- KWOK's Stage configs, from the kwok module: node initialize + heartbeat, and the fast pod
# lifecycle (ready, complete, delete), concatenated into one --config file.
if [ ! -s "$stages" ]; then
  kwokdir=$(go mod download -json "sigs.k8s.io/kwok@$kwok_version" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
  files=("$kwokdir/kustomize/stage/node/fast/node-initialize.yaml"
    "$kwokdir/kustomize/stage/node/heartbeat/node-heartbeat.yaml"
    "$kwokdir"/kustomize/stage/pod/fast/*.yaml)
  tmp="$stages.tmp.$$"
  : > "$tmp"
  for f in "${files[@]}"; do
    [ -f "$f" ] || { log "missing KWOK stage $f"; rm -f "$tmp"; exit 1; }
    { echo "---"; echo "# from sigs.k8s.io/kwok@$kwok_version/${f#"$kwokdir"/}"; cat "$f"; } >> "$tmp"
  done
  mv "$tmp" "$stages"
fi
ln -sfn "$(basename "$stages")" "$root/kwok-stages.yaml"
log "kwok stages in $root/kwok-stages.yaml"

echo "$bin"
