package k8s

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestChartOnKubernetes is the chart's life on a real cluster, in order: each phase builds on
// the one before, and the timings of all of them are printed at the end.
func TestChartOnKubernetes(t *testing.T) {
	e := newEnv(t)
	defer e.printTimings()
	must := func(name string, f func(t *testing.T)) {
		if !e.phase(name, f) {
			t.FailNow()
		}
	}

	must("install as documented (helm install --wait, helm test)", func(t *testing.T) {
		e.script(t, e.docBlock(t, "local-cluster-install"))
	})
	must("all pods ready: 3 NATS, 2 issuers, 2 injectors", e.checkPodsReady)
	must("app deployed with the injected sidecar", e.checkInjected)

	issuer := e.serviceURL(t, ns, "tokenwarden-issuer")
	app := e.serviceURL(t, appNS, "testapp")
	t.Logf("issuer %s, app %s", issuer, app)

	must("token flow through the cluster's Services", func(t *testing.T) { e.tokenFlow(t, issuer, app) })
	e.phase("key rotation under load: 0 refused", func(t *testing.T) { e.rotationUnderLoad(t, issuer, app) })
	e.phase("issuer rollout: 0 failed token requests", func(t *testing.T) {
		e.rolloutUnderLoad(t, issuer, app, "deploy/tokenwarden-issuer")
	})
	e.phase("injector rollout: 0 failed pod admissions", e.injectorRollout)
	e.phase("NATS rollout: 0 failed requests", func(t *testing.T) {
		e.rolloutUnderLoad(t, issuer, app, "sts/tokenwarden-nats")
	})
	e.phase("delete a NATS pod: verify, revoke, rejoin", func(t *testing.T) { e.deleteNATSPod(t, issuer, app) })
	e.phase("delete an issuer pod: logins keep working", func(t *testing.T) { e.deleteIssuerPod(t, issuer) })
	e.phase("restart the app: the sidecar is injected again", func(t *testing.T) {
		e.kubectl(t, "-n", appNS, "rollout", "restart", "deploy/testapp")
		e.kubectl(t, "-n", appNS, "rollout", "status", "deploy/testapp", "--timeout=3m")
		e.checkInjected(t)
		tk := e.mustLogin(t, issuer, "read")
		eventually(t, 30*time.Second, "the restarted app accepts a token", func() error {
			return expectStatus(e.callApp(app, "/", tk.Access))(http.StatusOK)
		})
	})
	e.phase("kubelet probes are not logged at info", e.checkProbeLogs)
	e.phase("helm upgrade: issuer.replicas=3", func(t *testing.T) {
		e.helm(t, "upgrade", release, "charts/tokenwarden", "-n", ns, "--reuse-values", "--set", "issuer.replicas=3", "--wait", "--timeout=5m")
		if got := e.jsonpath(t, ns, "deploy/tokenwarden-issuer", "{.status.readyReplicas}"); got != "3" {
			t.Fatalf("ready issuers after the upgrade: %s, want 3", got)
		}
		e.mustLogin(t, issuer, "read")
	})
	e.phase("uninstall and install again: running sidecars keep applying revocations", func(t *testing.T) {
		e.reinstall(t, app)
	})
	e.phase("uninstall: only what the docs say stays", e.uninstall)
	e.phase("trial install (examples/minimal.yaml): admin works, growing NATS to 3 is refused", e.trial)
}

func expectStatus(a appAnswer, err error) func(want int) error {
	return func(want int) error {
		if err != nil {
			return err
		}
		if a.status != want {
			return fmt.Errorf("status %d, want %d (%s %s)", a.status, want, a.challenge, strings.TrimSpace(a.body))
		}
		return nil
	}
}

// pods returns the pods of a namespace matching a label selector.
func (e *env) pods(t *testing.T, namespace, selector string) []corev1.Pod {
	t.Helper()
	var list corev1.PodList
	if err := json.Unmarshal([]byte(e.kubectl(t, "-n", namespace, "get", "pods", "-l", selector, "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func podReady(p corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (e *env) checkPodsReady(t *testing.T) {
	for component, want := range map[string]int{"nats": 3, "issuer": 2, "injector": 2} {
		pods := e.pods(t, ns, "app.kubernetes.io/component="+component)
		ready := 0
		for _, p := range pods {
			if podReady(p) {
				ready++
			}
		}
		if ready != want {
			t.Errorf("%s: %d of %d pods ready, want %d", component, ready, len(pods), want)
		}
	}
	// The test's StorageClass (hack/cluster/up.sh: local PersistentVolumes, no provisioner) holds
	// the NATS data.
	out := e.kubectl(t, "-n", ns, "get", "pvc", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.phase}/{.spec.storageClassName} {end}")
	if strings.Count(out, "=Bound/local") != 3 {
		t.Errorf("NATS PVCs: %s, want 3 bound with StorageClass local", out)
	}
}

// checkInjected: the API server called the webhook, the pod has the native sidecar, and the app
// started only once the sidecar was ready.
func (e *env) checkInjected(t *testing.T) {
	if !t.Run("deploy", func(t *testing.T) {
		// Once only: the app block of the docs creates the namespace.
		if _, err := e.run(t.Context(), "", "kubectl", "get", "ns", appNS); err != nil {
			e.script(t, e.docBlock(t, "local-cluster-app"))
		}
	}) {
		t.FailNow()
	}
	var pod *corev1.Pod
	eventually(t, 2*time.Minute, "one ready testapp pod", func() error {
		pods := e.pods(t, appNS, "app=testapp")
		var ready []corev1.Pod
		for _, p := range pods {
			if podReady(p) {
				ready = append(ready, p)
			}
		}
		if len(ready) != 1 || len(pods) != 1 {
			return fmt.Errorf("%d pods, %d ready", len(pods), len(ready))
		}
		pod = &ready[0]
		return nil
	})
	if got := pod.Annotations["tokenwarden.io/status"]; got != "injected" {
		t.Errorf("annotation tokenwarden.io/status = %q, want injected (the webhook did not run)", got)
	}
	i := slices.IndexFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == "tokenwarden-sidecar" })
	if i < 0 {
		t.Fatalf("no tokenwarden-sidecar init container: %v", pod.Spec.InitContainers)
	}
	sc := pod.Spec.InitContainers[i]
	if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("the sidecar is not a native sidecar (restartPolicy %v)", sc.RestartPolicy)
	}
	if sc.StartupProbe == nil {
		t.Errorf("the sidecar has no startup probe: the app would not wait for it")
	}
	// The test app asks the sidecar's /readyz first thing and logs the answer.
	logs := e.kubectl(t, "-n", appNS, "logs", pod.Name, "-c", "app")
	if !strings.Contains(logs, "sidecar ready at start: 200") {
		t.Errorf("the app did not find the sidecar ready when it started; its log:\n%s", logs)
	}
}

// claims decodes a JWT's payload without verifying it (the sidecar does that).
func claims(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %q", token)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// refusedWithin polls the app until it refuses token with 401, and returns how long it took.
func (e *env) refusedWithin(t *testing.T, app, token string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		a, err := e.callApp(app, "/", token)
		if err == nil && a.status == http.StatusUnauthorized {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("the app still answers %d (%v) %s after the revocation", a.status, err, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) tokenFlow(t *testing.T, issuer, app string) {
	tk := e.mustLogin(t, issuer, "read write")
	a, err := e.callApp(app, "/", tk.Access)
	if err := expectStatus(a, err)(http.StatusOK); err != nil {
		t.Fatal(err)
	}
	if a.subject != "demo" {
		t.Errorf("subject the app saw: %q, want demo", a.subject)
	}
	a, err = e.callApp(app, "/", "")
	if err := expectStatus(a, err)(http.StatusUnauthorized); err != nil {
		t.Error(err)
	} else if !strings.HasPrefix(a.challenge, `Bearer realm="tokenwarden"`) {
		t.Errorf("WWW-Authenticate without a token: %q", a.challenge)
	}
	read := e.mustLogin(t, issuer, "read")
	a, err = e.callApp(app, "/write", read.Access)
	if err := expectStatus(a, err)(http.StatusForbidden); err != nil {
		t.Error(err)
	} else if !strings.Contains(a.challenge, `error="insufficient_scope"`) {
		t.Errorf("WWW-Authenticate for a missing scope: %q", a.challenge)
	}

	// Security revokes this one token through the admin API.
	jti, _ := claims(t, tk.Access)["jti"].(string)
	e.admin(t, issuer, "revoke", "jti", jti, "--reason", "e2e")
	took := e.refusedWithin(t, app, tk.Access, time.Second)
	t.Logf("revoked token refused %s after `tokenwarden revoke` returned", took.Round(time.Millisecond))

	// Refresh (with the client's secret), then log out: the session's tokens die.
	fresh, _, err := e.token(issuer, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {read.Refresh}}, "demo-app", "demo-secret")
	if err != nil {
		t.Fatal(err)
	}
	if err := expectStatus(e.callApp(app, "/", fresh.Access))(http.StatusOK); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, issuer+"/oauth2/revoke", strings.NewReader(url.Values{"token": {fresh.Refresh}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("demo-app", "demo-secret")
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	took = e.refusedWithin(t, app, fresh.Access, time.Second)
	t.Logf("logged-out session refused %s after the logout", took.Round(time.Millisecond))
}

// verifyLoop logs in now and then and has the app verify the latest token every 50 ms.
func (e *env) verifyLoop(t *testing.T, issuer, app string) *loop {
	t.Helper()
	var mu = make(chan string, 1)
	mu <- e.mustLogin(t, issuer, "read").Access
	n := 0
	return startLoop(50*time.Millisecond, func() error {
		tok := <-mu
		defer func() { mu <- tok }()
		if n++; n%20 == 0 { // a new token every second: tokens of the new key after a rotation
			tk, err := e.login(issuer, "read")
			if err != nil {
				return fmt.Errorf("login: %w", err)
			}
			tok = tk.Access
		}
		return expectStatus(e.callApp(app, "/", tok))(http.StatusOK)
	})
}

func (e *env) rotationUnderLoad(t *testing.T, issuer, app string) {
	l := e.verifyLoop(t, issuer, app)
	time.Sleep(time.Second)
	// A fresh install's next key may sign only once every sidecar has had it for the
	// propagation delay (30 s in local-cluster.yaml): until then rotate answers 409.
	var out string
	eventually(t, 90*time.Second, "keys rotate accepted", func() error {
		var err error
		out, err = e.tw(issuer, "keys", "rotate")
		return err
	})
	t.Logf("keys rotate:\n%s", out)
	time.Sleep(5 * time.Second)
	l.finish(t, "verifications across the rotation")
}

// rolloutUnderLoad restarts a workload while logins and verifications go on: none may fail.
func (e *env) rolloutUnderLoad(t *testing.T, issuer, app, workload string) {
	verify := e.verifyLoop(t, issuer, app)
	logins := startLoop(100*time.Millisecond, func() error {
		_, err := e.login(issuer, "read")
		return err
	})
	e.kubectl(t, "-n", ns, "rollout", "restart", workload)
	e.kubectl(t, "-n", ns, "rollout", "status", workload, "--timeout=5m")
	time.Sleep(2 * time.Second)
	logins.finish(t, "logins during the rollout of "+workload)
	verify.finish(t, "verifications during the rollout of "+workload)
}

// injectorRollout admits pods (server-side dry runs, which call the webhook like real creations)
// while the injector rolls: none may be refused or left without its sidecar.
func (e *env) injectorRollout(t *testing.T) {
	pod := `{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"admit-","namespace":"` + appNS + `",
"annotations":{"tokenwarden.io/inject":"true","tokenwarden.io/audience":"demo-api"}},
"spec":{"automountServiceAccountToken":false,"securityContext":{"runAsNonRoot":true,"runAsUser":65532,"seccompProfile":{"type":"RuntimeDefault"}},
"containers":[{"name":"app","image":"tokenwarden-testapp:local","imagePullPolicy":"Never",
"securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}}]}}`
	admit := func() error {
		out, err := e.run(t.Context(), pod, "kubectl", "create", "--dry-run=server", "-o", "json", "-f", "-")
		if err != nil {
			return err
		}
		if !strings.Contains(out, `"tokenwarden-sidecar"`) {
			return fmt.Errorf("admitted without the sidecar")
		}
		return nil
	}
	if err := admit(); err != nil {
		t.Fatal(err)
	}
	l := startLoop(100*time.Millisecond, admit)
	e.kubectl(t, "-n", ns, "rollout", "restart", "deploy/tokenwarden-injector")
	e.kubectl(t, "-n", ns, "rollout", "status", "deploy/tokenwarden-injector", "--timeout=5m")
	time.Sleep(2 * time.Second)
	l.finish(t, "pod admissions during the injector rollout")
}

func (e *env) deleteNATSPod(t *testing.T, issuer, app string) {
	verify := e.verifyLoop(t, issuer, app)
	e.kubectl(t, "-n", ns, "delete", "pod", "tokenwarden-nats-1", "--wait=false")
	time.Sleep(time.Second)
	// While it is gone: a revocation still arrives.
	tk := e.mustLogin(t, issuer, "read")
	if err := expectStatus(e.callApp(app, "/", tk.Access))(http.StatusOK); err != nil {
		t.Fatal(err)
	}
	e.admin(t, issuer, "revoke", "jti", claims(t, tk.Access)["jti"].(string), "--reason", "e2e nats-1 down")
	took := e.refusedWithin(t, app, tk.Access, 5*time.Second)
	t.Logf("revocation with a NATS server down refused %s after the command returned", took.Round(time.Millisecond))
	eventually(t, 3*time.Minute, "tokenwarden-nats-1 back and ready", func() error {
		for _, p := range e.pods(t, ns, "app.kubernetes.io/component=nats") {
			if p.Name == "tokenwarden-nats-1" && podReady(p) {
				return nil
			}
		}
		return fmt.Errorf("not ready")
	})
	// Rejoined: its JetStream view has a meta leader and a cluster of 3, and its health check
	// (which includes its streams being current) passes.
	ip := e.jsonpath(t, ns, "pod/tokenwarden-nats-1", "{.status.podIP}")
	eventually(t, time.Minute, "tokenwarden-nats-1 rejoined the JetStream cluster", func() error {
		var jsz struct {
			Meta struct {
				Leader      string `json:"leader"`
				ClusterSize int    `json:"cluster_size"`
			} `json:"meta_cluster"`
		}
		resp, err := e.hc.Get("http://" + ip + ":8222/jsz")
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		if err := json.NewDecoder(resp.Body).Decode(&jsz); err != nil {
			return err
		}
		if jsz.Meta.Leader == "" || jsz.Meta.ClusterSize != 3 {
			return fmt.Errorf("meta leader %q, cluster size %d", jsz.Meta.Leader, jsz.Meta.ClusterSize)
		}
		h, err := e.hc.Get("http://" + ip + ":8222/healthz")
		if err != nil {
			return err
		}
		_ = h.Body.Close()
		if h.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz %d", h.StatusCode)
		}
		return nil
	})
	verify.finish(t, "verifications while a NATS pod was deleted")
}

func (e *env) deleteIssuerPod(t *testing.T, issuer string) {
	logins := startLoop(100*time.Millisecond, func() error {
		_, err := e.login(issuer, "read")
		return err
	})
	pods := e.pods(t, ns, "app.kubernetes.io/component=issuer")
	e.kubectl(t, "-n", ns, "delete", "pod", pods[0].Name)
	e.kubectl(t, "-n", ns, "rollout", "status", "deploy/tokenwarden-issuer", "--timeout=3m")
	time.Sleep(2 * time.Second)
	logins.finish(t, "logins while an issuer pod was deleted")
}

// probeLine is an access-log line (internal/accesslog) of a probe route.
var probeLine = regexp.MustCompile(`"route":"([A-Z]+ )?/(readyz|healthz|metrics)"`)

// checkProbeLogs: a kubelet probing every few seconds must not fill the logs at info level.
func (e *env) checkProbeLogs(t *testing.T) {
	for _, c := range []struct{ ns, selector, container string }{
		{ns, "app.kubernetes.io/component=issuer", "issuer"},
		{ns, "app.kubernetes.io/component=injector", ""},
		{appNS, "app=testapp", "tokenwarden-sidecar"},
	} {
		pods := e.pods(t, c.ns, c.selector)
		if len(pods) == 0 {
			t.Fatalf("no pod %s", c.selector)
		}
		args := []string{"-n", c.ns, "logs", pods[0].Name}
		if c.container != "" {
			args = append(args, "-c", c.container)
		}
		logs := e.kubectl(t, args...)
		for _, line := range strings.Split(logs, "\n") {
			if probeLine.MatchString(line) {
				t.Errorf("%s logs a probe: %s", pods[0].Name, line)
				break
			}
		}
	}
}

// reinstall: helm uninstall then install while the app keeps running. Its sidecar must come
// back to the reinstalled NATS (same credentials, kept data) and apply a revocation made after.
func (e *env) reinstall(t *testing.T, app string) {
	e.helm(t, "uninstall", release, "-n", ns, "--wait", "--timeout=5m")
	e.script(t, e.docBlock(t, "local-cluster-reinstall"))
	issuer := e.serviceURL(t, ns, "tokenwarden-issuer")
	var tk *tokens
	eventually(t, time.Minute, "a login after the reinstall", func() error {
		var err error
		tk, err = e.login(issuer, "read")
		return err
	})
	// Keys survived (kept Secret, kept NATS data): the running sidecar accepts the new token.
	eventually(t, time.Minute, "the app's running sidecar accepts a token of the reinstalled issuer", func() error {
		return expectStatus(e.callApp(app, "/", tk.Access))(http.StatusOK)
	})
	e.admin(t, issuer, "revoke", "client", "demo-app", "--reason", "e2e after reinstall")
	took := e.refusedWithin(t, app, tk.Access, 5*time.Second)
	t.Logf("revocation after the reinstall refused %s after the command returned", took.Round(time.Millisecond))
	// The sidecar stayed truthful: ready again, with a fresh revocation set.
	pod := e.pods(t, appNS, "app=testapp")[0]
	if !podReady(pod) {
		t.Errorf("the app pod is not ready after the reinstall")
	}
}

// uninstall: helm uninstall leaves only what docs/kubernetes.md says stays, and the documented
// clean-up removes that.
func (e *env) uninstall(t *testing.T) {
	e.helm(t, "uninstall", release, "-n", ns, "--wait", "--timeout=5m")
	eventually(t, 2*time.Minute, "the release's pods gone", func() error {
		if pods := e.pods(t, ns, "app.kubernetes.io/instance="+release); len(pods) > 0 {
			return fmt.Errorf("%d pods left", len(pods))
		}
		return nil
	})
	kinds := "all,configmaps,secrets,serviceaccounts,roles,rolebindings,networkpolicies,poddisruptionbudgets,persistentvolumeclaims"
	left := strings.Fields(e.kubectl(t, "-n", ns, "get", kinds, "-o", "name"))
	var unexpected []string
	for _, o := range left {
		switch o {
		case "secret/tokenwarden-keys", "secret/tokenwarden-nats-auth",
			"persistentvolumeclaim/data-tokenwarden-nats-0", "persistentvolumeclaim/data-tokenwarden-nats-1",
			"persistentvolumeclaim/data-tokenwarden-nats-2", "configmap/kube-root-ca.crt", "serviceaccount/default":
		default:
			unexpected = append(unexpected, o)
		}
	}
	if len(unexpected) > 0 {
		t.Errorf("left after helm uninstall, not documented: %v (all: %v)", unexpected, left)
	}
	cluster := e.kubectl(t, "get", "mutatingwebhookconfigurations,clusterroles,clusterrolebindings", "-o", "name")
	for _, o := range strings.Fields(cluster) {
		if strings.Contains(o, "tokenwarden") {
			t.Errorf("cluster-scoped object left after helm uninstall: %s", o)
		}
	}
	e.script(t, e.docBlock(t, "local-cluster-cleanup"))
	if left := strings.TrimSpace(e.kubectl(t, "-n", ns, "get", "secrets,pvc", "-o", "name", "--ignore-not-found")); left != "" {
		t.Errorf("left after the documented clean-up: %s", left)
	}
}

// trial: examples/minimal.yaml installs (1 NATS, 1 issuer), its admin client works, and growing
// it to 3 NATS servers is refused with a clear message instead of splitting the stored state.
func (e *env) trial(t *testing.T) {
	const trialNS = "trial"
	e.kubectl(t, "create", "namespace", trialNS)
	e.kubectl(t, "label", "namespace", trialNS, "pod-security.kubernetes.io/enforce=restricted")
	defer func() {
		_, _ = e.run(t.Context(), "", "helm", "uninstall", "trial", "-n", trialNS, "--wait")
		_, _ = e.run(t.Context(), "", "kubectl", "delete", "namespace", trialNS, "--wait=false")
	}()
	images := []string{"--set", "image.repository=tokenwarden,image.tag=local,image.pullPolicy=Never,nats.image.repository=tokenwarden-nats,nats.image.tag=2.15.2,nats.image.pullPolicy=Never"}
	e.helm(t, append([]string{"install", "trial", "charts/tokenwarden", "-n", trialNS, "-f", "charts/tokenwarden/examples/minimal.yaml", "--wait", "--timeout=5m"}, images...)...)
	issuer := e.serviceURL(t, trialNS, "trial-tokenwarden-issuer")
	out := e.admin(t, issuer, "keys", "list")
	if !strings.Contains(out, "active") {
		t.Errorf("keys list against the trial install:\n%s", out)
	}
	upgrade, err := e.run(t.Context(), "", "helm", append([]string{"upgrade", "trial", "charts/tokenwarden", "-n", trialNS, "--reuse-values", "--set", "nats.replicas=3", "--wait", "--timeout=2m"}, images...)...)
	if err == nil {
		t.Fatalf("growing the trial's NATS from 1 to 3 servers was accepted:\n%s", upgrade)
	}
	if !strings.Contains(err.Error(), "docs/kubernetes.md") {
		t.Errorf("the refusal does not point at the documented migration: %v", err)
	}
	if got := e.jsonpath(t, trialNS, "sts/trial-tokenwarden-nats", "{.spec.replicas}"); got != "1" {
		t.Errorf("NATS replicas after the refused upgrade: %s", got)
	}
	e.admin(t, issuer, "keys", "list") // still serving
}
