#!/usr/bin/env bash
# make e2e-k8s: the chart end to end on a real cluster, and the cluster's own hygiene.
#   1. clean up whatever an earlier run left, then snapshot the machine (snapshot.sh);
#   2. cluster up, then kill -9 every cluster process, as a CI timeout would, leaving its
#      mounts, bridge, iptables chains and state behind;
#   3. cluster up again over that wreck (up.sh must clean it up first);
#   4. go test ./test/k8s (the chart: install, token flow, rollouts, faults, reinstall, uninstall);
#   5. cluster down, snapshot again: any difference from step 1 fails the run.
# On a failure it prints the cluster's state and logs before tearing it down.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"
root=$(cd "$here/../.." && pwd)
W=$TW_CLUSTER_DIR
: "${IMAGES:?IMAGES must name the image archives to load}"
export IMAGES

diagnose() {
	log "diagnostics"
	local k="$K8S_BIN/kubectl --kubeconfig $KUBECONFIG_OUT --request-timeout=10s"
	$k get nodes,pods,pvc -A -o wide 2>&1 | sed 's/^/  /'
	$k get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 40 | sed 's/^/  /'
	for p in $($k get pods -A --no-headers 2>/dev/null | awk '{split($3, r, "/")} $4 != "Running" || r[1] != r[2] {print $1 "/" $2}'); do
		echo "  --- logs of $p"
		$k -n "${p%/*}" logs "${p#*/}" --all-containers --tail=30 2>&1 | sed 's/^/    /'
	done
	for f in "$W"/logs/*.log; do
		[ -f "$f" ] && { echo "  --- $f"; tail -n 15 "$f" | sed 's/^/    /'; }
	done
}

# Whatever fails from here on, the cluster does not outlive this script.
finish() {
	local rc=$?
	if [ $rc -ne 0 ] && [ -d "$W" ]; then
		diagnose || true
		"$here/down.sh" || true
	fi
	rm -f "${before:-}" "${after:-}"
	exit $rc
}
trap finish EXIT

phase "clean up, snapshot before"
"$here/down.sh"
before=$(mktemp); after=$(mktemp)
"$here/snapshot.sh" >"$before"

phase "cluster up"
"$here/up.sh"

phase "kill -9 the whole cluster"
pkill -9 -f -- "$W/|$TW_CACHE/(k8s|etcd|coredns)-[^/ ]+/bin/[a-z]" || true
sleep 1
ip link show "$BRIDGE" >/dev/null 2>&1 || die "the simulated crash left no bridge: nothing to clean up"
log "left behind: $(awk '{print $5}' /proc/self/mountinfo | grep -cE "^($W|/var/lib/kubelet|/run/netns)") mounts, $(iptables-save | grep -c KUBE-) iptables lines"

phase "cluster up over the wreck"
"$here/up.sh"

phase "go test ./test/k8s"
status=0
(cd "$root" && TW_E2E_KUBECONFIG=$KUBECONFIG_OUT TW_E2E_TOKENWARDEN=${TW_E2E_TOKENWARDEN:-$root/bin/tokenwarden} \
	PATH="$W/bin:$PATH" go test -count=1 -v -timeout 45m ./test/k8s/) || status=$?
[ $status -eq 0 ] || diagnose

phase "cluster down"
"$here/down.sh"

phase "snapshot after"
"$here/snapshot.sh" >"$after"
if ! diff -u "$before" "$after"; then
	die "cluster-down left the machine different from before cluster-up (diff above)"
fi
phase done
[ $status -eq 0 ] || die "go test ./test/k8s failed"
log "e2e-k8s passed"
