#!/usr/bin/env bash
# Builds (or reuses) the test control plane binaries, and the node's kube-scheduler, kubelet and kube-proxy, from
# the Go modules pinned in this folder's go.mod.
# Binaries are cached by version under ${TOKENBRIDGE_CACHE:-~/.cache/tokenbridge}/k8s-<version>/bin, so a
# rerun with the same pins does nothing. Prints the bin directory on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s_version=$(awk '/^require k8s.io\/kubernetes /{print $3}' "$here/go.mod")
etcd_version=$(awk '/go.etcd.io\/etcd\/server\/v3 /{print $2; exit}' "$here/go.mod")
minor=$(echo "$k8s_version" | cut -d. -f2)
# The key covers every pin: a changed go.mod or go.sum means a new build.
key=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)
bin="${TOKENBRIDGE_CACHE:-$HOME/.cache/tokenbridge}/k8s-${k8s_version}-etcd-${etcd_version}-${key}/bin"
wanted=(kube-apiserver kube-controller-manager kubectl etcd kube-scheduler kubelet kube-proxy)

have_all() { for b in "${wanted[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
if have_all; then echo "$bin"; exit 0; fi

mkdir -p "$bin"
ver="k8s.io/component-base/version"
ldflags="-s -w -X $ver.gitVersion=$k8s_version -X $ver.gitMajor=1 -X $ver.gitMinor=$minor \
 -X $ver.gitTreeState=clean -X $ver.buildDate=1970-01-01T00:00:00Z \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
cd "$here"
echo ">> downloading Go modules for kubernetes $k8s_version and etcd $etcd_version" >&2
go mod download
build() { # name package
  [ -x "$bin/$1" ] && return 0
  echo ">> building $1 ($2); a cold build takes several minutes on 2 cores" >&2
  start=$(date +%s)
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin/$1.tmp" "$2"
  mv "$bin/$1.tmp" "$bin/$1"
  echo ">> built $1 in $(( $(date +%s) - start ))s" >&2
}
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kubectl k8s.io/kubernetes/cmd/kubectl
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubelet k8s.io/kubernetes/cmd/kubelet
build kube-proxy k8s.io/kubernetes/cmd/kube-proxy
echo "$bin"
