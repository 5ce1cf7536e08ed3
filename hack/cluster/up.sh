#!/usr/bin/env bash
# Brings up a real single-node Kubernetes cluster on this machine from upstream parts: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy (iptables),
# containerd with runc, the CNI bridge, CoreDNS, a local StorageClass with PersistentVolumes.
# The settings are those a 2-core firecracker VM with cgroup v1 and no CAP_SYS_RESOURCE needs;
# docs/kubernetes.md "Try it on a local cluster" explains how to use it (make cluster-up).
#
# Needs root, the Debian packages of `make deps-k8s`, and the binaries of build.sh (run first).
# Images: the archives named in IMAGES (make images builds them) are imported into containerd;
# nothing is pulled. The kubeconfig is written to $KUBECONFIG_OUT.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"
W=$TW_CLUSTER_DIR
IMAGES=${IMAGES:-}
PVS=${PVS:-8}

[ "$(id -u)" -eq 0 ] || die "needs root (containerd, the kubelet and iptables)"
for b in containerd runc iptables conntrack nft; do command -v $b >/dev/null || die "$b missing: run make deps-k8s"; done
[ -x /usr/lib/cni/bridge ] || die "CNI plugins missing in /usr/lib/cni: run make deps-k8s"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubeadm kubectl; do
	[ -x "$K8S_BIN/$b" ] || die "$K8S_BIN/$b missing: run hack/cluster/build.sh"
done
export PATH=$K8S_BIN:$ETCD_BIN:$COREDNS_BIN:$PATH

if f=$(foreign_pids) && [ -n "$f" ]; then
	die "another Kubernetes or containerd runs here (PIDs $(echo $f)): stop it first; this cluster would take over its cgroups, iptables chains and /var/lib/kubelet"
fi

phase "clean up earlier runs"
# A cluster of an earlier run, whole or killed halfway, goes first.
"$here/down.sh" >/dev/null || die "could not clean up an earlier cluster: run hack/cluster/down.sh and read its output"

phase "host network and sysctls"
mkdir -p "$W"/{pids,logs,pki,kubeconfigs,etcd,containerd,cni/net.d,cni/ipam,pv,images}
: >"$W/sysctl.orig"
for s in $SYSCTLS; do v=$(sysctl -n "$s" 2>/dev/null) && echo "$s $v" >>"$W/sysctl.orig"; done
# iptables-nft makes nftables tables on first use; down.sh deletes the ones that were not here.
nft list tables >"$W/nft.orig" 2>/dev/null || :
sysctl -qw net.ipv4.ip_forward=1
# The node's address lives on the pods' bridge, so all cluster traffic stays on cni0.
ip link add "$BRIDGE" type bridge
ip addr add "$NODE_IP/24" dev "$BRIDGE"
ip link set "$BRIDGE" up

# start NAME CMD...: runs a daemon in its own session, logging to $W/logs/NAME.log.
start() {
	local name=$1; shift
	setsid "$@" >"$W/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$W/pids/$name.pid"
}
# wait_for WHAT SECONDS CMD...: retries CMD until it succeeds.
wait_for() {
	local what=$1 secs=$2; shift 2
	for _ in $(seq 1 $((secs * 4))); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.25
	done
	log "timed out waiting for $what; last lines of the logs:"
	tail -n 20 "$W"/logs/*.log >&2
	return 1
}

phase "containerd"
cat >"$W/containerd/config.toml" <<TOML
version = 2
root = "$W/containerd/root"
state = "$W/containerd/state"
[grpc]
  address = "$W/containerd/containerd.sock"
[ttrpc]
  address = "$W/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE in this VM: runc cannot raise oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state beside everything else, not in /run/containerd/runc.
        Root = "$W/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$W/cni/net.d"
TOML
cat >"$W/cni/net.d/10-tokenwarden.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "tw-pods",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "hairpinMode": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": "$W/cni/ipam", "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
start containerd containerd --config "$W/containerd/config.toml"
ctr() { command ctr --address "$W/containerd/containerd.sock" -n k8s.io "$@"; }
wait_for containerd 30 ctr version

phase "images"
for img in $IMAGES; do
	ctr images import --all-platforms "$img" >/dev/null || die "could not import $img"
done
# One listing, read whole: with pipefail, `ctr images ls | grep -q` fails whenever grep has
# its match and exits before ctr has written everything (ctr dies of SIGPIPE).
images=$(ctr images ls -q)
grep -v '^sha256:' <<<"$images" | sed 's/^/  image /'
grep -qx "$PAUSE_IMAGE" <<<"$images" || die "no pause image $PAUSE_IMAGE among IMAGES"

phase "certificates"
cat >"$W/kubeadm.yaml" <<YAML
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint: {advertiseAddress: $NODE_IP, bindPort: 6443}
nodeRegistration: {name: $NODE_NAME, criSocket: "unix://$W/containerd/containerd.sock"}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
# Set, or kubeadm asks the internet for the latest version.
kubernetesVersion: $K8S_VERSION
clusterName: tokenwarden-e2e
certificatesDir: $W/pki
controlPlaneEndpoint: "$NODE_IP:6443"
networking: {serviceSubnet: $SERVICE_CIDR, podSubnet: $CLUSTER_CIDR, dnsDomain: $CLUSTER_DOMAIN}
apiServer: {certSANs: [127.0.0.1, localhost, $NODE_IP, $API_SERVICE_IP]}
YAML
kubeadm init phase certs all --config "$W/kubeadm.yaml" >/dev/null
kubeadm init phase kubeconfig all --config "$W/kubeadm.yaml" --kubeconfig-dir "$W/kubeconfigs" >/dev/null
kubeadm kubeconfig user --config "$W/kubeadm.yaml" --client-name system:kube-proxy >"$W/kubeconfigs/kube-proxy.conf" 2>/dev/null
P=$W/pki

phase "etcd"
start etcd etcd --name tw --data-dir "$W/etcd" \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster tw=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
	--unsafe-no-fsync --snapshot-count 10000 --log-level warn
wait_for etcd 30 curl -sf http://127.0.0.1:2381/health

phase "kube-apiserver"
start kube-apiserver kube-apiserver --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port=6443 \
	--etcd-servers=http://127.0.0.1:2379 --service-cluster-ip-range="$SERVICE_CIDR" \
	--client-ca-file="$P/ca.crt" --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
	--kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
	--kubelet-preferred-address-types=InternalIP \
	--service-account-issuer=https://kubernetes.default.svc.$CLUSTER_DOMAIN \
	--service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
	--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true \
	--requestheader-client-ca-file="$P/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
	--requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
	--requestheader-extra-headers-prefix=X-Remote-Extra- \
	--proxy-client-cert-file="$P/front-proxy-client.crt" --proxy-client-key-file="$P/front-proxy-client.key" \
	--profiling=false --v=1
K="kubectl --kubeconfig $W/kubeconfigs/super-admin.conf"
wait_for kube-apiserver 90 $K get --raw /readyz
# admin.conf's group has no rights until it is bound (kubeadm init does this; we do not run it).
$K create clusterrolebinding kubeadm:cluster-admins --clusterrole=cluster-admin --group=kubeadm:cluster-admins >/dev/null
cp "$W/kubeconfigs/admin.conf" "$KUBECONFIG_OUT"
chmod 600 "$KUBECONFIG_OUT"
# The cluster's own kubectl and helm, for PATH (docs/kubernetes.md).
mkdir -p "$W/bin"
ln -sf "$K8S_BIN/kubectl" "$W/bin/kubectl"
[ -x "$HELM_BIN/helm" ] && ln -sf "$HELM_BIN/helm" "$W/bin/helm"

phase "controller-manager, scheduler"
start kube-controller-manager kube-controller-manager --kubeconfig="$W/kubeconfigs/controller-manager.conf" \
	--authentication-kubeconfig="$W/kubeconfigs/controller-manager.conf" --authorization-kubeconfig="$W/kubeconfigs/controller-manager.conf" \
	--bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
	--cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" --root-ca-file="$P/ca.crt" \
	--service-account-private-key-file="$P/sa.key" --service-cluster-ip-range="$SERVICE_CIDR" \
	--allocate-node-cidrs --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size=24 \
	--controllers='*,bootstrapsigner,tokencleaner' --v=1
start kube-scheduler kube-scheduler --kubeconfig="$W/kubeconfigs/scheduler.conf" \
	--authentication-kubeconfig="$W/kubeconfigs/scheduler.conf" --authorization-kubeconfig="$W/kubeconfigs/scheduler.conf" \
	--bind-address=127.0.0.1 --leader-elect=false --v=1

phase "kubelet"
: >"$W/resolv.conf" # pods get cluster DNS only: there is no upstream to forward to
cat >"$W/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$W/containerd/containerd.sock
failSwapOn: false
# No CAP_SYS_RESOURCE: the kubelet cannot lower its own oom_score_adj.
oomScoreAdj: 0
resolvConf: $W/resolv.conf
clusterDNS: [$DNS_IP]
clusterDomain: $CLUSTER_DOMAIN
# Small disks: evict only when really full, and keep the images loaded here (nothing can be pulled).
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
registerNode: true
rotateCertificates: false
maxPods: 110
YAML
start kubelet kubelet --config="$W/kubelet.yaml" --kubeconfig="$W/kubeconfigs/kubelet.conf" \
	--hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1

phase "kube-proxy"
cat >"$W/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $W/kubeconfigs/kube-proxy.conf}
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $CLUSTER_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
# Leave the host's conntrack limits and route_localnet alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
YAML
start kube-proxy kube-proxy --config="$W/kube-proxy.yaml" --v=1

phase "node ready"
wait_for "node $NODE_NAME Ready" 120 $K wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s

phase "coredns, storage"
$K apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  # No forward (there is no upstream) and no loop plugin.
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 5
        }
        cache 5
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        seccompProfile: {type: RuntimeDefault}
        # Port 53 without root or capabilities (a namespaced, safe sysctl).
        sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "0"}]
      containers:
        - name: coredns
          image: $COREDNS_IMAGE
          imagePullPolicy: Never
          args: [-conf, /etc/coredns/Corefile]
          ports:
            - {name: dns, containerPort: 53, protocol: UDP}
            - {name: dns-tcp, containerPort: 53, protocol: TCP}
          readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
          livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10}
          resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 128Mi}}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
---
# No provisioner: local PersistentVolumes under the work directory, bound when a pod is scheduled.
# (hostPath volumes would not get the fsGroup ownership that non-root pods need.)
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
YAML
for i in $(seq 0 $((PVS - 1))); do
	mkdir -p "$W/pv/pv$i"
	$K apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: tw-local-$i}
spec:
  capacity: {storage: 5Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  local: {path: $W/pv/pv$i}
  nodeAffinity:
    required:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}]}]
YAML
done
wait_for "CoreDNS ready" 120 $K -n kube-system wait --for=condition=Available deploy/coredns --timeout=1s
phase done
log "cluster up: export KUBECONFIG=$KUBECONFIG_OUT PATH=$W/bin:\$PATH"
