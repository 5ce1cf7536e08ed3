#!/usr/bin/env bash
# Tears the local test cluster down and leaves the machine as it was before cluster-up: no
# process, mount, network namespace, interface, iptables chain, cgroup or sysctl change left.
# Safe to run at any time: on a machine with no cluster, on a healthy one, and on one where an
# earlier run was killed halfway (processes gone, state and mounts left behind). up.sh runs it
# first for that reason.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"
W=$TW_CLUSTER_DIR
if f=$(foreign_pids) && [ -n "$f" ]; then
	die "another Kubernetes or containerd runs here (PIDs $(echo $f)); not touching the machine's shared state"
fi

# 1. Workloads first, while the cluster still runs: the kubelet then removes the sandboxes, their
#    network namespaces and veths itself. Skipped when the API server is not answering.
phase "delete workloads"
kubectl=$K8S_BIN/kubectl
if [ -x "$kubectl" ] && [ -f "$W/kubeconfigs/super-admin.conf" ] && [ -f "$W/pids/kubelet.pid" ] &&
	kill -0 "$(cat "$W/pids/kubelet.pid")" 2>/dev/null &&
	timeout 5 "$kubectl" --kubeconfig "$W/kubeconfigs/super-admin.conf" get --raw /readyz >/dev/null 2>&1; then
	k="$kubectl --kubeconfig $W/kubeconfigs/super-admin.conf --request-timeout=20s"
	# Webhooks first: a webhook whose pod is gone would block every later deletion it matches.
	$k delete mutatingwebhookconfigurations,validatingwebhookconfigurations --all --wait=false >/dev/null 2>&1
	for ns in $($k get ns -o jsonpath='{.items[*].metadata.name}' 2>/dev/null); do
		case $ns in kube-system|kube-public|kube-node-lease|default) ;; *) $k delete ns "$ns" --wait=false >/dev/null 2>&1 ;; esac
	done
	$k delete deploy,ds,sts,rs,pods --all --all-namespaces --grace-period=1 --wait=false >/dev/null 2>&1
	for _ in $(seq 1 60); do
		# No pod left and no sandbox left in containerd: the kubelet has cleaned up.
		pods=$($k get pods -A --no-headers 2>/dev/null | wc -l)
		[ "$pods" -eq 0 ] && break
		sleep 1
	done
	sleep 2 # the kubelet tears the last sandboxes down after the pod objects are gone
fi

# 2. Processes: by PID file, then anything still running from this cluster's binaries or naming
#    its work directory (containerd shims among them).
phase "stop processes"
stop() { # stop SIGNAL PIDS...
	local sig=$1; shift
	[ $# -gt 0 ] && kill "-$sig" "$@" 2>/dev/null
}
ours() {
	# Every process started from the cache's binaries or whose command line names the work dir.
	# pgrep matches its own command line too, so leave out this shell and its children.
	pgrep -f -- "$W/|$TW_CACHE/(k8s|etcd|coredns)-[^/ ]+/bin/[a-z]" 2>/dev/null | grep -vx "$$" || true
}
# By command line, not by PID file: the PIDs of a run killed long ago may belong to others now.
stop TERM $(ours)
for _ in $(seq 1 20); do [ -z "$(ours)" ] && break; sleep 0.5; done
stop KILL $(ours)
# Wait until they are gone, not only signalled (a stopping containerd still holds its mounts).
for _ in $(seq 1 20); do [ -z "$(ours)" ] && break; sleep 0.25; done

# Container processes left by a killed containerd or shim: whatever runs in the pods' cgroups.
cg_procs() { find /sys/fs/cgroup/*/kubepods -name cgroup.procs 2>/dev/null | xargs -r cat 2>/dev/null | sort -u; }
for _ in 1 2 3 4 5; do
	p=$(cg_procs); [ -z "$p" ] && break
	stop KILL $p; sleep 0.5
done

# 3. Mounts: overlay rootfs, shm, volumes, network namespaces. Deepest first; lazily if busy.
phase "unmount"
mounts() {
	awk '{print $5}' /proc/self/mountinfo | grep -E "^($W|/var/lib/kubelet|/run/containerd|/run/netns/cni-|/var/run/netns/cni-)" | sort -r
}
for _ in 1 2 3; do
	m=$(mounts); [ -z "$m" ] && break
	for x in $m; do umount "$x" 2>/dev/null || umount -l "$x" 2>/dev/null; done
done
rm -f /run/netns/cni-* 2>/dev/null

# 4. Network: the bridge (veths go with their namespaces), iptables chains of both families.
phase "network"
for l in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
	ip link del "$l" 2>/dev/null # a pod's veth whose namespace outlived its pod
done
ip link del "$BRIDGE" 2>/dev/null
for fam in iptables ip6tables; do
	command -v "$fam-save" >/dev/null || continue
	rules=$("$fam-save" 2>/dev/null) || continue
	if grep -qE 'KUBE-|CNI-' <<<"$rules"; then
		# Drop our chains and every rule that jumps to them; everything else stays as it was.
		grep -vE 'KUBE-|CNI-' <<<"$rules" | "$fam-restore" || log "warning: $fam-restore failed"
	fi
done

# nftables tables that iptables made for the cluster and that were not there before it.
if [ -f "$W/nft.orig" ] && command -v nft >/dev/null; then
	nft list tables 2>/dev/null | while read -r _ fam name; do
		grep -qx "table $fam $name" "$W/nft.orig" || nft delete table "$fam" "$name" 2>/dev/null
	done
fi

# 5. cgroups of the pods, deepest first.
phase "cgroups"
for c in /sys/fs/cgroup/*/kubepods; do
	[ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
done

# 6. Sysctls back to what they were before the first cluster-up.
phase "sysctls"
if [ -f "$W/sysctl.orig" ]; then
	while read -r key val; do
		[ -n "$key" ] && sysctl -qw "$key=$val" >/dev/null 2>&1
	done <"$W/sysctl.orig"
fi

# 7. Files.
phase "files"
rm -rf /var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers /run/containerd 2>/dev/null
rm -rf "$W" 2>/dev/null || { sleep 1; rm -rf "$W"; }
phase done
leftover=$(ours; cg_procs; mounts)
[ -z "$leftover" ] || die "left behind: $leftover"
[ ! -e "$W" ] || die "could not remove $W"
log "cluster down"
