#!/usr/bin/env bash
# Prints what a cluster could leave behind on this machine, one normalised line per item:
# processes of the cluster's binaries, mounts, network namespaces, interfaces, iptables chains
# and rules of both families, nftables tables, pod cgroups, sysctls and state directories.
# `make e2e-k8s` takes one before cluster-up and one after cluster-down and fails on any
# difference (it kills a cluster with kill -9 and brings one up over the wreck in between).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"
{
	# Live processes only: one killed a moment ago may not have been reaped yet.
	ps -eo stat=,comm=,args= 2>/dev/null | awk '$1 !~ /^Z/ && $2 ~ /^(containerd.*|kubelet|kube-.*|etcd|coredns|runc)$/ {
		$1 = ""; print "process" substr($0, 1, 130) }' 
	awk '{print "mount " $5}' /proc/self/mountinfo | grep -E " ($TW_CLUSTER_DIR|/var/lib/kubelet|/run/containerd|/run/netns|/var/run/netns)"
	ls /run/netns 2>/dev/null | sed 's/^/netns /'
	ip -o link show 2>/dev/null | awk -F': ' '{print "link " $2}' | cut -d@ -f1
	for fam in iptables ip6tables; do
		"$fam-save" 2>/dev/null | grep -vE '^#|^COMMIT' | sed -E 's/\[[0-9]+:[0-9]+\]//' | sed "s/^/$fam /"
	done
	command -v nft >/dev/null && nft list tables 2>/dev/null | sed 's/^/nft /'
	ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null | sed 's/^/cgroup /'
	for s in $SYSCTLS; do echo "sysctl $s=$(sysctl -n "$s" 2>/dev/null)"; done
	for d in "$TW_CLUSTER_DIR" /var/lib/kubelet /var/lib/cni /var/log/pods /run/containerd; do
		if [ -e "$d" ]; then echo "path $d"; fi
	done
	true
} | sort
