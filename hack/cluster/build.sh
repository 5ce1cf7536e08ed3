#!/usr/bin/env bash
# Builds the local test cluster's binaries from the Go module proxy, each set cached by version
# under $TW_CACHE: a second run builds nothing. Kubernetes (7 commands, one `go build` so shared
# packages compile once) and etcd come through the wrapper modules hack/k8s and hack/etcd;
# CoreDNS and helm install with plain `go install`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"

# built DIR NAMES...: true when every named binary is in DIR and the stamp says it is complete.
built() {
	local dir=$1; shift
	[ -f "$dir/.complete" ] || return 1
	for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
}

phase "kubernetes $K8S_VERSION"
k8s_cmds="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubeadm kubectl"
if built "$K8S_BIN" $k8s_cmds; then
	log "kubernetes $K8S_VERSION: cached in $K8S_BIN"
else
	rm -rf "$K8S_BIN"; mkdir -p "$K8S_BIN"
	minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
	ld="-s -w"
	# Without these the binaries report v0.0.0, and helm's and the API server's version checks fail.
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
	done
	pkgs=""; for c in $k8s_cmds; do pkgs="$pkgs k8s.io/kubernetes/cmd/$c"; done
	log "building kubernetes $K8S_VERSION (cold: about 7 minutes on 2 cores)"
	(cd "$here/../k8s" && CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$K8S_BIN/" $pkgs)
	touch "$K8S_BIN/.complete"
fi

phase "etcd $ETCD_VERSION"
if built "$ETCD_BIN" etcd; then
	log "etcd $ETCD_VERSION: cached"
else
	rm -rf "$ETCD_BIN"; mkdir -p "$ETCD_BIN"
	(cd "$here/../etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$ETCD_BIN/etcd" go.etcd.io/etcd/server/v3)
	touch "$ETCD_BIN/.complete"
fi

# go_install NAME DIR BINARY PKG@VERSION: `go install` into DIR unless it is cached there.
go_install() {
	local name=$1 dir=$2 bin=$3 pkg=$4
	phase "$name"
	if built "$dir" "$bin"; then
		log "$name: cached"
		return
	fi
	rm -rf "$dir"; mkdir -p "$dir"
	GOBIN=$dir CGO_ENABLED=0 GOFLAGS=-trimpath go install -ldflags "-s -w" "$pkg"
	touch "$dir/.complete"
}
go_install "coredns $COREDNS_VERSION" "$COREDNS_BIN" coredns "github.com/coredns/coredns@$COREDNS_VERSION"
go_install "helm $HELM_VERSION" "$HELM_BIN" helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
phase done
