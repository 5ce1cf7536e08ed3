# tokenwarden — the two commands a newcomer needs are `make demo` and `make test`.

# Everything here builds and tests with Go 1.26.10: it has the standard library's security
# fixes that govulncheck (make lint) finds missing in earlier 1.26 releases. The go command
# fetches that toolchain through the module proxy on first use. The export is needed because
# a Go installation whose go.env says GOTOOLCHAIN=local ignores go.mod's toolchain line.
export GOTOOLCHAIN ?= go1.26.10
GO          ?= go
BIN         ?= bin/tokenwarden
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT      ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS     := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
GOLANGCI    := github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0
GOVULNCHECK := golang.org/x/vuln/cmd/govulncheck@v1.9.0
BENCHTIME   ?= 2s
HELM        ?= $(GO) run helm.sh/helm/v3/cmd/helm@v3.22.0
CHART       := charts/tokenwarden
IMAGE       ?= tokenwarden:$(VERSION)

.PHONY: all build deps demo test chart image images lint vet vuln bench soak chaos scale fuzz tidy clean \
	deps-k8s cluster-build cluster-up cluster-down e2e-k8s

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tokenwarden

## demo: run the whole system on this machine (embedded NATS, issuer, sidecar)
demo: build
	./$(BIN) dev

## deps: system packages the tests need (nginx and caddy for test/proxies, curl for the
## README walk-through in test/e2e, curl and openssl for the distribution-key rollover in
## test/rollover), installed from Debian when missing. The tests run their own nginx and
## caddy processes; on a machine with systemd, Debian also starts both as services on port 80.
deps:
	@{ command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; } && \
	  { command -v caddy >/dev/null 2>&1 || test -x /usr/bin/caddy; } && \
	  command -v curl >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends nginx caddy curl openssl ca-certificates; }

## test: everything CI runs: vet, then every test with the race detector
test: deps chart
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m ./...

## chart: helm lint and helm template of the chart for the defaults and every example values file
chart:
	$(HELM) lint --strict $(CHART)
	$(HELM) template tokenwarden $(CHART) --namespace tokenwarden >/dev/null
	@for f in $(CHART)/examples/*.yaml; do \
		echo "== $$f"; \
		$(HELM) lint --strict $(CHART) -f $$f || exit 1; \
		$(HELM) template tokenwarden $(CHART) --namespace tokenwarden -f $$f >/dev/null || exit 1; \
	done

## image: the tokenwarden image without a Docker engine: bin/images/tokenwarden.tar, an OCI archive
## (FROM scratch, reproducible) of $(BIN), named $(IMAGE); the Dockerfile builds the same image
## with Docker (a test compares them). Load it with: ctr -n k8s.io images import bin/images/tokenwarden.tar
image: build
	$(GO) run ./hack/mkimage -out bin/images -tag $(VERSION) -images tokenwarden -tokenwarden-bin $(BIN) -name tokenwarden=$(IMAGE)

## images: every image the local cluster runs, named as charts/tokenwarden/examples/local-cluster.yaml,
## test/k8s/testdata/app.yaml and hack/cluster/env.sh expect
images: build cluster-build
	@start=$$(date +%s); \
	$(GO) run ./hack/mkimage -out bin/images -tag local -images tokenwarden,nats,pause,testapp,coredns \
	  -tokenwarden-bin $(BIN) -coredns-bin $(COREDNS_BIN)/coredns \
	  -name pause=$(PAUSE_IMAGE) -name coredns=$(COREDNS_IMAGE) && \
	echo "make images took $$(( $$(date +%s) - start ))s"

## The local Kubernetes cluster (hack/cluster; docs/kubernetes.md "Try it on a local cluster").
## Needs root. Binaries are cached by version under ~/.cache/tokenwarden.
K8S_ENV        = hack/cluster/env.sh
COREDNS_BIN   := $(shell bash -c '. $(K8S_ENV) && echo $$COREDNS_BIN')
COREDNS_IMAGE := $(shell bash -c '. $(K8S_ENV) && echo $$COREDNS_IMAGE')
PAUSE_IMAGE   := $(shell bash -c '. $(K8S_ENV) && echo $$PAUSE_IMAGE')
CLUSTER_IMAGES = $(foreach i,tokenwarden nats pause testapp coredns,bin/images/$(i).tar)

## deps-k8s: containerd, runc, the CNI plugins, iptables (Debian), when missing
deps-k8s:
	@{ command -v containerd && command -v runc && test -x /usr/lib/cni/bridge && command -v iptables && \
	   command -v conntrack && command -v nft && command -v curl; } >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends \
	    containerd runc containernetworking-plugins iptables nftables conntrack ebtables ethtool socat kmod curl ca-certificates; }

## cluster-build: Kubernetes, etcd, CoreDNS and helm from the Go module proxy (cached by version)
cluster-build: deps-k8s
	bash hack/cluster/build.sh

## cluster-up / cluster-down: a real single-node cluster; kubeconfig /var/lib/tokenwarden-cluster/kubeconfig
cluster-up: deps-k8s images
	IMAGES="$(CLUSTER_IMAGES)" bash hack/cluster/up.sh

cluster-down:
	bash hack/cluster/down.sh

## e2e-k8s: cluster up (over the wreck of a killed one), test/k8s, cluster down, and a check that
## the machine is as it was
e2e-k8s: deps-k8s images
	IMAGES="$(CLUSTER_IMAGES)" bash hack/cluster/e2e.sh

lint: vet vuln
	$(GO) run $(GOLANGCI) run ./...

vet:
	$(GO) vet ./...

## vuln: govulncheck against the Go vulnerability database, built offline from the pinned
## golang.org/x/vulndb module by hack/vulndb.sh (once per version, under GOCACHE)
VULNDB_VERSION := v0.0.0-20261105234957-e22db6528018
VULNDB_DIR     ?= $(shell $(GO) env GOCACHE)/tokenwarden-vulndb/$(VULNDB_VERSION)
vuln:
	GO=$(GO) VULNDB_DIR=$(VULNDB_DIR) sh hack/vulndb.sh $(VULNDB_VERSION)
	$(GO) run $(GOVULNCHECK) -db file://$(VULNDB_DIR) ./...

## bench: Go benchmarks (figures are ratios against baselines measured in the same run),
## then the sidecar as a process under HTTP load (/verify against /healthz, RSS)
LOAD_DURATION ?= 10s
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./jwks/ ./issuer/... ./sidecar/
	$(GO) test -run '^$$' -bench 'Check|Apply|Verify|Memory' -benchmem -benchtime $(BENCHTIME) ./revocation/
	$(GO) test -run '^$$' -bench 'Replay' -benchtime 1x ./revocation/
	$(GO) run ./test/sidecarload -bin $(BIN) -c 32 -d $(LOAD_DURATION)
	$(GO) run ./test/propagation -n 1,100,1000 -events 20

## chaos: the fault suite (test/chaos) at full length: 3 NATS nodes, 2 issuers, 10 sidecars,
## load for CHAOS_DURATION after each fault, 100,000 live revocation events; prints the ledger.
## make test runs its short variant (with -race).
CHAOS_DURATION ?= 60s
chaos:
	CHAOS_DURATION=$(CHAOS_DURATION) $(GO) test -count=1 -timeout 60m -v -run '^TestChaos$$' ./test/chaos/

## soak: nats-server, issuer and sidecar as processes for SOAK_DURATION under a steady /verify
## load (SOAK_RATE/s) with revocations and key rotations; fails on a leak or a wrong answer
SOAK_DURATION ?= 5m
SOAK_RATE     ?= 1000
soak: build
	$(GO) run ./test/soak -bin $(BIN) -d $(SOAK_DURATION) -rate $(SOAK_RATE)

## scale: what N sidecars cost NATS (test/scale): per N in SCALE_N, a 3-node NATS JetStream cluster
## (R3, the chart's accounts and permissions) and an issuer as processes, N real sidecars in worker
## processes; cold start, NATS memory and CPU, consumers, revocation and rotation fan-out, kill -9
## and restart of a NATS node, missed events; then SCALE_RSS_SAMPLE real sidecar processes' memory.
## Bounded by SCALE_TIMEOUT; prints a table (docs/operations.md, "Sizing"). make test runs a light
## variant (4 sidecars, no herd) that checks the tool works end to end.
SCALE_N          ?= 1000,2500,5000
SCALE_RSS_SAMPLE ?= 20
SCALE_TIMEOUT    ?= 60m
scale: build
	$(GO) build -o bin/scale ./test/scale
	./bin/scale -bin $(BIN) -n $(SCALE_N) -rss-sample $(SCALE_RSS_SAMPLE) -timeout $(SCALE_TIMEOUT)

## fuzz: each fuzz target for a bounded time. Minimization is off: go test
## reports "context deadline exceeded" as a failure when -fuzztime ends while
## it is still shrinking a new input; a real failure is saved all the same.
FUZZTIME ?= 30s
FUZZFLAGS = -run '^$$' -fuzzminimizetime 0 -fuzztime $(FUZZTIME)
fuzz:
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzVerify$$' ./jwks/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzVerifyBundle$$' ./jwks/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzCacheLoadDisk$$' ./jwks/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzParseKeySet$$' ./jwks/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzVerifyDistributedBatch$$' ./jwks/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzVerifyRequest$$' ./sidecar/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzVerifyTarget$$' ./sidecar/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzIntrospect$$' ./sidecar/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzCheck$$' ./sidecar/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzVerifyEvent$$' ./revocation/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzParse$$' ./issuer/directory/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzVerifyPassword$$' ./issuer/directory/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzTokenEndpoint$$' ./issuer/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzRevokeEndpoint$$' ./issuer/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzAdminRevocation$$' ./issuer/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzAdminAuth$$' ./issuer/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzParseRefreshToken$$' ./issuer/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzDecodeKeyRing$$' ./issuer/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzUnseal$$' ./issuer/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzMutate$$' ./injector/
	$(GO) test $(FUZZFLAGS) -fuzz '^FuzzVerify$$' ./internal/edbatch/

tidy:
	$(GO) mod tidy

clean:
	rm -rf bin .tokenwarden-dev
