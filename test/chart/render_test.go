// Package chart tests the Helm chart in charts/tokenwarden: it renders the
// chart with the real helm (v3.22.0) for the defaults and every values file
// in charts/tokenwarden/examples, decodes every manifest strictly into the
// k8s.io/api types (an unknown field fails), checks what matters, and runs
// the real issuer and sidecar against a NATS server that has exactly the
// rendered permissions.
//
// helm is the command in $HELM (e.g. a prebuilt binary, as the Makefile
// passes it), else helm.sh/helm/v3/cmd/helm@v3.22.0 built once by go install
// into a temporary directory.
package chart

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "../../charts/tokenwarden"
	helmModule  = "helm.sh/helm/v3/cmd/helm@v3.22.0"
	releaseName = "tw"
	namespace   = "tokenwarden"
)

// helmArgv is the helm command; helmProblem says why there is none.
var helmArgv []string
var helmProblem string

// TestMain finds helm once: $HELM (split on spaces), else the pinned helm
// built with go install into a temporary directory (the module and build
// caches make that quick after the first time).
func TestMain(m *testing.M) {
	os.Exit(func() int {
		if h := strings.Fields(os.Getenv("HELM")); len(h) > 0 {
			helmArgv = h
			return m.Run()
		}
		if _, err := exec.LookPath("go"); err != nil {
			helmProblem = "no helm: set HELM to a helm v3.22 binary, or put the go command on PATH"
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "tokenwarden-helm-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer func() { _ = os.RemoveAll(dir) }()
		cmd := exec.Command("go", "install", helmModule)
		cmd.Env = append(os.Environ(), "GOBIN="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go install %s: %v\n%s", helmModule, err, out)
			return 1
		}
		helmArgv = []string{filepath.Join(dir, "helm")}
		return m.Run()
	}())
}

// helm returns the helm command, or skips the test saying why there is
// none (only when neither $HELM nor a go command is available).
func helm(t *testing.T) []string {
	t.Helper()
	if helmArgv == nil {
		t.Skip(helmProblem)
	}
	return helmArgv
}

// runHelm runs helm with args and returns stdout; err holds stderr.
func runHelm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	argv := append(append([]string{}, helm(t)...), args...)
	cmd := exec.Command(argv[0], argv[1:]...) // #nosec G204 -- the test's own helm command
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, errb.String())
	}
	return out.String(), nil
}

// valuesCase is a values file to render: "" is the chart's defaults.
type valuesCase struct {
	name string
	file string
}

func cases(t *testing.T) []valuesCase {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "examples", "*.yaml"))
	if err != nil || len(files) < 4 {
		t.Fatalf("want at least 4 example values files (minimal, external NATS, HA production, cert-manager), found %v (%v)", files, err)
	}
	out := []valuesCase{{name: "defaults"}}
	for _, f := range files {
		out = append(out, valuesCase{name: strings.TrimSuffix(filepath.Base(f), ".yaml"), file: f})
	}
	return out
}

func (c valuesCase) args() []string {
	if c.file == "" {
		return nil
	}
	return []string{"-f", c.file}
}

// values loads the case's effective values (defaults overlaid by the file)
// as plain data, for expectations.
func (c valuesCase) values(t *testing.T) map[string]any {
	t.Helper()
	load := func(f string) map[string]any {
		b, err := os.ReadFile(f) // #nosec G304 -- test files
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	v := load(filepath.Join(chartDir, "values.yaml"))
	if c.file != "" {
		merge(v, load(c.file))
	}
	return v
}

func merge(dst, src map[string]any) {
	for k, sv := range src {
		if sm, ok := sv.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = sv
	}
}

func get(v map[string]any, path string) any {
	var cur any = v
	for _, p := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

// manifests is a rendered chart, decoded.
type manifests struct {
	objects []any
	byKind  map[string][]any
}

func (m *manifests) get(kind, name string) any {
	for _, o := range m.byKind[kind] {
		if objectMeta(o).Name == name {
			return o
		}
	}
	return nil
}

// render runs helm template and decodes every document strictly.
func render(t *testing.T, args ...string) *manifests {
	t.Helper()
	out, err := runHelm(t, append([]string{"template", releaseName, chartDir, "--namespace", namespace}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return parseManifests(t, out)
}

// parseManifests decodes every document of helm's output strictly.
func parseManifests(t *testing.T, out string) *manifests {
	t.Helper()
	m := &manifests{byKind: map[string][]any{}}
	for i, doc := range strings.Split(out, "\n---") {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		j, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatalf("document %d is not YAML: %v\n%s", i, err, doc)
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(j, &tm); err != nil {
			t.Fatal(err)
		}
		obj, err := decodeStrict(tm, j)
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", tm.APIVersion, tm.Kind, err, doc)
		}
		meta := objectMeta(obj)
		if meta.Name == "" {
			t.Fatalf("%s without a name", tm.Kind)
		}
		if tm.Kind != "MutatingWebhookConfiguration" && meta.Namespace != namespace {
			t.Errorf("%s %s: namespace %q, want %q", tm.Kind, meta.Name, meta.Namespace, namespace)
		}
		if meta.Labels["app.kubernetes.io/instance"] != releaseName || meta.Labels["app.kubernetes.io/managed-by"] != "Helm" {
			t.Errorf("%s %s: missing standard labels: %v", tm.Kind, meta.Name, meta.Labels)
		}
		m.objects = append(m.objects, obj)
		m.byKind[tm.Kind] = append(m.byKind[tm.Kind], obj)
	}
	return m
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// decodeStrict decodes j into the typed object of its kind; unknown fields
// and unknown kinds are errors.
func decodeStrict(tm metav1.TypeMeta, j []byte) (any, error) {
	var obj any
	switch tm.APIVersion + "/" + tm.Kind {
	case "v1/Secret":
		obj = &corev1.Secret{}
	case "v1/Pod":
		obj = &corev1.Pod{}
	case "v1/ConfigMap":
		obj = &corev1.ConfigMap{}
	case "v1/Service":
		obj = &corev1.Service{}
	case "v1/ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "apps/v1/Deployment":
		obj = &appsv1.Deployment{}
	case "apps/v1/StatefulSet":
		obj = &appsv1.StatefulSet{}
	case "policy/v1/PodDisruptionBudget":
		obj = &policyv1.PodDisruptionBudget{}
	case "networking.k8s.io/v1/NetworkPolicy":
		obj = &networkingv1.NetworkPolicy{}
	case "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration":
		obj = &admissionregistrationv1.MutatingWebhookConfiguration{}
	case "cert-manager.io/v1/Certificate":
		obj = &certificate{}
	case "cert-manager.io/v1/Issuer":
		obj = &certIssuer{}
	case "monitoring.coreos.com/v1/ServiceMonitor":
		obj = &serviceMonitor{}
	default:
		return nil, fmt.Errorf("unexpected kind (the chart creates no RBAC and nothing else): %s %s", tm.APIVersion, tm.Kind)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return nil, err
	}
	return obj, nil
}

func objectMeta(o any) metav1.ObjectMeta {
	switch v := o.(type) {
	case *corev1.Secret:
		return v.ObjectMeta
	case *corev1.Pod:
		return v.ObjectMeta
	case *corev1.ConfigMap:
		return v.ObjectMeta
	case *corev1.Service:
		return v.ObjectMeta
	case *corev1.ServiceAccount:
		return v.ObjectMeta
	case *appsv1.Deployment:
		return v.ObjectMeta
	case *appsv1.StatefulSet:
		return v.ObjectMeta
	case *policyv1.PodDisruptionBudget:
		return v.ObjectMeta
	case *networkingv1.NetworkPolicy:
		return v.ObjectMeta
	case *admissionregistrationv1.MutatingWebhookConfiguration:
		return v.ObjectMeta
	case *certificate:
		return v.ObjectMeta
	case *certIssuer:
		return v.ObjectMeta
	case *serviceMonitor:
		return v.ObjectMeta
	}
	return metav1.ObjectMeta{}
}

// The cert-manager and Prometheus Operator kinds the chart renders, with the
// fields it uses (decoded strictly like the rest).
type certificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		IsCA        bool     `json:"isCA,omitempty"`
		CommonName  string   `json:"commonName,omitempty"`
		SecretName  string   `json:"secretName"`
		DNSNames    []string `json:"dnsNames,omitempty"`
		Duration    string   `json:"duration,omitempty"`
		RenewBefore string   `json:"renewBefore,omitempty"`
		Usages      []string `json:"usages,omitempty"`
		PrivateKey  struct {
			Algorithm      string `json:"algorithm"`
			Size           int    `json:"size"`
			RotationPolicy string `json:"rotationPolicy,omitempty"`
		} `json:"privateKey"`
		IssuerRef struct {
			Name  string `json:"name"`
			Kind  string `json:"kind"`
			Group string `json:"group,omitempty"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

type certIssuer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SelfSigned *struct{} `json:"selfSigned,omitempty"`
		CA         *struct {
			SecretName string `json:"secretName"`
		} `json:"ca,omitempty"`
	} `json:"spec"`
}

type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

func kinds(m *manifests) string {
	var ks []string
	for k, v := range m.byKind {
		ks = append(ks, fmt.Sprintf("%s=%d", k, len(v)))
	}
	sort.Strings(ks)
	return strings.Join(ks, " ")
}
