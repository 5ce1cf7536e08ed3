package injector_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

// FuzzMutate sends the webhook what the API server could: a fuzzed
// AdmissionReview (whole=true) or a well-formed review around a fuzzed pod.
// It must answer 200 with the request's uid, 400 or 413, never fail
// otherwise; a denial must say why; for a pod, a patch must apply and yield
// a pod that the webhook then leaves alone (injection is idempotent).
func FuzzMutate(f *testing.F) {
	for _, name := range []string{"pod.yaml", "pod-mesh.yaml", "pod.injected.yaml"} {
		pod := readPod(f, name)
		f.Add(false, pod)
		f.Add(true, review("seed", "apps", pod))
	}
	f.Add(false, []byte(`{"metadata":{"annotations":{"tokenwarden.io/inject":"true","tokenwarden.io/audience":"a,,b"}},"spec":{"containers":[]}}`))
	f.Add(false, []byte(`{"metadata":{"annotations":{"tokenwarden.io/inject":"true"}},"spec":{"initContainers":null,"volumes":[{"name":"tokenwarden"}]}}`))
	f.Add(true, []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}`))
	f.Add(true, []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`))
	f.Add(true, []byte(`[]`))
	cfg := testConfig(f)
	h := handler(cfg)
	f.Fuzz(func(t *testing.T, whole bool, data []byte) {
		body := data
		if !whole {
			// The API server sends the pod as it serialises its typed
			// object (metadata and spec always present): fuzzed bytes
			// that do not decode as a pod are no such request.
			var pod corev1.Pod
			if json.Unmarshal(data, &pod) != nil {
				return
			}
			typed, err := json.Marshal(&pod)
			if err != nil {
				return
			}
			body = review("fuzz", "apps", typed)
		}
		req := httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK:
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			if !whole {
				t.Fatalf("a well-formed review got HTTP %d: %s", rec.Code, rec.Body.String())
			}
			return
		default:
			t.Fatalf("HTTP %d: %s", rec.Code, rec.Body.String())
		}
		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
			t.Fatalf("response is not an AdmissionReview with a response: %v\n%s", err, rec.Body.String())
		}
		resp := out.Response
		var in admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &in); err != nil || in.Request == nil || resp.UID != in.Request.UID {
			t.Fatalf("response uid %q is not the request's", resp.UID)
		}
		if !resp.Allowed {
			if resp.Result == nil || resp.Result.Message == "" {
				t.Fatal("denied without a message")
			}
			return
		}
		if resp.Patch == nil || whole {
			return // a fuzzed review's object need not be what an API server sends
		}
		if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("patch type %v, want JSONPatch", resp.PatchType)
		}
		patched, err := applyPatch(in.Request.Object.Raw, resp.Patch)
		if err != nil {
			t.Fatalf("the patch does not apply: %v\npatch: %s", err, resp.Patch)
		}
		var pod corev1.Pod
		if err := json.Unmarshal(patched, &pod); err != nil {
			t.Fatalf("the patched object is not a pod: %v", err)
		}
		in.Request.Object.Raw = patched
		if r := cfg.Admit(in.Request, quiet()); r.Patch != nil {
			t.Fatalf("the injected pod was patched again: %s", r.Patch)
		}
	})
}
