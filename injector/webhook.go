package injector

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// maxReviewBytes bounds an AdmissionReview body. The API server caps an
// object at about 3 MiB; a review carries at most two of them.
const maxReviewBytes = 8 << 20

// Handler serves POST /mutate, GET /healthz and GET /readyz.
type Handler struct {
	config func() *Config
	log    *slog.Logger
	mux    *http.ServeMux
}

// NewHandler returns the webhook's HTTP handler. config is called once per
// review, so a reloaded configuration applies to the next pod.
func NewHandler(config func() *Config, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &Handler{config: config, log: log, mux: http.NewServeMux()}
	h.mux.HandleFunc("/mutate", h.serveMutate)
	ok := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	}
	h.mux.HandleFunc("GET /healthz", ok)
	// Ready whenever it serves: it needs nothing but its configuration. The
	// command makes it fail once shutdown begins, to drain.
	h.mux.HandleFunc("GET /readyz", ok)
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// serveMutate answers an AdmissionReview. Following the API server's
// contract, anything that is not a well-formed admission.k8s.io/v1
// AdmissionReview with a request and a uid gets HTTP 400 (the API server
// then applies the webhook's failurePolicy); a well-formed review always
// gets HTTP 200 with an AdmissionResponse carrying the request's uid, which
// allows the pod unchanged, allows it with a JSONPatch, or denies it with a
// message.
func (h *Handler) serveMutate(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed: POST an admission.k8s.io/v1 AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		http.Error(w, "unsupported content type: want application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReviewBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("AdmissionReview larger than %d bytes", maxReviewBytes), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "reading the request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	review, err := DecodeReview(body)
	if err != nil {
		h.log.Warn("rejected a malformed admission review", "err", err, "remote", r.RemoteAddr)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resp := h.config().Admit(review.Request, h.log)
	out, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Response: resp,
	})
	if err != nil { // cannot happen with these types
		http.Error(w, "encoding the response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

// DecodeReview parses an admission.k8s.io/v1 AdmissionReview that carries a
// request with a uid. Its errors say what is wrong, for an HTTP 400 body.
func DecodeReview(body []byte) (*admissionv1.AdmissionReview, error) {
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		return nil, fmt.Errorf("malformed AdmissionReview: %w", err)
	}
	if gv := admissionv1.SchemeGroupVersion.String(); review.APIVersion != gv || review.Kind != "AdmissionReview" {
		return nil, fmt.Errorf("want apiVersion %s, kind AdmissionReview; got apiVersion %q, kind %q", gv, review.APIVersion, review.Kind)
	}
	if review.Request == nil {
		return nil, errors.New("AdmissionReview without a request")
	}
	if review.Request.UID == "" {
		return nil, errors.New("AdmissionReview request without a uid")
	}
	return &review, nil
}

// Admit decides on one admission request. It never fails: problems become
// a denial with a message (or, for requests that are not pod creations, an
// unchanged admission).
func (c *Config) Admit(req *admissionv1.AdmissionRequest, log *slog.Logger) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	// The webhook is registered for pod creation only; anything else that
	// reaches it through a misconfiguration is let through untouched.
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.SubResource != "" || req.Operation != admissionv1.Create {
		log.Debug("not a pod creation, ignored", "kind", req.Kind.String(), "operation", req.Operation, "subresource", req.SubResource)
		return allow
	}
	if c.Namespace != "" && req.Namespace == c.Namespace {
		log.Debug("pod in the injector's own namespace, not injected", "namespace", req.Namespace)
		return allow
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil || len(req.Object.Raw) == 0 {
		if err == nil {
			err = errors.New("empty object")
		}
		log.Warn("could not decode the pod of an admission request", "uid", req.UID, "namespace", req.Namespace, "err", err)
		return deny(req, http.StatusBadRequest, metav1.StatusReasonBadRequest, "tokenwarden injector: cannot decode the pod: "+err.Error())
	}
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "*"
	}
	patch, err := c.Patch(&pod)
	switch {
	case err != nil:
		log.Warn("refused to inject a pod", "namespace", req.Namespace, "pod", name, "err", err)
		return deny(req, http.StatusUnprocessableEntity, metav1.StatusReasonInvalid, "tokenwarden injector: "+err.Error())
	case patch == nil:
		log.Debug("pod not injected", "namespace", req.Namespace, "pod", name)
		return allow
	}
	b, err := json.Marshal(patch)
	if err != nil {
		return deny(req, http.StatusInternalServerError, metav1.StatusReasonInternalError, "tokenwarden injector: encoding the patch: "+err.Error())
	}
	pt := admissionv1.PatchTypeJSONPatch
	allow.Patch, allow.PatchType = b, &pt
	allow.AuditAnnotations = map[string]string{"sidecar": "injected"}
	log.Info("injected the sidecar", "namespace", req.Namespace, "pod", name, "dry_run", req.DryRun != nil && *req.DryRun)
	return allow
}

func deny(req *admissionv1.AdmissionRequest, code int32, reason metav1.StatusReason, msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: false,
		Result: &metav1.Status{Status: metav1.StatusFailure, Code: code, Reason: reason, Message: msg}}
}

// Op is one RFC 6902 JSON Patch operation.
type Op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Wants reports whether pod asks for the sidecar and does not have it yet.
func Wants(pod *corev1.Pod) bool {
	if pod.Annotations[AnnotationInject] != "true" || pod.Annotations[AnnotationStatus] == StatusInjected {
		return false
	}
	has := func(cs []corev1.Container) bool {
		return slices.ContainsFunc(cs, func(c corev1.Container) bool { return c.Name == ContainerName })
	}
	return !has(pod.Spec.InitContainers) && !has(pod.Spec.Containers)
}

// Patch returns the JSON Patch that injects the sidecar into pod, nil when
// the pod does not ask for it or already has it, or an error saying why
// the pod cannot be injected.
func (c *Config) Patch(pod *corev1.Pod) ([]Op, error) {
	if !Wants(pod) {
		return nil, nil
	}
	if len(c.trusted) == 0 {
		return nil, errors.New("no distribution public key is configured (distribution_public_keys), so an injected sidecar could not verify anything")
	}
	if pod.Spec.HostNetwork {
		return nil, errors.New("pods with hostNetwork cannot get the sidecar: its port would be opened on the node")
	}
	audience := c.Audience
	if v, ok := pod.Annotations[AnnotationAudience]; ok {
		a, err := ParseAudience(v)
		if err != nil {
			return nil, fmt.Errorf("annotation %s: %w", AnnotationAudience, err)
		}
		audience = a
	}
	if len(audience) == 0 {
		return nil, fmt.Errorf("annotation %s is required: no default audience is configured", AnnotationAudience)
	}
	port := c.Port
	if v, ok := pod.Annotations[AnnotationPort]; ok {
		p, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("annotation %s: %q is not a port number (1 to 65535)", AnnotationPort, v)
		}
		port = p
	}
	grpcPort := c.GRPCPort
	v, explicit := pod.Annotations[AnnotationGRPCPort]
	if explicit {
		switch v = strings.TrimSpace(v); v {
		case "off", "false", "0":
			grpcPort = 0
		default:
			p, err := strconv.Atoi(v)
			if err != nil || p < 1 || p > 65535 {
				return nil, fmt.Errorf("annotation %s: %q is not a port number (1 to 65535) or off", AnnotationGRPCPort, v)
			}
			grpcPort = p
		}
	}
	if !explicit && grpcPort != 0 && (grpcPort == port || portUsed(pod, grpcPort)) {
		// The default gRPC port is taken in this pod (a pod chose it for
		// HTTP before the sidecar had gRPC): such a pod keeps working as
		// before, without gRPC, unless it asks for a gRPC port.
		grpcPort = 0
	}
	if grpcPort == port {
		return nil, fmt.Errorf("the sidecar's HTTP and gRPC ports are both %d; change one with annotation %s or %s", port, AnnotationPort, AnnotationGRPCPort)
	}
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, ctr := range cs {
			for _, p := range ctr.Ports {
				if int(p.ContainerPort) == port {
					return nil, fmt.Errorf("port %d is already used by container %q; choose another with annotation %s", port, ctr.Name, AnnotationPort)
				}
				if grpcPort != 0 && int(p.ContainerPort) == grpcPort {
					return nil, fmt.Errorf("port %d is already used by container %q; choose another sidecar gRPC port with annotation %s (or off)", grpcPort, ctr.Name, AnnotationGRPCPort)
				}
				if p.Name == PortName {
					return nil, fmt.Errorf("container %q already has a port named %q", ctr.Name, PortName)
				}
			}
		}
	}
	volumes := []corev1.Volume{{Name: CacheVolume, VolumeSource: corev1.VolumeSource{
		EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: ptr(resource.MustParse("8Mi"))}}}}
	if c.NATS.CredsSecret.Set() {
		volumes = append(volumes, corev1.Volume{Name: CredsVolume, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: c.NATS.CredsSecret.Name,
			Items:      []corev1.KeyToPath{{Key: c.NATS.CredsSecret.Key, Path: credsFile}},
		}}})
	}
	for _, v := range volumes {
		if slices.ContainsFunc(pod.Spec.Volumes, func(pv corev1.Volume) bool { return pv.Name == v.Name }) {
			return nil, fmt.Errorf("the pod already has a volume named %q", v.Name)
		}
	}
	ctr, err := c.container(audience, port, grpcPort)
	if err != nil {
		return nil, err
	}

	var ops []Op
	if pod.Annotations == nil { // never: the inject annotation is there
		ops = append(ops, Op{"add", "/metadata/annotations", map[string]string{AnnotationStatus: StatusInjected}})
	} else {
		ops = append(ops, Op{"add", "/metadata/annotations/" + escape(AnnotationStatus), StatusInjected})
	}
	if pod.Labels == nil {
		ops = append(ops, Op{"add", "/metadata/labels", map[string]string{LabelSidecar: StatusInjected}})
	} else {
		ops = append(ops, Op{"add", "/metadata/labels/" + escape(LabelSidecar), StatusInjected})
	}
	if len(pod.Spec.Volumes) == 0 {
		ops = append(ops, Op{"add", "/spec/volumes", volumes})
	} else {
		for _, v := range volumes {
			ops = append(ops, Op{"add", "/spec/volumes/-", v})
		}
	}
	// The sidecar goes after the pod's own init containers (which may set
	// up the network, as a mesh's do) and before the app containers, which
	// the kubelet starts only once its startup probe has passed.
	if len(pod.Spec.InitContainers) == 0 {
		ops = append(ops, Op{"add", "/spec/initContainers", []corev1.Container{ctr}})
	} else {
		ops = append(ops, Op{"add", "/spec/initContainers/-", ctr})
	}
	return ops, nil
}

// container is the sidecar as a native sidecar container.
func (c *Config) container(audience []string, port, grpcPort int) (corev1.Container, error) {
	res, err := c.Resources.requirements()
	if err != nil {
		return corev1.Container{}, err
	}
	env := []corev1.EnvVar{
		{Name: "TOKENWARDEN_LISTEN", Value: ":" + strconv.Itoa(port)},
		// The gRPC API stays on loopback: its one client is the proxy in
		// the pod (Istio's), and it has no TLS. Empty turns it off.
		{Name: "TOKENWARDEN_GRPC_ADDR", Value: grpcAddr(grpcPort)},
		{Name: "TOKENWARDEN_ISSUER", Value: c.Issuer},
		{Name: "TOKENWARDEN_AUDIENCE", Value: strings.Join(audience, ",")},
		{Name: "TOKENWARDEN_DISTRIBUTION_PUBLIC_KEYS", Value: strings.Join(c.trusted, ",")},
		{Name: "TOKENWARDEN_NATS_PREFIX", Value: c.NATS.Prefix},
		{Name: "TOKENWARDEN_CACHE_DIR", Value: CacheDir},
		{Name: "TOKENWARDEN_LOG_LEVEL", Value: c.LogLevel},
		{Name: "TOKENWARDEN_LOG_FORMAT", Value: c.LogFormat},
		{Name: "TOKENWARDEN_REVOCATION_MAX_STALENESS", Value: c.RevocationMaxStaleness.String()},
	}
	if c.NATS.URLSecret.Set() {
		env = append(env, corev1.EnvVar{Name: "TOKENWARDEN_NATS_URL", ValueFrom: &corev1.EnvVarSource{
			SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: c.NATS.URLSecret.Name}, Key: c.NATS.URLSecret.Key}}})
	} else {
		env = append(env, corev1.EnvVar{Name: "TOKENWARDEN_NATS_URL", Value: c.NATS.URL})
	}
	mounts := []corev1.VolumeMount{{Name: CacheVolume, MountPath: CacheDir}}
	if c.NATS.CredsSecret.Set() {
		env = append(env, corev1.EnvVar{Name: "TOKENWARDEN_NATS_CREDS", Value: CredsDir + "/" + credsFile})
		mounts = append(mounts, corev1.VolumeMount{Name: CredsVolume, MountPath: CredsDir, ReadOnly: true})
	}
	if _, ok := res.Limits[corev1.ResourceMemory]; ok {
		// The Go runtime keeps the heap under the container's memory limit.
		env = append(env, corev1.EnvVar{Name: "GOMEMLIMIT", ValueFrom: &corev1.EnvVarSource{
			ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: ContainerName, Resource: "limits.memory"}}})
	}
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString(PortName), Scheme: corev1.URISchemeHTTP}},
			PeriodSeconds: period, FailureThreshold: failures, TimeoutSeconds: 2, SuccessThreshold: 1,
		}
	}
	return corev1.Container{
		Name:            ContainerName,
		Image:           c.Image,
		ImagePullPolicy: corev1.PullPolicy(c.ImagePullPolicy),
		Args:            []string{"sidecar"},
		// A native sidecar: started in order with the init containers, kept
		// running beside the app, stopped after it.
		RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways),
		Ports:         []corev1.ContainerPort{{Name: PortName, ContainerPort: int32(port), Protocol: corev1.ProtocolTCP}}, // #nosec G115 -- port is checked to be 1..65535
		Env:           env,
		Resources:     res,
		VolumeMounts:  mounts,
		// The app starts only once this passes: keys verified and the
		// revocation stream replayed. Up to 2 minutes, for a NATS that is
		// still starting.
		StartupProbe:             probe("/readyz", 1, 120),
		ReadinessProbe:           probe("/readyz", 5, 3),
		LivenessProbe:            probe("/healthz", 10, 3),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext:          RestrictedSecurityContext(),
	}, nil
}

// portUsed reports whether a container of pod declares port.
func portUsed(pod *corev1.Pod, port int) bool {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, ctr := range cs {
			for _, p := range ctr.Ports {
				if int(p.ContainerPort) == port {
					return true
				}
			}
		}
	}
	return false
}

func grpcAddr(port int) string {
	if port == 0 {
		return ""
	}
	return "127.0.0.1:" + strconv.Itoa(port)
}

// RestrictedSecurityContext is the container security context of the
// Kubernetes "restricted" Pod Security Standard, with a read-only root
// filesystem and the image's numeric non-root user.
func RestrictedSecurityContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsNonRoot:             ptr(true),
		RunAsUser:                ptr(int64(sidecarUID)),
		RunAsGroup:               ptr(int64(sidecarUID)),
		ReadOnlyRootFilesystem:   ptr(true),
		AllowPrivilegeEscalation: ptr(false),
		Privileged:               ptr(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// escape makes s one JSON Pointer reference token (RFC 6901).
func escape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func ptr[T any](v T) *T { return &v }
