package chart

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"

	"github.com/tokenwarden/tokenwarden/injector"
	"github.com/tokenwarden/tokenwarden/issuer"
	"github.com/tokenwarden/tokenwarden/sidecar"
)

const fullname = releaseName + "-tokenwarden"

func TestLint(t *testing.T) {
	for _, c := range cases(t) {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if out, err := runHelm(t, append([]string{"lint", "--strict", chartDir, "--namespace", namespace}, c.args()...)...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
}

func TestRender(t *testing.T) {
	for _, c := range cases(t) {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			m := render(t, c.args()...)
			v := c.values(t)
			t.Logf("rendered %s", kinds(m))
			checkWorkloads(t, m)
			checkIssuer(t, m, v)
			checkNATS(t, m, v)
			checkInjector(t, m, v)
			checkWebhook(t, m, v)
			checkNetworkPolicies(t, m, v)
			checkKeys(t, m, v)
			checkNATSAuth(t, m, v)
			checkTestPod(t, m, v)
		})
	}
}

// podSpecs returns every pod template of the release, by workload name.
func podSpecs(m *manifests) map[string]*corev1.PodTemplateSpec {
	out := map[string]*corev1.PodTemplateSpec{}
	for _, o := range m.byKind["Deployment"] {
		d := o.(*appsv1.Deployment)
		out[d.Name] = &d.Spec.Template
	}
	for _, o := range m.byKind["StatefulSet"] {
		s := o.(*appsv1.StatefulSet)
		out[s.Name] = &s.Spec.Template
	}
	return out
}

// Every pod and container runs restricted: non-root, read-only root
// filesystem, no privilege escalation, no capabilities, RuntimeDefault
// seccomp, no service account token, resources and probes set.
func checkWorkloads(t *testing.T, m *manifests) {
	t.Helper()
	specs := podSpecs(m)
	if len(specs) < 2 {
		t.Fatalf("workloads: %v", specs)
	}
	for name, tpl := range specs {
		ps := tpl.Spec
		if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
			t.Errorf("%s: automountServiceAccountToken must be false", name)
		}
		if sa := m.get("ServiceAccount", ps.ServiceAccountName); sa == nil {
			t.Errorf("%s: service account %q not rendered", name, ps.ServiceAccountName)
		} else if a := sa.(*corev1.ServiceAccount).AutomountServiceAccountToken; a == nil || *a {
			t.Errorf("service account %s: automountServiceAccountToken must be false", ps.ServiceAccountName)
		}
		psc := ps.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod securityContext %+v", name, psc)
		}
		if ps.HostNetwork || ps.HostPID || ps.HostIPC {
			t.Errorf("%s: host namespaces", name)
		}
		for _, c := range append(append([]corev1.Container{}, ps.InitContainers...), ps.Containers...) {
			where := name + "/" + c.Name
			checkRestrictedContainer(t, where, c)
			if c.ReadinessProbe == nil || c.LivenessProbe == nil {
				t.Errorf("%s: readiness and liveness probes are required", where)
			}
		}
	}
}

// checkRestrictedPod: what the Pod Security Standard "restricted" requires
// of a pod, plus a read-only root filesystem, numeric user and resources.
func checkRestrictedPod(t *testing.T, name string, ps corev1.PodSpec) {
	t.Helper()
	psc := ps.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod securityContext %+v", name, psc)
	}
	if ps.HostNetwork || ps.HostPID || ps.HostIPC {
		t.Errorf("%s: host namespaces", name)
	}
	for _, vol := range ps.Volumes {
		if vol.HostPath != nil {
			t.Errorf("%s: hostPath volume %s", name, vol.Name)
		}
	}
	for _, c := range append(append([]corev1.Container{}, ps.InitContainers...), ps.Containers...) {
		checkRestrictedContainer(t, name+"/"+c.Name, c)
	}
}

func checkRestrictedContainer(t *testing.T, where string, c corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Errorf("%s: no securityContext", where)
		return
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
		t.Errorf("%s: runAsNonRoot", where)
	case sc.RunAsUser == nil || *sc.RunAsUser == 0:
		t.Errorf("%s: numeric non-root runAsUser", where)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Errorf("%s: readOnlyRootFilesystem", where)
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("%s: allowPrivilegeEscalation", where)
	case sc.Privileged != nil && *sc.Privileged:
		t.Errorf("%s: privileged", where)
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
		t.Errorf("%s: capabilities %+v", where, sc.Capabilities)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("%s: seccompProfile", where)
	}
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
		t.Errorf("%s: resources %+v", where, c.Resources)
	}
}

// checkTestPod: helm test runs `tokenwarden check` in the tokenwarden image
// against the issuer's Service, as a restricted pod (the namespaces of a
// platform team enforce "restricted"; curl images and shells are not in
// the image).
func checkTestPod(t *testing.T, m *manifests, v map[string]any) {
	t.Helper()
	o := m.get("Pod", fullname+"-test")
	if o == nil {
		t.Fatal("no helm test pod")
	}
	p := o.(*corev1.Pod)
	if p.Annotations["helm.sh/hook"] != "test" || p.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("test pod: hook %q, restartPolicy %s", p.Annotations["helm.sh/hook"], p.Spec.RestartPolicy)
	}
	if p.Spec.AutomountServiceAccountToken == nil || *p.Spec.AutomountServiceAccountToken {
		t.Error("test pod: automountServiceAccountToken must be false")
	}
	checkRestrictedPod(t, "test pod", p.Spec)
	issuerImage := deployment(t, m, fullname+"-issuer").Spec.Template.Spec.Containers[0].Image
	c := p.Spec.Containers[0]
	wantURL := "--url=http://" + fullname + "-issuer." + namespace + ".svc:8080"
	iss := "http://" + fullname + "-issuer." + namespace + ".svc:8080"
	if u, _ := get(v, "issuer.url").(string); u != "" {
		iss = u
	}
	if c.Image != issuerImage || len(c.Command) != 0 || len(c.Args) == 0 || c.Args[0] != "check" ||
		!slices.Contains(c.Args, "--issuer="+iss) || !slices.Contains(c.Args, wantURL) {
		t.Errorf("test pod: image %s (want %s), command %v, args %v", c.Image, issuerImage, c.Command, c.Args)
	}
	// The issuer's NetworkPolicy lets it in whatever issuerFrom says.
	if get(v, "networkPolicy.enabled") == true {
		np := m.get("NetworkPolicy", fullname+"-issuer").(*networkingv1.NetworkPolicy)
		admitted := false
		for _, r := range np.Spec.Ingress {
			if len(r.From) == 0 {
				admitted = true
			}
			for _, f := range r.From {
				if f.PodSelector != nil && f.NamespaceSelector == nil && f.PodSelector.MatchLabels["app.kubernetes.io/component"] == "test" {
					admitted = true
				}
			}
		}
		if !admitted {
			t.Error("the issuer's NetworkPolicy blocks the helm test pod")
		}
	}
}

// checkNATSAuth: the generated NATS passwords survive an uninstall like the
// keys, so a reinstall (with kept PVCs and sidecar Secrets) keeps working.
func checkNATSAuth(t *testing.T, m *manifests, v map[string]any) {
	t.Helper()
	if get(v, "nats.enabled") != true {
		return
	}
	o := m.get("Secret", fullname+"-nats-auth")
	if s, _ := get(v, "nats.auth.existingSecret").(string); s != "" {
		return
	}
	if o == nil {
		t.Fatal("no NATS auth Secret")
	}
	if o.(*corev1.Secret).Annotations["helm.sh/resource-policy"] != "keep" {
		t.Error("the NATS auth Secret must survive an uninstall (helm.sh/resource-policy: keep)")
	}
}

func deployment(t *testing.T, m *manifests, name string) *appsv1.Deployment {
	t.Helper()
	o := m.get("Deployment", name)
	if o == nil {
		t.Fatalf("Deployment %s not rendered", name)
	}
	return o.(*appsv1.Deployment)
}

func configMapData(t *testing.T, m *manifests, name, key string) string {
	t.Helper()
	o := m.get("ConfigMap", name)
	if o == nil {
		t.Fatalf("ConfigMap %s not rendered", name)
	}
	d, ok := o.(*corev1.ConfigMap).Data[key]
	if !ok {
		t.Fatalf("ConfigMap %s has no %s", name, key)
	}
	return d
}

func intOf(v any) int {
	switch n := v.(type) {
	case float64:
		return int(n)
	case int:
		return n
	case int64:
		return int(n)
	}
	return -1
}

func env(c corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func checkIssuer(t *testing.T, m *manifests, v map[string]any) {
	t.Helper()
	d := deployment(t, m, fullname+"-issuer")
	want := intOf(get(v, "issuer.replicas"))
	if d.Spec.Replicas == nil || int(*d.Spec.Replicas) != want {
		t.Errorf("issuer replicas %v, want %d", d.Spec.Replicas, want)
	}
	c := d.Spec.Template.Spec.Containers[0]
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
		t.Errorf("issuer readiness probe %+v, want GET /readyz", p)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
		t.Errorf("issuer liveness probe %+v, want GET /healthz", p)
	}
	if e := env(c, "TOKENWARDEN_NATS_URL"); e == nil {
		t.Error("issuer: no TOKENWARDEN_NATS_URL")
	} else if get(v, "nats.enabled") == true && (e.Value != "nats://issuer:$(NATS_PASSWORD)@"+fullname+"-nats."+namespace+".svc:4222" || env(c, "NATS_PASSWORD").ValueFrom.SecretKeyRef.Key != "issuer-password") {
		t.Errorf("issuer NATS URL %q", e.Value)
	}
	pdb := m.get("PodDisruptionBudget", fullname+"-issuer")
	if want > 1 {
		if pdb == nil || pdb.(*policyv1.PodDisruptionBudget).Spec.MinAvailable == nil {
			t.Error("issuer: a PodDisruptionBudget is required with 2 or more replicas")
		}
		if a := d.Spec.Template.Spec.Affinity; a == nil || a.PodAntiAffinity == nil {
			t.Error("issuer: pod anti-affinity expected with 2 or more replicas")
		}
	}
	// The rendered config is the issuer's own format, strictly, and valid.
	raw := configMapData(t, m, fullname+"-issuer", "issuer.yaml")
	cfg := issuer.DefaultConfig()
	dec := yaml.NewDecoder(strings.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("issuer.yaml does not decode into issuer.Config: %v\n%s", err, raw)
	}
	cfg.NATS.URL = "nats://from-the-environment:4222"
	if err := cfg.Validate(); err != nil {
		t.Errorf("issuer.yaml does not validate: %v\n%s", err, raw)
	}
	if u, _ := get(v, "issuer.url").(string); u != "" && cfg.Issuer != u {
		t.Errorf("issuer %q, want %q", cfg.Issuer, u)
	}
	checkIssuerKeyFiles(t, d, cfg)
	checkDrain(t, "issuer", d, cfg.ShutdownDelay, intOf(get(v, "issuer.shutdownDelaySeconds")))
}

// checkIssuerKeyFiles: every key file the issuer's config names (the
// distribution key, the current and any previous key-encryption key) is
// mounted from the keys Secret, or the issuer would not start.
func checkIssuerKeyFiles(t *testing.T, d *appsv1.Deployment, cfg issuer.Config) {
	t.Helper()
	dir := ""
	for _, vm := range d.Spec.Template.Spec.Containers[0].VolumeMounts {
		if vm.Name == "keys" {
			dir = vm.MountPath
		}
	}
	mounted := map[string]bool{}
	for _, vol := range d.Spec.Template.Spec.Volumes {
		if vol.Name == "keys" && vol.Secret != nil {
			for _, it := range vol.Secret.Items {
				mounted[dir+"/"+it.Path] = true
			}
		}
	}
	for _, f := range append([]string{cfg.DistributionKeyFile, cfg.KeyEncryptionKeyFile}, cfg.PreviousKeyEncryptionKeyFiles...) {
		if !mounted[f] {
			t.Errorf("issuer.yaml names %s, which is not mounted from the keys Secret (mounted: %v)", f, mounted)
		}
	}
}

// checkDrain: the process drains on SIGTERM for the configured delay
// (rolling updates dropped requests without it), and the grace period
// covers the delay plus the 10 s graceful shutdown.
func checkDrain(t *testing.T, what string, d *appsv1.Deployment, configured time.Duration, wantSeconds int) {
	t.Helper()
	if wantSeconds < 1 || configured != time.Duration(wantSeconds)*time.Second {
		t.Errorf("%s: shutdown_delay %s, want %d s (at least 1)", what, configured, wantSeconds)
	}
	g := d.Spec.Template.Spec.TerminationGracePeriodSeconds
	if g == nil || *g < int64(wantSeconds)+15 {
		t.Errorf("%s: terminationGracePeriodSeconds %v does not cover a %d s drain plus a 10 s shutdown", what, g, wantSeconds)
	}
	if c := d.Spec.Template.Spec.Containers[0]; c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Exec != nil {
		t.Errorf("%s: an exec preStop hook cannot run in an image without a shell", what)
	}
}

func checkNATS(t *testing.T, m *manifests, v map[string]any) {
	t.Helper()
	sts := m.get("StatefulSet", fullname+"-nats")
	if get(v, "nats.enabled") != true {
		if sts != nil || len(m.byKind["StatefulSet"]) > 0 {
			t.Error("a NATS StatefulSet was rendered for an external NATS")
		}
		return
	}
	if sts == nil {
		t.Fatal("no NATS StatefulSet")
	}
	s := sts.(*appsv1.StatefulSet)
	n := intOf(get(v, "nats.replicas"))
	pvcs := 0
	if get(v, "nats.persistence.enabled") == true {
		pvcs = 1
	}
	if int(*s.Spec.Replicas) != n || len(s.Spec.VolumeClaimTemplates) != pvcs || s.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("NATS StatefulSet: replicas %d (want %d), %d PVC templates (want %d), %s", *s.Spec.Replicas, n, len(s.Spec.VolumeClaimTemplates), pvcs, s.Spec.PodManagementPolicy)
	}
	// The mode is read back on upgrade (TestNATSTopologyChangeIsRefused).
	if mode := s.Annotations["tokenwarden.io/nats-mode"]; mode != map[bool]string{true: "cluster", false: "standalone"}[n > 1] {
		t.Errorf("NATS StatefulSet: tokenwarden.io/nats-mode %q for %d servers", mode, n)
	}
	// A fresh server is up in about a second; a 10 s probe period delayed
	// every install by up to 10 s.
	if p := s.Spec.Template.Spec.Containers[0].StartupProbe; p == nil || p.PeriodSeconds > 2 || int(p.PeriodSeconds*p.FailureThreshold) < 300 {
		t.Errorf("NATS startup probe %+v: want a period of at most 2 s and minutes of patience", p)
	}
	hs := m.get("Service", fullname+"-nats-headless")
	if hs == nil || hs.(*corev1.Service).Spec.ClusterIP != corev1.ClusterIPNone || !hs.(*corev1.Service).Spec.PublishNotReadyAddresses || s.Spec.ServiceName != fullname+"-nats-headless" {
		t.Error("NATS needs a headless Service publishing not-ready addresses")
	}
	conf := configMapData(t, m, fullname+"-nats", "nats.conf")
	if !strings.Contains(conf, "jetstream {") || !strings.Contains(conf, "include ./auth.conf") {
		t.Errorf("nats.conf: %s", conf)
	}
	if n > 1 {
		for i := range n {
			if !strings.Contains(conf, fmt.Sprintf("$ROUTE_URL_%d", i)) || env(s.Spec.Template.Spec.Containers[0], fmt.Sprintf("ROUTE_URL_%d", i)) == nil {
				t.Errorf("route %d missing", i)
			}
		}
		if !strings.Contains(conf, "password: $ROUTE_PASSWORD") {
			t.Error("routes must authenticate")
		}
	}
	if strings.Contains(conf, "no_auth_user") {
		t.Error("anonymous NATS clients must not be mapped to a user")
	}
	auth := configMapData(t, m, fullname+"-nats", "auth.conf")
	perms := parsePermissions(t, auth)
	sc, is := perms["sidecar"], perms["issuer"]
	for _, subj := range sc.pubAllow {
		if strings.HasPrefix(subj, "$KV.") || strings.HasPrefix(subj, "tokenwarden.") || strings.Contains(subj, "STREAM.CREATE") ||
			strings.Contains(subj, "STREAM.UPDATE") || strings.Contains(subj, "STREAM.DELETE") || strings.Contains(subj, "STREAM.PURGE") ||
			strings.Contains(subj, "_keys") || strings.Contains(subj, "_refresh") || strings.Contains(subj, "_denied") || subj == ">" || subj == "$JS.API.>" {
			t.Errorf("sidecar may publish to %s", subj)
		}
	}
	for _, d := range []string{"$KV.>", "tokenwarden.>", "$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.CONSUMER.>", "_INBOX.>"} {
		if !slices.Contains(sc.pubDeny, d) {
			t.Errorf("sidecar publish deny list lacks %s", d)
		}
	}
	// A sidecar reads by direct get and holds no consumer, so it has no
	// consumer right at all, and reaches TOKENWARDEN only through imports.
	for _, subj := range sc.pubAllow {
		if strings.Contains(subj, "CONSUMER") || strings.HasPrefix(subj, "$JS.FC") {
			t.Errorf("sidecar may publish to %s", subj)
		}
		if !strings.Contains(auth, fmt.Sprintf(`{ service: { account: TOKENWARDEN, subject: %q } }`, subj)) {
			t.Errorf("sidecar may publish to %s, which SIDECARS does not import", subj)
		}
	}
	if i, j := strings.Index(auth, "SIDECARS {"), strings.Index(auth, "user: sidecar"); i < 0 || j < i || strings.Index(auth, "user: issuer") > i {
		t.Error("the sidecar user must be alone in account SIDECARS, the issuer in TOKENWARDEN")
	}
	if sidecars := auth[strings.Index(auth, "SIDECARS {"):]; strings.Contains(sidecars, "jetstream") {
		t.Error("account SIDECARS must not have JetStream of its own")
	}
	for _, a := range []string{"$KV.tokenwarden_jwks.>", "tokenwarden.revocations.>", "$JS.API.STREAM.CREATE.TOKENWARDEN_REVOCATIONS"} {
		if !slices.Contains(is.pubAllow, a) {
			t.Errorf("issuer may not publish to %s", a)
		}
	}
	for _, a := range is.pubAllow {
		if strings.Contains(a, "DELETE") && !strings.Contains(a, "CONSUMER.DELETE") || strings.Contains(a, "PURGE") || a == ">" {
			t.Errorf("issuer may publish to %s", a)
		}
	}
	// Replies on _INBOX, and the revocation subjects (sidecars apply
	// events as they are published; both read the stream when one comes);
	// the sidecar also the bundle's key, to read it when it is written.
	if !slices.Equal(sc.subAllow, []string{"_INBOX.>", "$KV.tokenwarden_jwks.current", "tokenwarden.revocations.>"}) ||
		!slices.Equal(is.subAllow, []string{"_INBOX.>", "tokenwarden.revocations.>"}) {
		t.Errorf("subscribe permissions: sidecar %v, issuer %v", sc.subAllow, is.subAllow)
	}
}

type permissions struct{ pubAllow, pubDeny, subAllow []string }

// parsePermissions reads the users' permissions out of auth.conf with a
// line scanner that knows the chart's layout: user: NAME, then publish
// allow/deny and subscribe allow lists of quoted subjects.
func parsePermissions(t *testing.T, conf string) map[string]*permissions {
	t.Helper()
	out := map[string]*permissions{}
	var cur *permissions
	var list *[]string
	for _, line := range strings.Split(conf, "\n") {
		l := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(l, "#"):
			continue
		case strings.HasPrefix(l, "user: "):
			cur = &permissions{}
			out[strings.TrimPrefix(l, "user: ")] = cur
			list = nil
		case cur == nil:
			continue
		case strings.HasPrefix(l, "publish:"):
			list = &cur.pubAllow
		case strings.HasPrefix(l, "deny:"):
			cur.pubDeny = quoted(l)
			continue
		case strings.HasPrefix(l, "subscribe:"):
			cur.subAllow = quoted(l)
			list = nil
			continue
		case strings.HasPrefix(l, "allow: ["):
			continue
		case strings.HasPrefix(l, "]"):
			list = nil
		case strings.HasPrefix(l, `"`) && list != nil:
			*list = append(*list, quoted(l)...)
		}
	}
	for _, u := range []string{"issuer", "sidecar"} {
		if p := out[u]; p == nil || len(p.pubAllow) == 0 {
			t.Fatalf("auth.conf: no publish permissions for %s:\n%s", u, conf)
		}
	}
	return out
}

func quoted(s string) []string {
	var out []string
	for parts := strings.Split(s, `"`); len(parts) >= 3; parts = parts[2:] {
		out = append(out, parts[1])
	}
	return out
}

func checkInjector(t *testing.T, m *manifests, v map[string]any) {
	t.Helper()
	d := deployment(t, m, fullname+"-injector")
	want := intOf(get(v, "injector.replicas"))
	if int(*d.Spec.Replicas) != want {
		t.Errorf("injector replicas %d, want %d", *d.Spec.Replicas, want)
	}
	c := d.Spec.Template.Spec.Containers[0]
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Scheme != corev1.URISchemeHTTPS {
		t.Errorf("injector readiness probe %+v", p)
	}
	if e := env(c, "TOKENWARDEN_NAMESPACE"); e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.namespace" {
		t.Error("injector must know its own namespace")
	}
	// Only the public half of the distribution key is mounted.
	for _, vol := range d.Spec.Template.Spec.Volumes {
		if vol.Secret != nil && vol.Secret.SecretName == keysSecret(v) {
			if len(vol.Secret.Items) != 1 || vol.Secret.Items[0].Key != "distribution.pub" {
				t.Errorf("injector mounts %+v of the keys Secret, want distribution.pub only", vol.Secret.Items)
			}
		}
	}
	// The rendered config is the injector's own format, strictly, and
	// loads once the mounted key file is there.
	raw := configMapData(t, m, fullname+"-injector", "injector.yaml")
	cfg := injector.DefaultConfig("x")
	dec := yaml.NewDecoder(strings.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("injector.yaml does not decode into injector.Config: %v\n%s", err, raw)
	}
	if len(cfg.DistributionPublicKeyFiles) != 1 || !slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "/etc/tokenwarden/config/injector.yaml") {
		t.Fatalf("injector config: %s", raw)
	}
	pub := filepath.Join(t.TempDir(), "distribution.pub")
	if err := os.WriteFile(pub, []byte("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAEcNF7hbaFGWoTG3ZJArxrkTq23iRjHAqcZeNkHl/Zl8=\n-----END PUBLIC KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.DistributionPublicKeyFiles = []string{pub}
	cfg.TLSCertFile, cfg.TLSKeyFile = "", ""
	if err := cfg.Load(); err != nil {
		t.Errorf("injector.yaml does not load: %v\n%s", err, raw)
	}
	checkDrain(t, "injector", d, cfg.ShutdownDelay, intOf(get(v, "injector.shutdownDelaySeconds")))
	if cfg.Port != intOf(get(v, "sidecar.port")) {
		t.Errorf("sidecar port %d", cfg.Port)
	}
	if want, err := time.ParseDuration(fmt.Sprint(get(v, "sidecar.revocationMaxStaleness"))); err != nil || cfg.RevocationMaxStaleness != want {
		t.Errorf("sidecars' revocation_max_staleness %s, want sidecar.revocationMaxStaleness %v", cfg.RevocationMaxStaleness, get(v, "sidecar.revocationMaxStaleness"))
	}
	inlineBundled := get(v, "nats.enabled") == true && get(v, "sidecar.nats.auth") == "inline" && get(v, "sidecar.nats.url") == ""
	if e := env(c, "TOKENWARDEN_NATS_URL"); inlineBundled != (e != nil) {
		t.Errorf("injector TOKENWARDEN_NATS_URL %+v (inline with the bundled NATS: %v)", e, inlineBundled)
	}
	if get(v, "sidecar.nats.auth") == "secret" && !cfg.NATS.URLSecret.Set() && !cfg.NATS.CredsSecret.Set() {
		t.Error("sidecar.nats.auth secret but the injector config names no Secret")
	}
}

func keysSecret(v map[string]any) string {
	if s, _ := get(v, "issuer.keys.existingSecret").(string); s != "" {
		return s
	}
	return fullname + "-keys"
}

func checkWebhook(t *testing.T, m *manifests, v map[string]any) {
	t.Helper()
	ws := m.byKind["MutatingWebhookConfiguration"]
	if len(ws) != 1 {
		t.Fatalf("%d MutatingWebhookConfigurations", len(ws))
	}
	mwc := ws[0].(*admissionregistrationv1.MutatingWebhookConfiguration)
	if len(mwc.Webhooks) != 1 {
		t.Fatalf("%d webhooks", len(mwc.Webhooks))
	}
	w := mwc.Webhooks[0]
	if w.FailurePolicy == nil || string(*w.FailurePolicy) != get(v, "injector.webhook.failurePolicy") {
		t.Errorf("failurePolicy %v", w.FailurePolicy)
	}
	if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone || !slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
		t.Errorf("sideEffects %v, admissionReviewVersions %v", w.SideEffects, w.AdmissionReviewVersions)
	}
	if w.ClientConfig.Service == nil || w.ClientConfig.Service.Name != fullname+"-injector" || w.ClientConfig.Service.Namespace != namespace ||
		w.ClientConfig.Service.Path == nil || *w.ClientConfig.Service.Path != "/mutate" || w.ClientConfig.URL != nil {
		t.Errorf("clientConfig %+v", w.ClientConfig)
	}
	if len(w.Rules) != 1 || !slices.Equal(w.Rules[0].Resources, []string{"pods"}) || !slices.Equal(w.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) {
		t.Errorf("rules %+v", w.Rules)
	}
	excludesOwn := false
	if w.NamespaceSelector != nil {
		for _, e := range w.NamespaceSelector.MatchExpressions {
			if e.Key == "kubernetes.io/metadata.name" && e.Operator == "NotIn" && slices.Contains(e.Values, namespace) && slices.Contains(e.Values, "kube-system") {
				excludesOwn = true
			}
		}
	}
	if !excludesOwn {
		t.Errorf("namespaceSelector %+v must exclude %s and kube-system", w.NamespaceSelector, namespace)
	}
	if len(w.MatchConditions) != 1 || !strings.Contains(w.MatchConditions[0].Expression, "object.metadata.annotations['tokenwarden.io/inject'] == 'true'") {
		t.Errorf("matchConditions %+v", w.MatchConditions)
	}
	injectCA := mwc.Annotations["cert-manager.io/inject-ca-from"]
	if get(v, "certManager.enabled") == true {
		if injectCA != namespace+"/"+fullname+"-injector" || len(w.ClientConfig.CABundle) != 0 {
			t.Errorf("cert-manager: inject-ca-from %q, caBundle %d bytes", injectCA, len(w.ClientConfig.CABundle))
		}
		c := m.get("Certificate", fullname+"-injector")
		if c == nil {
			t.Fatal("no Certificate for the webhook")
		}
		cert := c.(*certificate)
		if cert.Spec.SecretName != fullname+"-injector-tls" || !slices.Contains(cert.Spec.DNSNames, fullname+"-injector."+namespace+".svc") {
			t.Errorf("Certificate %+v", cert.Spec)
		}
		if m.get("Secret", fullname+"-injector-tls") != nil {
			t.Error("the TLS Secret is cert-manager's to write")
		}
		return
	}
	if injectCA != "" {
		t.Error("inject-ca-from without cert-manager")
	}
	// The generated CA signs the serving certificate for the Service name.
	s := m.get("Secret", fullname+"-injector-tls")
	if s == nil {
		t.Fatal("no TLS Secret for the webhook")
	}
	sec := s.(*corev1.Secret)
	if sec.Type != corev1.SecretTypeTLS || string(sec.Data["ca.crt"]) != string(w.ClientConfig.CABundle) {
		t.Errorf("TLS Secret type %s; caBundle matches ca.crt: %v", sec.Type, string(sec.Data["ca.crt"]) == string(w.ClientConfig.CABundle))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(w.ClientConfig.CABundle) {
		t.Fatal("caBundle holds no PEM certificate")
	}
	blk, _ := pem.Decode(sec.Data["tls.crt"])
	if blk == nil {
		t.Fatal("tls.crt is not PEM")
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: fullname + "-injector." + namespace + ".svc"}); err != nil {
		t.Errorf("serving certificate does not verify against the caBundle for the Service name: %v", err)
	}
}

func checkNetworkPolicies(t *testing.T, m *manifests, v map[string]any) {
	t.Helper()
	if get(v, "networkPolicy.enabled") != true {
		return
	}
	inj := m.get("NetworkPolicy", fullname+"-injector")
	if inj == nil || len(inj.(*networkingv1.NetworkPolicy).Spec.Egress) != 0 || !slices.Contains(inj.(*networkingv1.NetworkPolicy).Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Error("the injector's NetworkPolicy must deny all egress")
	}
	if get(v, "nats.enabled") != true {
		return
	}
	np := m.get("NetworkPolicy", fullname+"-nats")
	if np == nil {
		t.Fatal("no NetworkPolicy for NATS")
	}
	found := false
	for _, r := range np.(*networkingv1.NetworkPolicy).Spec.Ingress {
		for _, p := range r.From {
			if p.PodSelector != nil && p.PodSelector.MatchLabels[injector.LabelSidecar] == injector.StatusInjected && p.NamespaceSelector != nil {
				found = true
			}
		}
	}
	if !found {
		t.Error("NATS must admit injected pods from any namespace")
	}
}

// The generated distribution key pair is a pair: the public key the chart
// derived in a template is the private key's.
func checkKeys(t *testing.T, m *manifests, v map[string]any) {
	t.Helper()
	o := m.get("Secret", fullname+"-keys")
	if s, _ := get(v, "issuer.keys.existingSecret").(string); s != "" {
		if o != nil {
			t.Error("keys Secret rendered although existingSecret is set")
		}
		return
	}
	if o == nil {
		t.Fatal("no keys Secret")
	}
	sec := o.(*corev1.Secret)
	if sec.Annotations["helm.sh/resource-policy"] != "keep" {
		t.Error("the keys Secret must survive an uninstall")
	}
	dir := t.TempDir()
	kf := filepath.Join(dir, "distribution.key")
	if err := os.WriteFile(kf, sec.Data["distribution.key"], 0o600); err != nil {
		t.Fatal(err)
	}
	priv, err := issuer.LoadDistributionKey(kf)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := sidecar.ParseDistributionPublicKey(string(sec.Data["distribution.pub"]))
	if err != nil {
		t.Fatalf("distribution.pub: %v\n%s", err, sec.Data["distribution.pub"])
	}
	if !pub.Equal(priv.Public().(ed25519.PublicKey)) {
		t.Fatal("distribution.pub is not the public key of distribution.key")
	}
	kek, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(sec.Data["key-encryption.key"])))
	if err != nil || len(kek) != 32 {
		t.Fatalf("key-encryption.key: %d bytes, %v", len(kek), err)
	}
}

// The schema refuses a wrong type and an unknown key, and the templates
// refuse inconsistent values, each with a message naming the problem.
func TestValuesAreValidated(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"wrong type":            {[]string{"--set", "issuer.replicas=two"}, "replicas"},
		"unknown top-level key": {[]string{"--set", "replica=3"}, "replica"},
		"unknown nested key":    {[]string{"--set", "issuer.replica=3"}, "replica"},
		"bad enum":              {[]string{"--set", "injector.webhook.failurePolicy=Sometimes"}, "failurePolicy"},
		"bad port":              {[]string{"--set", "sidecar.port=70000"}, "port"},
		"negative drain":        {[]string{"--set", "issuer.shutdownDelaySeconds=-1"}, "shutdownDelaySeconds"},
		"persistence not bool":  {[]string{"--set", "nats.persistence.enabled=maybe"}, "enabled"},
		"external without url":  {[]string{"--set", "nats.enabled=false"}, "nats.external.url"},
		"secret auth no name":   {[]string{"--set", "sidecar.nats.auth=secret", "--set", "sidecar.nats.secret.name="}, "sidecar.nats.secret.name"},
		"KEK data key path":     {[]string{"--set", "issuer.keys.keyEncryptionKey=../kek"}, "keyEncryptionKey"},
		"KEK also previous":     {[]string{"--set", "issuer.keys.previousKeyEncryptionKeys={key-encryption.key}"}, "must not list issuer.keys.keyEncryptionKey"},
		"KEK is dist key":       {[]string{"--set", "issuer.keys.keyEncryptionKey=distribution.key"}, "must not name the distribution key"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := runHelm(t, append([]string{"template", releaseName, chartDir, "--namespace", namespace}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want a failure mentioning %q, got %v", tc.want, err)
			}
		})
	}
}

// Other knobs render as they should.
func TestRenderVariants(t *testing.T) {
	t.Run("cluster issuer", func(t *testing.T) {
		t.Parallel()
		m := render(t, "--set", "certManager.enabled=true", "--set", "certManager.issuerRef.name=corp-ca", "--set", "certManager.issuerRef.kind=ClusterIssuer")
		c := m.get("Certificate", fullname+"-injector").(*certificate)
		if c.Spec.IssuerRef.Name != "corp-ca" || c.Spec.IssuerRef.Kind != "ClusterIssuer" || len(m.byKind["Issuer"]) != 0 {
			t.Errorf("issuerRef %+v, %d Issuers", c.Spec.IssuerRef, len(m.byKind["Issuer"]))
		}
	})
	t.Run("NATS without persistence", func(t *testing.T) {
		t.Parallel()
		m := render(t, "--set", "nats.persistence.enabled=false")
		s := m.get("StatefulSet", fullname+"-nats").(*appsv1.StatefulSet)
		var data *corev1.Volume
		for i := range s.Spec.Template.Spec.Volumes {
			if s.Spec.Template.Spec.Volumes[i].Name == "data" {
				data = &s.Spec.Template.Spec.Volumes[i]
			}
		}
		if len(s.Spec.VolumeClaimTemplates) != 0 || data == nil || data.EmptyDir == nil || data.EmptyDir.SizeLimit == nil {
			t.Errorf("want an emptyDir data volume with a size limit and no PVC: %+v, %d templates", data, len(s.Spec.VolumeClaimTemplates))
		}
	})
	t.Run("distribution-key rollover", func(t *testing.T) {
		t.Parallel()
		// The other key of a rollover reaches the issuers (which restart:
		// their config's checksum changes) and the injected sidecars.
		other := "EcNF7hbaFGWoTG3ZJArxrkTq23iRjHAqcZeNkHl/Zl8="
		m := render(t, "--set-json", `issuer.keys.extraTrustedPublicKeys=["`+other+`"]`)
		cfg := issuer.DefaultConfig()
		dec := yaml.NewDecoder(strings.NewReader(configMapData(t, m, fullname+"-issuer", "issuer.yaml")))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(cfg.TrustedDistributionPublicKeys, []string{other}) {
			t.Errorf("issuer trusts %q, want the extra key", cfg.TrustedDistributionPublicKeys)
		}
		if err := cfg.Validate(); err != nil {
			t.Error(err)
		}
		icfg := injector.DefaultConfig("x")
		if err := yaml.Unmarshal([]byte(configMapData(t, m, fullname+"-injector", "injector.yaml")), &icfg); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(icfg.DistributionPublicKeys, []string{other}) {
			t.Errorf("injected sidecars trust %q more, want the extra key", icfg.DistributionPublicKeys)
		}
		checksum := func(m *manifests) string {
			return m.get("Deployment", fullname+"-issuer").(*appsv1.Deployment).Spec.Template.Annotations["checksum/config"]
		}
		if checksum(m) == checksum(render(t)) {
			t.Error("the issuers would not restart when the trusted keys change")
		}
	})
	t.Run("single NATS, no policies, service monitor", func(t *testing.T) {
		t.Parallel()
		m := render(t, "--set", "nats.replicas=1", "--set", "networkPolicy.enabled=false", "--set", "serviceMonitor.enabled=true")
		if conf := configMapData(t, m, fullname+"-nats", "nats.conf"); strings.Contains(conf, "cluster {") {
			t.Error("a one-server NATS has no cluster block")
		}
		if !strings.Contains(configMapData(t, m, fullname+"-issuer", "issuer.yaml"), "replicas: 1") {
			t.Error("stream replicas must follow a one-server NATS")
		}
		if len(m.byKind["NetworkPolicy"]) != 0 || len(m.byKind["ServiceMonitor"]) != 1 || m.get("PodDisruptionBudget", fullname+"-nats") != nil {
			t.Errorf("rendered %s", kinds(m))
		}
	})
}
