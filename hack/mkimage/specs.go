package main

import (
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The images mkimage builds, in the order it prints them.
const (
	imgTokenwarden = "tokenwarden"
	imgNATS        = "nats"
	imgPause       = "pause"
	imgTestapp     = "testapp"
	imgCoreDNS     = "coredns"
)

// defaultImages are built when -images is not given: each from a package
// of this module. coredns is built only on request, from a binary given
// with -coredns-bin (the local cluster's build.sh installs it).
var (
	defaultImages = []string{imgTokenwarden, imgNATS, imgPause, imgTestapp}
	allImages     = append(defaultImages[:len(defaultImages):len(defaultImages)], imgCoreDNS)
)

const corednsModule = "github.com/coredns/coredns"

// OCI annotation keys of the image labels.
const (
	labelTitle       = "org.opencontainers.image.title"
	labelDescription = "org.opencontainers.image.description"
	labelSource      = "org.opencontainers.image.source"
	labelVersion     = "org.opencontainers.image.version"
)

const (
	projectSource = "https://github.com/tokenwarden/tokenwarden"
	// pauseVersion names the pause image after the Kubernetes pause release
	// it stands in for.
	pauseVersion = "3.10"
	// pauseUID is the user registry.k8s.io/pause runs as.
	pauseUID = 65535
)

// specInput is what every image spec is made from.
type specInput struct {
	Ref      string // full reference (NormalizeRef)
	Version  string // the org.opencontainers.image.version label
	Binary   []byte
	CABundle []byte
	Platform v1.Platform
	Created  time.Time
}

func user(uid int) string { return strconv.Itoa(uid) + ":" + strconv.Itoa(uid) }

// tokenwardenSpec is the image of the Dockerfile: its final stage's
// instructions on gcr.io/distroless/static-debian12:nonroot.
func tokenwardenSpec(in specInput) Spec {
	return Spec{
		Ref: in.Ref, Platform: in.Platform, Created: in.Created,
		Layers: []Layer{
			baseLayer(in.CABundle),
			binaryLayer("/tokenwarden", in.Binary, "COPY --from=build /out/tokenwarden /tokenwarden"),
		},
		Config: v1.Config{
			User:         user(nonrootUID),
			Entrypoint:   []string{"/tokenwarden"},
			Cmd:          []string{"--help"},
			ExposedPorts: exposed(8080, 8181, 8443),
			Env:          nonrootEnv(),
			WorkingDir:   nonrootHome,
			Labels: map[string]string{
				labelTitle:       "tokenwarden",
				labelDescription: "OAuth2 issuer, local token-verifying sidecar and its Kubernetes injector",
				labelSource:      projectSource,
				labelVersion:     in.Version,
			},
		},
	}
}

// natsSpec is nats-server as the chart runs it: `command: [nats-server]`
// (found on PATH), as the non-root user of the chart's pod security
// context, with /var/run/nats, /etc/nats and /data mounted by the pod.
func natsSpec(in specInput) Spec {
	return Spec{
		Ref: in.Ref, Platform: in.Platform, Created: in.Created,
		Layers: []Layer{
			baseLayer(in.CABundle),
			binaryLayer("/usr/local/bin/nats-server", in.Binary,
				"go build github.com/nats-io/nats-server/v2@v"+strings.TrimPrefix(in.Version, "v")),
		},
		Config: v1.Config{
			User:         user(nonrootUID),
			Entrypoint:   []string{"/usr/local/bin/nats-server"},
			ExposedPorts: exposed(4222, 6222, 8222),
			Env:          nonrootEnv(),
			WorkingDir:   nonrootHome,
			Labels: map[string]string{
				labelTitle:       "nats-server",
				labelDescription: "NATS server built from the Go module proxy (tokenwarden end-to-end tests)",
				labelSource:      "https://github.com/nats-io/nats-server",
				labelVersion:     strings.TrimPrefix(in.Version, "v"),
			},
		},
	}
}

// pauseSpec is a stand-in for registry.k8s.io/pause: the sandbox
// container of every pod, /pause as user 65535.
func pauseSpec(in specInput) Spec {
	return Spec{
		Ref: in.Ref, Platform: in.Platform, Created: in.Created,
		Layers: []Layer{
			baseLayer(in.CABundle),
			binaryLayer("/pause", in.Binary, "go build ./hack/pause"),
		},
		Config: v1.Config{
			User:       user(pauseUID),
			Entrypoint: []string{"/pause"},
			Env:        []string{"PATH=" + defaultPath},
			Labels: map[string]string{
				labelTitle:       "tokenwarden-pause",
				labelDescription: "Pod sandbox (pause) container: waits for SIGTERM/SIGINT, reaps children",
				labelSource:      projectSource,
				labelVersion:     in.Version,
			},
		},
	}
}

// testappSpec is the application of the Kubernetes end-to-end test, which
// verifies every request with its pod's sidecar.
func testappSpec(in specInput) Spec {
	return Spec{
		Ref: in.Ref, Platform: in.Platform, Created: in.Created,
		Layers: []Layer{
			baseLayer(in.CABundle),
			binaryLayer("/testapp", in.Binary, "go build ./test/k8s/testapp"),
		},
		Config: v1.Config{
			User:         user(nonrootUID),
			Entrypoint:   []string{"/testapp"},
			ExposedPorts: exposed(8000),
			Env:          nonrootEnv(),
			WorkingDir:   nonrootHome,
			Labels: map[string]string{
				labelTitle:       "tokenwarden-testapp",
				labelDescription: "HTTP app behind the tokenwarden sidecar (end-to-end tests)",
				labelSource:      projectSource,
				labelVersion:     in.Version,
			},
		},
	}
}

// corednsSpec is the cluster DNS of the local test cluster: CoreDNS as its
// Deployment runs it (args only, as a non-root user allowed port 53 by the
// pod's net.ipv4.ip_unprivileged_port_start sysctl).
func corednsSpec(in specInput) Spec {
	return Spec{
		Ref: in.Ref, Platform: in.Platform, Created: in.Created,
		Layers: []Layer{
			baseLayer(in.CABundle),
			binaryLayer("/coredns", in.Binary, "go install "+corednsModule+"@"+in.Version),
		},
		Config: v1.Config{
			User:         user(nonrootUID),
			Entrypoint:   []string{"/coredns"},
			ExposedPorts: exposed(53),
			Env:          nonrootEnv(),
			WorkingDir:   nonrootHome,
			Labels: map[string]string{
				labelTitle:       "coredns",
				labelDescription: "CoreDNS built from the Go module proxy (tokenwarden's local test cluster)",
				labelSource:      "https://github.com/coredns/coredns",
				labelVersion:     in.Version,
			},
		},
	}
}

// specFor returns the spec builder of an image kind.
func specFor(kind string) func(specInput) Spec {
	switch kind {
	case imgTokenwarden:
		return tokenwardenSpec
	case imgNATS:
		return natsSpec
	case imgPause:
		return pauseSpec
	case imgTestapp:
		return testappSpec
	case imgCoreDNS:
		return corednsSpec
	}
	return nil
}
