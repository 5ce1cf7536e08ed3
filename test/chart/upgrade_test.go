package chart

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tokenwarden/tokenwarden/issuer"
	"github.com/tokenwarden/tokenwarden/issuer/directory"
)

// fakeCluster is just enough of a Kubernetes API server for the chart's
// lookup calls: discovery of the kinds it looks up and GET of single
// objects (everything else is 404). helm template --dry-run=server renders
// against it as helm upgrade would against a release's namespace.
type fakeCluster struct {
	objects map[string]any // API path → object
}

func (f *fakeCluster) add(t *testing.T, obj any) {
	t.Helper()
	var path string
	switch o := obj.(type) {
	case *corev1.Secret:
		path = "/api/v1/namespaces/" + namespace + "/secrets/" + o.Name
	case *corev1.ConfigMap:
		path = "/api/v1/namespaces/" + namespace + "/configmaps/" + o.Name
	case *corev1.PersistentVolumeClaim:
		path = "/api/v1/namespaces/" + namespace + "/persistentvolumeclaims/" + o.Name
	case *appsv1.StatefulSet:
		path = "/apis/apps/v1/namespaces/" + namespace + "/statefulsets/" + o.Name
	default:
		t.Fatalf("fake cluster: %T", obj)
	}
	f.objects[path] = obj
}

func (f *fakeCluster) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	res := func(name, kind string, namespaced bool) metav1.APIResource {
		return metav1.APIResource{Name: name, Kind: kind, Namespaced: namespaced, Verbs: metav1.Verbs{"get", "list"}}
	}
	var out any
	switch r.URL.Path {
	case "/api/v1":
		out = &metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList"}, GroupVersion: "v1", APIResources: []metav1.APIResource{
			res("namespaces", "Namespace", false), res("secrets", "Secret", true), res("configmaps", "ConfigMap", true),
			res("persistentvolumeclaims", "PersistentVolumeClaim", true)}}
	case "/apis/apps/v1":
		out = &metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList"}, GroupVersion: "apps/v1", APIResources: []metav1.APIResource{
			res("statefulsets", "StatefulSet", true)}}
	case "/api/v1/namespaces/kube-system":
		out = &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: "kube-system"}}
	default:
		out = f.objects[r.URL.Path]
	}
	w.Header().Set("Content-Type", "application/json")
	if out == nil {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(&metav1.Status{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: metav1.StatusFailure,
			Reason: metav1.StatusReasonNotFound, Code: http.StatusNotFound, Message: "not found"})
		return
	}
	_ = json.NewEncoder(w).Encode(out)
}

// renderAgainst renders the chart with lookup answered by a fake cluster
// holding objs, as on an upgrade or a reinstall.
func renderAgainst(t *testing.T, objs []any, args ...string) (string, error) {
	t.Helper()
	f := &fakeCluster{objects: map[string]any{}}
	for _, o := range objs {
		f.add(t, o)
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "`+srv.URL+`"}}]
users: [{name: fake, user: {token: fake}}]
contexts: [{name: fake, context: {cluster: fake, user: fake, namespace: `+namespace+`}}]
current-context: fake
`), 0o600); err != nil {
		t.Fatal(err)
	}
	return runHelm(t, append([]string{"template", releaseName, chartDir, "--namespace", namespace, "--dry-run=server",
		"--kube-version", "1.34.0", "--kubeconfig", kubeconfig}, args...)...)
}

func natsStatefulSet(replicas int32, annotations map[string]string, pvc bool) *appsv1.StatefulSet {
	s := &appsv1.StatefulSet{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "StatefulSet"},
		ObjectMeta: metav1.ObjectMeta{Name: fullname + "-nats", Namespace: namespace, Annotations: annotations},
		Spec:       appsv1.StatefulSetSpec{Replicas: &replicas}}
	if pvc {
		s.Spec.VolumeClaimTemplates = []corev1.PersistentVolumeClaim{{ObjectMeta: metav1.ObjectMeta{Name: "data"}}}
	}
	return s
}

func natsConfigMap(conf string) *corev1.ConfigMap {
	return &corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: fullname + "-nats", Namespace: namespace}, Data: map[string]string{"nats.conf": conf}}
}

func firstPVC() *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "PersistentVolumeClaim"},
		ObjectMeta: metav1.ObjectMeta{Name: "data-" + fullname + "-nats-0", Namespace: namespace}}
}

// TestNATSTopologyChangeIsRefused: helm upgrade from one NATS server
// (standalone JetStream) to a cluster, or back, fails with a message
// pointing at the migration, instead of leaving the new servers without a
// meta leader and losing the key ring and revocations. helm template,
// which cannot look up, still renders (TestRender).
func TestNATSTopologyChangeIsRefused(t *testing.T) {
	minimal := filepath.Join(chartDir, "examples", "minimal.yaml")
	standalone := natsStatefulSet(1, nil, true) // a release from before the mode annotation
	clustered := natsStatefulSet(3, map[string]string{"tokenwarden.io/nats-mode": "cluster"}, true)
	for name, tc := range map[string]struct {
		objs []any
		args []string
		want string // "" renders
	}{
		"1 to 3":                   {[]any{standalone}, []string{"-f", minimal, "--set", "nats.replicas=3"}, "standalone NATS of this release into a cluster"},
		"3 to 1":                   {[]any{clustered}, []string{"-f", minimal}, "cluster NATS of this release into a standalone"},
		"annotation wins":          {[]any{natsStatefulSet(3, map[string]string{"tokenwarden.io/nats-mode": "standalone"}, true)}, []string{"--set", "nats.replicas=3"}, "standalone NATS"},
		"1 to 1":                   {[]any{standalone}, []string{"-f", minimal}, ""},
		"3 to 5":                   {[]any{clustered}, []string{"--set", "nats.replicas=5"}, ""},
		"first install":            {nil, []string{"--set", "nats.replicas=3"}, ""},
		"StatefulSet deleted, PVC": {[]any{natsConfigMap("jetstream {}\n"), firstPVC()}, []string{"--set", "nats.replicas=3"}, "standalone NATS"},
		"StatefulSet and PVC gone": {[]any{natsConfigMap("jetstream {}\n")}, []string{"--set", "nats.replicas=3"}, ""},
		"persistence turned off":   {[]any{clustered}, []string{"--set", "nats.persistence.enabled=false"}, "volumeClaimTemplates"},
		"persistence turned on":    {[]any{natsStatefulSet(3, map[string]string{"tokenwarden.io/nats-mode": "cluster"}, false)}, nil, "volumeClaimTemplates"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := renderAgainst(t, tc.objs, tc.args...)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("want a failure mentioning %q, got %v", tc.want, err)
			case tc.want != "" && strings.Contains(tc.want, "NATS") && !strings.Contains(err.Error(), "docs/kubernetes.md"):
				t.Fatalf("the refusal does not point at the migration: %v", err)
			}
		})
	}
}

// TestGeneratedSecretsSurviveReinstall: after helm uninstall the keys and
// NATS auth Secrets stay (resource-policy keep, checked in TestRender), and
// a new install reads them back instead of generating new passwords (NATS
// on a kept PVC and sidecar Secrets in app namespaces keep working).
func TestGeneratedSecretsSurviveReinstall(t *testing.T) {
	auth := &corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: fullname + "-nats-auth", Namespace: namespace},
		Data:       map[string][]byte{"issuer-password": []byte("pIssuer"), "sidecar-password": []byte("pSidecar"), "route-password": []byte("pRoute")}}
	out, err := renderAgainst(t, []any{auth})
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(out, "\n---") {
		if !strings.Contains(doc, "name: "+fullname+"-nats-auth\n") {
			continue
		}
		for k, v := range auth.Data {
			if !strings.Contains(doc, k+": "+string(toB64(v))) {
				t.Errorf("%s was regenerated:\n%s", k, doc)
			}
		}
		return
	}
	t.Fatal("no NATS auth Secret rendered")
}

func toB64(b []byte) []byte {
	out, _ := json.Marshal(b) // base64 in quotes
	return out[1 : len(out)-1]
}

// TestMinimalExampleCanLogInAndAdminister: the trial values carry the
// credentials `tokenwarden dev` seeds, so docs/kubernetes.md's
// TOKENWARDEN_CLIENT_ID=admin works against a trial install, and the demo
// user can log in through demo-app.
func TestMinimalExampleCanLogInAndAdminister(t *testing.T) {
	m := render(t, "-f", filepath.Join(chartDir, "examples", "minimal.yaml"))
	o := m.get("Secret", fullname+"-issuer-directory")
	if o == nil {
		t.Fatal("no directory Secret")
	}
	sec := o.(*corev1.Secret)
	d, err := directory.Parse(sec.Data["users.yaml"], sec.Data["clients.yaml"])
	if err != nil {
		t.Fatal(err)
	}
	admin, err := d.AuthenticateClient("admin", "admin-secret")
	if err != nil || !admin.AllowsGrant("client_credentials") || !slices.Contains(admin.Scopes, issuer.AdminScope) {
		t.Fatalf("admin client: %+v %v", admin, err)
	}
	app, err := d.AuthenticateClient("demo-app", "demo-secret")
	if err != nil || !app.AllowsGrant("password") || !app.AllowsGrant("refresh_token") {
		t.Fatalf("demo-app client: %+v %v", app, err)
	}
	if _, err := d.AuthenticateUser("demo", "demo-password"); err != nil {
		t.Fatalf("demo user: %v", err)
	}
}

// TestKEKReplacement walks docs/kubernetes.md's "Replace the key-encryption
// key" against a fake cluster holding the chart's keys Secret: every data
// key the operator added is kept on upgrade (nothing is regenerated), the
// issuer mounts and names the new key and the previous one, and a key
// named but missing from the Secret is refused before any pod could fail
// (or the chart regenerate every key).
func TestKEKReplacement(t *testing.T) {
	keys := func(data map[string][]byte) *corev1.Secret {
		return &corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{Name: fullname + "-keys", Namespace: namespace}, Data: data}
	}
	dist := map[string][]byte{"distribution.key": []byte("dist-private"), "distribution.pub": []byte("dist-public")}
	with := func(kv ...string) map[string][]byte {
		d := map[string][]byte{}
		for k, v := range dist {
			d[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			d[kv[i]] = []byte(kv[i+1])
		}
		return d
	}
	for name, tc := range map[string]struct {
		secret   map[string][]byte
		args     []string
		current  string   // want key_encryption_key_file's data key
		previous []string // want previous_key_encryption_key_files' data keys
		fail     string
	}{
		"step 1, new key added, nothing named yet": {secret: with("key-encryption.key", "old", "key-encryption-2.key", "new"),
			current: "key-encryption.key"},
		"step 2, new key current, old previous": {secret: with("key-encryption.key", "old", "key-encryption-2.key", "new"),
			args:    []string{"--set", "issuer.keys.keyEncryptionKey=key-encryption-2.key", "--set", "issuer.keys.previousKeyEncryptionKeys={key-encryption.key}"},
			current: "key-encryption-2.key", previous: []string{"key-encryption.key"}},
		"step 4, old key dropped": {secret: with("key-encryption-2.key", "new"),
			args: []string{"--set", "issuer.keys.keyEncryptionKey=key-encryption-2.key"}, current: "key-encryption-2.key"},
		"new key not in the Secret": {secret: with("key-encryption.key", "old"),
			args: []string{"--set", "issuer.keys.keyEncryptionKey=key-encryption-2.key", "--set", "issuer.keys.previousKeyEncryptionKeys={key-encryption.key}"},
			fail: `has no data key "key-encryption-2.key"`},
		"previous key not in the Secret": {secret: with("key-encryption-2.key", "new"),
			args: []string{"--set", "issuer.keys.keyEncryptionKey=key-encryption-2.key", "--set", "issuer.keys.previousKeyEncryptionKeys={key-encryption.key}"},
			fail: `has no data key "key-encryption.key"`},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			out, err := renderAgainst(t, []any{keys(tc.secret)}, tc.args...)
			if tc.fail != "" {
				if err == nil || !strings.Contains(err.Error(), tc.fail) || !strings.Contains(err.Error(), "docs/kubernetes.md") {
					t.Fatalf("want a refusal mentioning %q, got %v", tc.fail, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m := parseManifests(t, out)
			sec, _ := m.get("Secret", fullname+"-keys").(*corev1.Secret)
			if sec == nil || len(sec.Data) != len(tc.secret) {
				t.Fatalf("keys Secret %+v, want exactly the data keys of the cluster's", sec)
			}
			for k, v := range tc.secret {
				if string(sec.Data[k]) != string(v) {
					t.Errorf("keys Secret %s = %q, want %q kept", k, sec.Data[k], v)
				}
			}
			raw := configMapData(t, m, fullname+"-issuer", "issuer.yaml")
			cfg := issuer.DefaultConfig()
			dec := yaml.NewDecoder(strings.NewReader(raw))
			dec.KnownFields(true)
			if err := dec.Decode(&cfg); err != nil {
				t.Fatalf("issuer.yaml: %v\n%s", err, raw)
			}
			var prev []string
			for _, f := range cfg.PreviousKeyEncryptionKeyFiles {
				prev = append(prev, filepath.Base(f))
			}
			if filepath.Base(cfg.KeyEncryptionKeyFile) != tc.current || !slices.Equal(prev, tc.previous) {
				t.Fatalf("issuer.yaml names KEK %s and previous %v, want %s and %v", cfg.KeyEncryptionKeyFile, prev, tc.current, tc.previous)
			}
			checkIssuerKeyFiles(t, deployment(t, m, fullname+"-issuer"), cfg)
		})
	}
}
