package injector_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/tokenwarden/tokenwarden/injector"
)

// testKey is a distribution public key, base64 of its 32 raw bytes.
const testKey = "EcNF7hbaFGWoTG3ZJArxrkTq23iRjHAqcZeNkHl/Zl8="

func testConfig(t testing.TB) *injector.Config {
	t.Helper()
	cfg := injector.DefaultConfig("ghcr.io/tokenwarden/tokenwarden:1.2.3")
	cfg.Namespace = "tokenwarden"
	cfg.Issuer = "https://auth.example.com"
	cfg.Audience = []string{"default-api"}
	cfg.NATS.URL = "nats://tokenwarden-nats.tokenwarden.svc:4222"
	cfg.DistributionPublicKeys = []string{testKey}
	if err := cfg.Load(); err != nil {
		t.Fatal(err)
	}
	return &cfg
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func readPod(t testing.TB, name string) []byte {
	t.Helper()
	y, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func review(uid, namespace string, pod []byte) []byte {
	r := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       k8stypes.UID("uid-" + uid),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: namespace,
			Operation: admissionv1.Create,
			Object:    runtime.RawExtension{Raw: pod},
		},
	}
	b, _ := json.Marshal(r)
	return b
}

// post sends body to /mutate and returns the HTTP status and the decoded
// response (nil unless 200).
func post(t *testing.T, h http.Handler, body []byte) (int, *admissionv1.AdmissionResponse, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return rec.Code, nil, rec.Body.String()
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("response is not an AdmissionReview: %v\n%s", err, rec.Body.String())
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil {
		t.Fatalf("response review: %s", rec.Body.String())
	}
	return rec.Code, out.Response, rec.Body.String()
}

func handler(cfg *injector.Config) http.Handler {
	return injector.NewHandler(func() *injector.Config { return cfg }, quiet())
}

// mutate runs pod through the webhook and returns the response and the
// pod with the patch applied (the pod itself when there is no patch).
func mutate(t *testing.T, cfg *injector.Config, namespace string, pod []byte) (*admissionv1.AdmissionResponse, []byte) {
	t.Helper()
	code, resp, body := post(t, handler(cfg), review("1", namespace, pod))
	if code != http.StatusOK {
		t.Fatalf("HTTP %d: %s", code, body)
	}
	if resp.UID != "uid-1" {
		t.Fatalf("response uid %q, want the request's", resp.UID)
	}
	if resp.Patch == nil {
		if resp.PatchType != nil {
			t.Fatal("patch type without a patch")
		}
		return resp, pod
	}
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v, want JSONPatch", resp.PatchType)
	}
	out, err := applyPatch(pod, resp.Patch)
	if err != nil {
		t.Fatalf("applying the patch: %v\npatch: %s", err, resp.Patch)
	}
	return resp, out
}

func decodePod(t *testing.T, j []byte) *corev1.Pod {
	t.Helper()
	var p corev1.Pod
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("pod: %v\n%s", err, j)
	}
	return &p
}

func samePod(t *testing.T, got []byte, wantFile string) {
	t.Helper()
	g, w := decodePod(t, got), decodePod(t, readPod(t, wantFile))
	if !equality.Semantic.DeepEqual(g, w) {
		gy, _ := yaml.Marshal(g)
		wy, _ := yaml.Marshal(w)
		t.Fatalf("patched pod differs from %s\n--- got\n%s\n--- want\n%s", wantFile, gy, wy)
	}
}

func TestInjectsAnnotatedPod(t *testing.T) {
	resp, out := mutate(t, testConfig(t), "shop", readPod(t, "pod.yaml"))
	if !resp.Allowed || resp.Patch == nil {
		t.Fatalf("want an allowed response with a patch, got %+v", resp)
	}
	samePod(t, out, "pod.injected.yaml")
}

func TestInjectionIsIdempotent(t *testing.T) {
	cfg := testConfig(t)
	_, once := mutate(t, cfg, "shop", readPod(t, "pod.yaml"))
	resp, twice := mutate(t, cfg, "shop", once)
	if !resp.Allowed || resp.Patch != nil {
		t.Fatalf("an injected pod was patched again: %s", resp.Patch)
	}
	samePod(t, twice, "pod.injected.yaml")

	// The container alone (say, added by hand) is enough to skip the pod,
	// and so is the status annotation alone.
	p := decodePod(t, once)
	delete(p.Annotations, injector.AnnotationStatus)
	b, _ := json.Marshal(p)
	if resp, _ := mutate(t, cfg, "shop", b); resp.Patch != nil {
		t.Fatal("a pod with the sidecar container was injected again")
	}
	p = decodePod(t, readPod(t, "pod.yaml"))
	p.Annotations[injector.AnnotationStatus] = injector.StatusInjected
	b, _ = json.Marshal(p)
	if resp, _ := mutate(t, cfg, "shop", b); resp.Patch != nil {
		t.Fatal("a pod marked injected was injected again")
	}
}

func TestAppendsToExistingInitContainersAndVolumes(t *testing.T) {
	cfg := testConfig(t)
	cfg.NATS.CredsSecret = injector.SecretKeyRef{Name: "tokenwarden-nats-sidecar", Key: "sidecar.creds"}
	cfg.NATS.URLSecret = injector.SecretKeyRef{Name: "tokenwarden-nats-sidecar", Key: "url"}
	cfg.RevocationMaxStaleness = 2 * time.Minute
	if err := cfg.Load(); err != nil {
		t.Fatal(err)
	}
	resp, out := mutate(t, cfg, "jobs", readPod(t, "pod-mesh.yaml"))
	if !resp.Allowed {
		t.Fatalf("denied: %v", resp.Result)
	}
	p := decodePod(t, out)
	if n := len(p.Spec.InitContainers); n != 2 || p.Spec.InitContainers[0].Name != "mesh-init" || p.Spec.InitContainers[1].Name != injector.ContainerName {
		t.Fatalf("init containers: %+v", p.Spec.InitContainers)
	}
	sc := p.Spec.InitContainers[1]
	if sc.Ports[0].ContainerPort != 9191 {
		t.Errorf("port %d, want the annotation's 9191", sc.Ports[0].ContainerPort)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range sc.Env {
		env[e.Name] = e
	}
	if got := env["TOKENWARDEN_REVOCATION_MAX_STALENESS"].Value; got != "2m0s" {
		t.Errorf("revocation staleness bound %q, want the configured 2m0s", got)
	}
	if env["TOKENWARDEN_AUDIENCE"].Value != "default-api" {
		t.Errorf("audience %q, want the configured default", env["TOKENWARDEN_AUDIENCE"].Value)
	}
	if env["TOKENWARDEN_LISTEN"].Value != ":9191" {
		t.Errorf("listen %q", env["TOKENWARDEN_LISTEN"].Value)
	}
	// HTTP took the default gRPC port: gRPC is off, as before gRPC existed.
	if e, ok := env["TOKENWARDEN_GRPC_ADDR"]; !ok || e.Value != "" {
		t.Errorf("gRPC address %q (set %v), want off", e.Value, ok)
	}
	if ref := env["TOKENWARDEN_NATS_URL"].ValueFrom; ref == nil || ref.SecretKeyRef == nil || ref.SecretKeyRef.Name != "tokenwarden-nats-sidecar" || ref.SecretKeyRef.Key != "url" || env["TOKENWARDEN_NATS_URL"].Value != "" {
		t.Errorf("NATS URL should come from the Secret: %+v", env["TOKENWARDEN_NATS_URL"])
	}
	if env["TOKENWARDEN_NATS_CREDS"].Value != injector.CredsDir+"/nats.creds" {
		t.Errorf("creds %+v", env["TOKENWARDEN_NATS_CREDS"])
	}
	names := []string{}
	for _, v := range p.Spec.Volumes {
		names = append(names, v.Name)
	}
	if strings.Join(names, ",") != "scratch,"+injector.CacheVolume+","+injector.CredsVolume {
		t.Errorf("volumes %v", names)
	}
	creds := p.Spec.Volumes[2].Secret
	if creds == nil || creds.SecretName != "tokenwarden-nats-sidecar" || creds.Items[0].Key != "sidecar.creds" || creds.Items[0].Path != "nats.creds" {
		t.Errorf("creds volume %+v", p.Spec.Volumes[2])
	}
	if p.Labels[injector.LabelSidecar] != injector.StatusInjected || p.Annotations[injector.AnnotationStatus] != injector.StatusInjected {
		t.Errorf("labels %v annotations %v", p.Labels, p.Annotations)
	}
	if len(p.Spec.Containers[0].VolumeMounts) != 1 {
		t.Error("the app container was changed")
	}
}

func TestLeavesOtherPodsAlone(t *testing.T) {
	cfg := testConfig(t)
	plain := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"shop"},"spec":{"containers":[{"name":"a","image":"x"}]}}`)
	optedOut := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{"tokenwarden.io/inject":"false"}},"spec":{"containers":[{"name":"a","image":"x"}]}}`)
	for name, tc := range map[string]struct {
		ns  string
		pod []byte
	}{
		"not annotated":           {"shop", plain},
		"annotated false":         {"shop", optedOut},
		"the injector's own ns":   {"tokenwarden", readPod(t, "pod.yaml")},
		"annotated, own ns again": {cfg.Namespace, readPod(t, "pod-mesh.yaml")},
	} {
		t.Run(name, func(t *testing.T) {
			resp, out := mutate(t, cfg, tc.ns, tc.pod)
			if !resp.Allowed || resp.Patch != nil || resp.Result != nil {
				t.Fatalf("want allowed without a patch, got %+v", resp)
			}
			if !bytes.Equal(out, tc.pod) {
				t.Fatal("pod changed")
			}
		})
	}
}

func TestIgnoresWhatIsNotAPodCreation(t *testing.T) {
	h := handler(testConfig(t))
	for name, edit := range map[string]func(*admissionv1.AdmissionRequest){
		"update": func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update },
		"deployment": func(r *admissionv1.AdmissionRequest) {
			r.Kind = metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
		},
		"subresource": func(r *admissionv1.AdmissionRequest) { r.SubResource = "ephemeralcontainers" },
	} {
		t.Run(name, func(t *testing.T) {
			var r admissionv1.AdmissionReview
			_ = json.Unmarshal(review("1", "shop", readPod(t, "pod.yaml")), &r)
			edit(r.Request)
			b, _ := json.Marshal(r)
			code, resp, body := post(t, h, b)
			if code != http.StatusOK || !resp.Allowed || resp.Patch != nil || resp.UID != "uid-1" {
				t.Fatalf("HTTP %d %s", code, body)
			}
		})
	}
}

// Reviews that are not what the API server sends get HTTP 400 (or 405,
// 413, 415) with a message, never a panic; the API server then applies
// the webhook's failurePolicy.
func TestMalformedReviewsGetHTTPErrors(t *testing.T) {
	h := handler(testConfig(t))
	big := append([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","object":"`), bytes.Repeat([]byte("a"), 9<<20)...)
	for name, tc := range map[string]struct {
		body string
		code int
		msg  string
	}{
		"not JSON":        {`{"apiVersion":`, 400, "malformed AdmissionReview"},
		"JSON array":      {`[1,2]`, 400, "malformed AdmissionReview"},
		"empty":           {``, 400, "malformed AdmissionReview"},
		"v1beta1":         {`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"1"}}`, 400, "want apiVersion admission.k8s.io/v1"},
		"wrong kind":      {`{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{"uid":"1"}}`, 400, "kind AdmissionReview"},
		"no request":      {`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, 400, "without a request"},
		"null request":    {`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}`, 400, "without a request"},
		"no uid":          {`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"version":"v1","kind":"Pod"}}}`, 400, "without a uid"},
		"request of type": {`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":"x"}`, 400, "malformed"},
		"too large":       {string(big), 413, "larger than"},
	} {
		t.Run(name, func(t *testing.T) {
			code, _, body := post(t, h, []byte(tc.body))
			if code != tc.code || !strings.Contains(body, tc.msg) {
				t.Fatalf("HTTP %d %q, want %d containing %q", code, body, tc.code, tc.msg)
			}
		})
	}

	req := httptest.NewRequest(http.MethodPost, "/mutate", strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "text/plain")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain: HTTP %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/mutate", nil))
	if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "POST" {
		t.Errorf("GET /mutate: HTTP %d", rec.Code)
	}
}

// A well-formed review whose pod cannot be used is answered with a denial
// that carries the request's uid and says why.
func TestUnusablePodsAreDeniedWithAReason(t *testing.T) {
	noAudience := testConfig(t)
	noAudience.Audience = nil
	noKeys := testConfig(t)
	noKeys.DistributionPublicKeys = nil
	if err := noKeys.Load(); err != nil {
		t.Fatal(err)
	}
	pod := func(annotations string, spec string) []byte {
		return []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{"tokenwarden.io/inject":"true"` + annotations + `}},"spec":` + spec + `}`)
	}
	simple := `{"containers":[{"name":"a","image":"x","ports":[{"containerPort":8080}]}]}`
	for name, tc := range map[string]struct {
		cfg  *injector.Config
		pod  []byte
		code int32
		msg  string
	}{
		"pod is a string":     {testConfig(t), []byte(`"pod"`), 400, "cannot decode the pod"},
		"spec is a number":    {testConfig(t), pod("", `5`), 400, "cannot decode the pod"},
		"no object":           {testConfig(t), nil, 400, "cannot decode the pod"},
		"bad port":            {testConfig(t), pod(`,"tokenwarden.io/port":"http"`, simple), 422, "tokenwarden.io/port"},
		"port out of range":   {testConfig(t), pod(`,"tokenwarden.io/port":"70000"`, simple), 422, "tokenwarden.io/port"},
		"port taken":          {testConfig(t), pod(`,"tokenwarden.io/port":"8080"`, simple), 422, `port 8080 is already used by container "a"`},
		"empty audience":      {testConfig(t), pod(`,"tokenwarden.io/audience":" , "`, simple), 422, "no audience given"},
		"audience with space": {testConfig(t), pod(`,"tokenwarden.io/audience":"a b"`, simple), 422, "whitespace"},
		"no audience at all":  {noAudience, pod("", simple), 422, "tokenwarden.io/audience is required"},
		"no keys":             {noKeys, pod("", simple), 422, "no distribution public key"},
		"host network":        {testConfig(t), pod("", `{"hostNetwork":true,"containers":[{"name":"a","image":"x"}]}`), 422, "hostNetwork"},
		"volume name taken":   {testConfig(t), pod("", `{"volumes":[{"name":"tokenwarden-cache","emptyDir":{}}],"containers":[{"name":"a","image":"x"}]}`), 422, "volume named"},
	} {
		t.Run(name, func(t *testing.T) {
			code, resp, body := post(t, handler(tc.cfg), review("7", "shop", tc.pod))
			if code != http.StatusOK {
				t.Fatalf("HTTP %d %s", code, body)
			}
			if resp.Allowed || resp.Patch != nil || resp.UID != "uid-7" || resp.Result == nil {
				t.Fatalf("want a denial with the request uid, got %s", body)
			}
			if resp.Result.Code != tc.code || !strings.Contains(resp.Result.Message, tc.msg) || resp.Result.Status != metav1.StatusFailure {
				t.Fatalf("result %+v, want code %d and a message containing %q", resp.Result, tc.code, tc.msg)
			}
		})
	}
}

// TestHealthz: /healthz and /readyz (the chart's readiness probe, which
// the command fails while draining) answer ok.
func TestHealthz(t *testing.T) {
	for _, path := range []string{"/healthz", "/readyz"} {
		rec := httptest.NewRecorder()
		handler(testConfig(t)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusOK || rec.Body.String() != "ok\n" {
			t.Fatalf("%s: HTTP %d %q", path, rec.Code, rec.Body.String())
		}
	}
}

func TestConfigValidation(t *testing.T) {
	cfg := injector.DefaultConfig("")
	cfg.Port = 0
	cfg.Issuer = ""
	cfg.NATS.Prefix = "a.b"
	cfg.ImagePullPolicy = "Sometimes"
	cfg.Resources.Requests["memory"] = "1Gi"
	cfg.Resources.Limits["gpu"] = "1"
	cfg.NATS.CredsSecret = injector.SecretKeyRef{Name: "Bad_Name", Key: "k"}
	cfg.DistributionPublicKeys = []string{"not a key"}
	cfg.LogLevel = "loud"
	cfg.RevocationMaxStaleness = time.Second
	cfg.TLSCertFile = "/x"
	err := cfg.Load()
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"image:", "issuer:", "port: 0", "nats.prefix", "image_pull_policy", "unsupported resource", "nats.creds_secret.name", "distribution_public_keys #1", "log_level", "revocation_max_staleness", "tls_cert_file and tls_key_file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	// The defaults of a quick try load, with a PEM key file.
	def := injector.DefaultConfig("tokenwarden:dev")
	f := t.TempDir() + "/dist.pub"
	pem := "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAEcNF7hbaFGWoTG3ZJArxrkTq23iRjHAqcZeNkHl/Zl8=\n-----END PUBLIC KEY-----\n"
	if err := os.WriteFile(f, []byte(pem), 0o600); err != nil {
		t.Fatal(err)
	}
	def.DistributionPublicKeyFiles = []string{f}
	if err := def.Load(); err != nil {
		t.Fatal(err)
	}
	if got := def.TrustedKeys(); len(got) != 1 || got[0] != testKey {
		t.Fatalf("trusted keys %v, want [%s]", got, testKey)
	}
	// The key of the file listed inline again (a distribution-key rollover
	// whose extra keys repeat the Secret's): sidecars get it once.
	def.DistributionPublicKeys = []string{testKey}
	if err := def.Load(); err != nil {
		t.Fatal(err)
	}
	if got := def.TrustedKeys(); len(got) != 1 || got[0] != testKey {
		t.Fatalf("trusted keys %v, want [%s] once", got, testKey)
	}
}

// applyPatch applies an RFC 6902 JSON Patch (add, remove, replace, test;
// what an admission webhook may send) to doc, as the API server would.
func applyPatch(doc, patch []byte) ([]byte, error) {
	var ops []struct {
		Op    string          `json:"op"`
		Path  string          `json:"path"`
		Value json.RawMessage `json:"value"`
	}
	dec := json.NewDecoder(bytes.NewReader(patch))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ops); err != nil {
		return nil, err
	}
	var root any
	if err := json.Unmarshal(doc, &root); err != nil {
		return nil, err
	}
	for i, op := range ops {
		if op.Path == "" || op.Path[0] != '/' {
			return nil, fmt.Errorf("op %d: path %q", i, op.Path)
		}
		var tokens []string
		for _, t := range strings.Split(op.Path[1:], "/") {
			tokens = append(tokens, strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~"))
		}
		var val any
		if op.Op == "add" || op.Op == "replace" || op.Op == "test" {
			if len(op.Value) == 0 {
				return nil, fmt.Errorf("op %d: %s without a value", i, op.Op)
			}
			if err := json.Unmarshal(op.Value, &val); err != nil {
				return nil, err
			}
		}
		var err error
		root, err = applyOp(root, tokens, op.Op, val)
		if err != nil {
			return nil, fmt.Errorf("op %d (%s %s): %w", i, op.Op, op.Path, err)
		}
	}
	return json.Marshal(root)
}

func applyOp(node any, tokens []string, op string, val any) (any, error) {
	tok, last := tokens[0], len(tokens) == 1
	switch n := node.(type) {
	case map[string]any:
		child, ok := n[tok]
		if !last {
			if !ok {
				return nil, fmt.Errorf("no member %q", tok)
			}
			c, err := applyOp(child, tokens[1:], op, val)
			n[tok] = c
			return n, err
		}
		switch op {
		case "add":
			n[tok] = val
		case "replace", "remove", "test":
			if !ok {
				return nil, fmt.Errorf("no member %q", tok)
			}
			switch op {
			case "replace":
				n[tok] = val
			case "remove":
				delete(n, tok)
			}
		default:
			return nil, fmt.Errorf("unsupported op %q", op)
		}
		return n, nil
	case []any:
		idx := len(n)
		if tok != "-" {
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i > len(n) {
				return nil, fmt.Errorf("bad index %q", tok)
			}
			idx = i
		} else if !last || op != "add" {
			return nil, fmt.Errorf("'-' only for add at the end")
		}
		if !last {
			if idx >= len(n) {
				return nil, fmt.Errorf("index %d out of range", idx)
			}
			c, err := applyOp(n[idx], tokens[1:], op, val)
			n[idx] = c
			return n, err
		}
		switch op {
		case "add":
			n = append(n[:idx], append([]any{val}, n[idx:]...)...)
		case "replace":
			n[idx] = val
		case "remove":
			n = append(n[:idx], n[idx+1:]...)
		}
		return n, nil
	}
	return nil, fmt.Errorf("cannot descend into %T at %q", node, tok)
}

// TestGRPCPortAnnotation: the injected sidecar serves gRPC (Envoy
// ext_authz, for Istio's proxy) on 127.0.0.1 at the configured port, or
// the annotation's, or not at all.
func TestGRPCPortAnnotation(t *testing.T) {
	for _, c := range []struct {
		name       string
		annotation string // "": none
		appPort    int32  // a port the app container declares, 0: none
		want       string // TOKENWARDEN_GRPC_ADDR; "refused": the pod is refused
	}{
		{"default", "", 0, "127.0.0.1:9191"},
		{"another port", "9292", 0, "127.0.0.1:9292"},
		{"off", "off", 0, ""},
		{"zero is off", "0", 0, ""},
		{"not a port", "grpc", 0, "refused"},
		{"out of range", "70000", 0, "refused"},
		{"the HTTP port", "8181", 0, "refused"},
		{"taken by the app, asked for", "9292", 9292, "refused"},
		{"default taken by the app", "", 9191, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig(t)
			p := decodePod(t, readPod(t, "pod.yaml"))
			if c.annotation != "" {
				p.Annotations[injector.AnnotationGRPCPort] = c.annotation
			}
			if c.appPort != 0 {
				p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{ContainerPort: c.appPort})
			}
			b, _ := json.Marshal(p)
			resp, out := mutate(t, cfg, "shop", b)
			if c.want == "refused" {
				if resp.Allowed || !strings.Contains(resp.Result.Message, injector.AnnotationGRPCPort) && !strings.Contains(resp.Result.Message, "gRPC") {
					t.Fatalf("allowed or unclear: %v", resp.Result)
				}
				return
			}
			if !resp.Allowed {
				t.Fatalf("denied: %v", resp.Result)
			}
			got := map[string]string{}
			for _, e := range decodePod(t, out).Spec.InitContainers[0].Env {
				got[e.Name] = e.Value
			}
			if v, ok := got["TOKENWARDEN_GRPC_ADDR"]; !ok || v != c.want {
				t.Fatalf("TOKENWARDEN_GRPC_ADDR %q (set %v), want %q", v, ok, c.want)
			}
		})
	}
}
