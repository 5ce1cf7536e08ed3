# Shared settings of the local test cluster (sourced by build.sh, up.sh, down.sh, snapshot.sh).
# Everything the cluster writes lives under TW_CLUSTER_DIR, a fixed path outside any checkout, so
# that a cluster left behind by another clone (or a killed CI run) is found and cleaned up.
K8S_VERSION=${K8S_VERSION:-v1.34.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.6}
COREDNS_VERSION=${COREDNS_VERSION:-v1.12.4}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
export GOTOOLCHAIN=${GOTOOLCHAIN:-go1.26.10}

TW_CACHE=${TW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenwarden}
K8S_BIN=$TW_CACHE/k8s-$K8S_VERSION/bin
ETCD_BIN=$TW_CACHE/etcd-$ETCD_VERSION/bin
COREDNS_BIN=$TW_CACHE/coredns-$COREDNS_VERSION/bin
HELM_BIN=$TW_CACHE/helm-$HELM_VERSION/bin

TW_CLUSTER_DIR=${TW_CLUSTER_DIR:-/var/lib/tokenwarden-cluster}
KUBECONFIG_OUT=$TW_CLUSTER_DIR/kubeconfig

NODE_NAME=tw-node
BRIDGE=cni0
NODE_IP=10.244.0.1
POD_SUBNET=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/12
API_SERVICE_IP=10.96.0.1
DNS_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
PAUSE_IMAGE=registry.k8s.io/pause:3.10
COREDNS_IMAGE=registry.k8s.io/coredns/coredns:${COREDNS_VERSION}
# Sysctls the cluster changes (ip_forward itself; the rest the kubelet sets): recorded before the
# first start and restored on teardown.
SYSCTLS="net.ipv4.ip_forward kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables net.netfilter.nf_conntrack_max"

# phase NAME: prints how long the previous phase took, so a slow run shows where its time went.
_phase_name=""; _phase_start=0
phase() {
	local now; now=$(date +%s.%N)
	if [ -n "$_phase_name" ]; then
		printf '[%s] %-28s %6.1fs\n' "${0##*/}" "$_phase_name" "$(awk "BEGIN{print $now - $_phase_start}")"
	fi
	_phase_name=$1; _phase_start=$now
}
# foreign_pids: processes of a Kubernetes or containerd that this tool did not start (k3s, a
# kubeadm node, the system's containerd). cluster-up and cluster-down refuse to run beside them:
# teardown removes the pods' cgroups, /var/lib/kubelet and the KUBE-/CNI- iptables chains, which
# would be theirs too.
foreign_pids() {
	local p cmd
	# Live processes only: one of ours killed a moment ago may not be reaped yet (a zombie
	# has no command line to recognise it by).
	for p in $(ps -eo pid=,stat=,comm= 2>/dev/null | awk '$2 !~ /^Z/ && $3 ~ /^(containerd|kubelet|kube-proxy|kube-apiserver|k3s.*|etcd)$/ {print $1}'); do
		cmd=$(tr '\0' ' ' </proc/"$p"/cmdline 2>/dev/null) || continue
		[ -n "$cmd" ] || continue
		grep -qE -- "$TW_CLUSTER_DIR/|$TW_CACHE/" <<<"$cmd" || echo "$p"
	done
}
log() { printf '[%s] %s\n' "${0##*/}" "$*"; }
die() { printf '[%s] error: %s\n' "${0##*/}" "$*" >&2; exit 1; }
