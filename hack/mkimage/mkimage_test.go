package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"go.yaml.in/yaml/v3"
)

const repoRoot = "../.."

// distrolessNonroot is the base image mkimage's base layer and config
// stand in for; the Dockerfile must still build FROM it.
const distrolessNonroot = "gcr.io/distroless/static-debian12:nonroot"

const testCA = "-----BEGIN CERTIFICATE-----\nMIIBstandin\n-----END CERTIFICATE-----\n"

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

// dockerStage is the final stage of a Dockerfile, as far as the image
// config goes.
type dockerStage struct {
	from       string
	args       map[string]string // ARG name → default
	labels     map[string]string
	user       string
	expose     []string
	entrypoint []string
	cmd        []string
	env        map[string]string
	workdir    string
	copies     [][]string // COPY arguments
	unknown    []string   // instructions mkimage does not model
}

// parseDockerfile reads the instructions of the last FROM stage. It fails
// on an instruction mkimage does not model, so a Dockerfile change that
// alters the image cannot pass unnoticed.
func parseDockerfile(t *testing.T, path string) dockerStage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, drop comments and blank lines.
	var lines []string
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "#") || (l == "" && cur.Len() == 0) {
			continue
		}
		if c, ok := strings.CutSuffix(l, `\`); ok {
			cur.WriteString(c + " ")
			continue
		}
		cur.WriteString(l)
		lines = append(lines, cur.String())
		cur.Reset()
	}
	st := dockerStage{args: map[string]string{}, labels: map[string]string{}, env: map[string]string{}}
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			st = dockerStage{from: strings.Fields(rest)[0], args: map[string]string{}, labels: map[string]string{}, env: map[string]string{}}
		case "ARG":
			k, v, _ := strings.Cut(rest, "=")
			st.args[k] = v
		case "LABEL":
			for k, v := range keyValues(t, rest) {
				st.labels[k] = v
			}
		case "ENV":
			for k, v := range keyValues(t, rest) {
				st.env[k] = v
			}
		case "USER":
			st.user = rest
		case "WORKDIR":
			st.workdir = rest
		case "EXPOSE":
			st.expose = strings.Fields(rest)
		case "ENTRYPOINT":
			st.entrypoint = jsonArray(t, rest)
		case "CMD":
			st.cmd = jsonArray(t, rest)
		case "COPY":
			st.copies = append(st.copies, strings.Fields(rest))
		default:
			st.unknown = append(st.unknown, l)
		}
	}
	if st.from == "" {
		t.Fatal("Dockerfile: no FROM")
	}
	// Build stages may RUN anything; the final one only what mkimage models.
	for _, l := range st.unknown {
		t.Errorf("Dockerfile final stage: mkimage does not model %q; update hack/mkimage and this test", l)
	}
	return st
}

var kvRE = regexp.MustCompile(`([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|\S+)`)

func keyValues(t *testing.T, s string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, kv := range kvRE.FindAllStringSubmatch(s, -1) {
		v := kv[2]
		if strings.HasPrefix(v, `"`) {
			if err := json.Unmarshal([]byte(v), &v); err != nil {
				t.Fatalf("LABEL/ENV value %s: %v", kv[2], err)
			}
		}
		m[kv[1]] = v
	}
	if len(m) == 0 {
		t.Fatalf("no key=value in %q", s)
	}
	return m
}

func jsonArray(t *testing.T, s string) []string {
	t.Helper()
	var a []string
	if err := json.Unmarshal([]byte(s), &a); err != nil {
		t.Fatalf("%q is not the exec (JSON) form: %v", s, err)
	}
	return a
}

// expand replaces ${NAME} and $NAME by vars.
func expand(s string, vars map[string]string) string {
	return os.Expand(s, func(k string) string { return vars[k] })
}

// standIn is a tiny file in place of a real binary.
func standIn(s string) []byte { return []byte("#!stand-in " + s + "\n") }

func tokenwardenInput(bin []byte, version string) specInput {
	return specInput{
		Ref: "docker.io/library/tokenwarden:" + version, Version: version, Binary: bin,
		CABundle: []byte(testCA), Platform: amd64, Created: time.Unix(0, 0).UTC(),
	}
}

// TestDockerfileParity: mkimage's tokenwarden config is the image the
// Dockerfile's final stage describes.
func TestDockerfileParity(t *testing.T) {
	st := parseDockerfile(t, filepath.Join(repoRoot, "Dockerfile"))
	if st.from != distrolessNonroot {
		t.Fatalf("the Dockerfile now builds FROM %s, mkimage stands in for %s: update its base layer and config", st.from, distrolessNonroot)
	}
	const version = "v9.8.7"
	spec := tokenwardenSpec(tokenwardenInput(standIn("tokenwarden"), version))
	cfg := spec.Config
	vars := map[string]string{}
	for k, v := range st.args {
		vars[k] = v
	}
	vars["VERSION"] = version

	if cfg.User != st.user {
		t.Errorf("user %q, Dockerfile USER %q", cfg.User, st.user)
	}
	if !slices.Equal(cfg.Entrypoint, st.entrypoint) {
		t.Errorf("entrypoint %q, Dockerfile %q", cfg.Entrypoint, st.entrypoint)
	}
	if !slices.Equal(cfg.Cmd, st.cmd) {
		t.Errorf("cmd %q, Dockerfile %q", cfg.Cmd, st.cmd)
	}
	var ports []string
	for _, p := range st.expose {
		if !strings.Contains(p, "/") {
			p += "/tcp"
		}
		ports = append(ports, p)
	}
	var have []string
	for p := range cfg.ExposedPorts {
		have = append(have, p)
	}
	sort.Strings(ports)
	sort.Strings(have)
	if !slices.Equal(have, ports) {
		t.Errorf("exposed ports %q, Dockerfile %q", have, ports)
	}
	// Every label, with the build argument defaults and VERSION as given.
	if len(cfg.Labels) != len(st.labels) {
		t.Errorf("labels %v, Dockerfile %v", cfg.Labels, st.labels)
	}
	for k, v := range st.labels {
		if want := expand(v, vars); cfg.Labels[k] != want {
			t.Errorf("label %s = %q, Dockerfile %q (%q)", k, cfg.Labels[k], want, v)
		}
	}
	if cfg.Labels[labelVersion] != version {
		t.Errorf("version label %q, want the tag %q", cfg.Labels[labelVersion], version)
	}
	for k, v := range st.env {
		if !slices.Contains(cfg.Env, k+"="+expand(v, vars)) {
			t.Errorf("env %v lacks Dockerfile ENV %s=%s", cfg.Env, k, v)
		}
	}
	wantDir := nonrootHome // distroless nonroot's WORKDIR
	if st.workdir != "" {
		wantDir = st.workdir
	}
	if cfg.WorkingDir != wantDir {
		t.Errorf("working dir %q, want %q", cfg.WorkingDir, wantDir)
	}
	// The binary lands where the Dockerfile copies it.
	var dests []string
	for _, c := range st.copies {
		dests = append(dests, c[len(c)-1])
	}
	bin := spec.Layers[len(spec.Layers)-1].Files
	if got := bin[len(bin)-1].Path; !slices.Equal(dests, []string{got}) {
		t.Errorf("binary at %s, Dockerfile COPY to %q", got, dests)
	}
	// distroless/static:nonroot's own config, which the Dockerfile inherits.
	for _, e := range []string{"PATH=" + defaultPath, "SSL_CERT_FILE=" + caBundlePath} {
		if !slices.Contains(cfg.Env, e) {
			t.Errorf("env %v lacks distroless's %s", cfg.Env, e)
		}
	}
}

// TestNATSVersionIsTheChartsPin: the nats image is built from the
// nats-server module version go.mod requires, which must be the version of
// the chart's NATS image tag.
func TestNATSVersionIsTheChartsPin(t *testing.T) {
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(natsModule) + `\s+v(\S+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatalf("go.mod requires no %s", natsModule)
	}
	values, err := os.ReadFile(filepath.Join(repoRoot, "charts/tokenwarden/values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		NATS struct {
			Image struct {
				Tag string `yaml:"tag"`
			} `yaml:"image"`
		} `yaml:"nats"`
	}
	if err := yaml.Unmarshal(values, &v); err != nil {
		t.Fatal(err)
	}
	tag := v.NATS.Image.Tag
	if ver, _, _ := strings.Cut(tag, "-"); ver != string(m[1]) {
		t.Fatalf("chart nats.image.tag %q is not go.mod's %s v%s", tag, natsModule, m[1])
	}
}

// entry is one file of an image's flattened filesystem.
type entry struct {
	hdr  *tar.Header
	data []byte
}

// readArchive opens an OCI archive the way a consumer would: unpack it,
// read the layout with go-containerregistry, validate the image (digests,
// diff IDs, sizes), and flatten its filesystem.
func readArchive(t *testing.T, file string) (*v1.IndexManifest, v1.Image, map[string]entry) {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("archive entry %s has time %s", h.Name, h.ModTime)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index holds %d manifests, want 1", len(im.Manifests))
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	files := map[string]entry{}
	rc := mutate.Extract(img)
	defer func() { _ = rc.Close() }()
	fr := tar.NewReader(rc)
	for {
		h, err := fr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(fr)
		if err != nil {
			t.Fatal(err)
		}
		files["/"+strings.TrimSuffix(h.Name, "/")] = entry{h, b}
	}
	return im, img, files
}

func sha(t *testing.T, file string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestTokenwardenArchive builds the tokenwarden image of a stand-in binary
// and checks what containerd will see: name, platform, config, files,
// modes, owners; and that a second build is byte for byte the same.
func TestTokenwardenArchive(t *testing.T) {
	dir := t.TempDir()
	bin := standIn("tokenwarden")
	spec := tokenwardenSpec(tokenwardenInput(bin, "v1.2.3"))
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	d1, err := WriteImage(spec, a)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := WriteImage(tokenwardenSpec(tokenwardenInput(standIn("tokenwarden"), "v1.2.3")), b)
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 || sha(t, a) != sha(t, b) {
		t.Fatalf("two builds differ: %s %s", d1, d2)
	}
	d3, err := WriteImage(tokenwardenSpec(tokenwardenInput(standIn("other"), "v1.2.3")), filepath.Join(dir, "c.tar"))
	if err != nil {
		t.Fatal(err)
	}
	if d3 == d1 {
		t.Fatal("another binary gave the same digest")
	}

	im, img, files := readArchive(t, a)
	desc := im.Manifests[0]
	if desc.Digest != d1 || desc.MediaType != types.OCIManifestSchema1 {
		t.Errorf("index descriptor %+v, want %s", desc, d1)
	}
	if desc.Platform == nil || desc.Platform.OS != "linux" || desc.Platform.Architecture != "amd64" {
		t.Errorf("index descriptor platform %+v, want linux/amd64", desc.Platform)
	}
	if got := desc.Annotations[annotationContainerdName]; got != "docker.io/library/tokenwarden:v1.2.3" {
		t.Errorf("%s = %q", annotationContainerdName, got)
	}
	if got := desc.Annotations[annotationRefName]; got != "v1.2.3" {
		t.Errorf("%s = %q", annotationRefName, got)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || !cf.Created.Equal(time.Unix(0, 0)) {
		t.Errorf("config os %q arch %q created %s", cf.OS, cf.Architecture, cf.Created)
	}
	if cf.Config.User != "65532:65532" || !slices.Equal(cf.Config.Entrypoint, []string{"/tokenwarden"}) {
		t.Errorf("config %+v", cf.Config)
	}
	if len(cf.History) != len(cf.RootFS.DiffIDs) {
		t.Errorf("%d history entries for %d layers", len(cf.History), len(cf.RootFS.DiffIDs))
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		if mt, _ := l.MediaType(); mt != types.OCILayer {
			t.Errorf("layer media type %s", mt)
		}
	}

	type want struct {
		mode     fs.FileMode
		uid, gid int
		data     string
	}
	for p, w := range map[string]want{
		"/tokenwarden":       {0o755, 0, 0, string(bin)},
		caBundlePath:         {0o644, 0, 0, testCA},
		"/etc/passwd":        {0o644, 0, 0, etcPasswd},
		"/etc/group":         {0o644, 0, 0, etcGroup},
		"/tmp":               {fs.ModeDir | fs.ModeSticky | 0o777, 0, 0, ""},
		"/home/nonroot":      {fs.ModeDir | 0o700, 65532, 65532, ""},
		"/etc/ssl/certs":     {fs.ModeDir | 0o755, 0, 0, ""},
		"/etc/nsswitch.conf": {0o644, 0, 0, nsswitch},
	} {
		e, ok := files[p]
		if !ok {
			t.Errorf("%s missing", p)
			continue
		}
		if m := e.hdr.FileInfo().Mode(); m != w.mode || e.hdr.Uid != w.uid || e.hdr.Gid != w.gid || string(e.data) != w.data {
			t.Errorf("%s: mode %s uid %d gid %d data %q; want %s %d %d %q", p, m, e.hdr.Uid, e.hdr.Gid, e.data, w.mode, w.uid, w.gid, w.data)
		}
	}
	for p, e := range files {
		if !e.hdr.ModTime.Equal(time.Unix(0, 0)) || e.hdr.Uname != "" || e.hdr.Gname != "" {
			t.Errorf("%s: time %s, owner names %q %q", p, e.hdr.ModTime, e.hdr.Uname, e.hdr.Gname)
		}
		if e.hdr.Uid != 0 && p != nonrootHome {
			t.Errorf("%s owned by %d", p, e.hdr.Uid)
		}
	}
	if !strings.Contains(string(files["/etc/passwd"].data), "nonroot:x:65532:65532:") {
		t.Error("no nonroot user 65532")
	}
}

// minimalELF is the smallest file debug/elf reads as a static
// linux/amd64 executable: an ELF64 header and no program headers.
func minimalELF(tag string) []byte {
	h := make([]byte, 64)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 2, 1, 1                // 64-bit, little endian, version 1
	binary.LittleEndian.PutUint16(h[16:], 2)  // ET_EXEC
	binary.LittleEndian.PutUint16(h[18:], 62) // EM_X86_64
	binary.LittleEndian.PutUint32(h[20:], 1)
	binary.LittleEndian.PutUint16(h[52:], 64) // header size
	binary.LittleEndian.PutUint16(h[54:], 56) // program header size
	binary.LittleEndian.PutUint16(h[58:], 64) // section header size
	return append(h, tag...)
}

// TestRun drives the command with prebuilt stand-in binaries: every image
// is written, named and reproducible, and no go build runs.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, []byte(testCA), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-out", filepath.Join(dir, "out"), "-tag", "e2e", "-ca-bundle", ca, "-nats-version", "v2.15.2",
		"-name", "pause=registry.k8s.io/pause:3.10", "-go", "/nonexistent/go"}
	for _, k := range defaultImages {
		p := filepath.Join(dir, k)
		if err := os.WriteFile(p, minimalELF(k), 0o755); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-"+k+"-bin", p)
	}
	var out1, out2 bytes.Buffer
	if err := run(args, &out1, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := run(args, &out2, io.Discard); err != nil {
		t.Fatal(err)
	}
	names := map[string]string{
		imgTokenwarden: "docker.io/library/tokenwarden:e2e",
		imgNATS:        "docker.io/library/tokenwarden-nats:2.15.2",
		imgPause:       "registry.k8s.io/pause:3.10",
		imgTestapp:     "docker.io/library/tokenwarden-testapp:e2e",
	}
	digests := func(out string) []string {
		var ds []string
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 3 && strings.HasPrefix(f[2], "sha256:") {
				ds = append(ds, f[0]+" "+f[1]+" "+f[2])
			}
		}
		return ds
	}
	d1, d2 := digests(out1.String()), digests(out2.String())
	if len(d1) != 4 || !slices.Equal(d1, d2) {
		t.Fatalf("runs differ or miss images:\n%s\n%s", out1.String(), out2.String())
	}
	for i, k := range defaultImages {
		if !strings.HasPrefix(d1[i], k+" "+names[k]+" ") {
			t.Errorf("line %q, want %s %s", d1[i], k, names[k])
		}
		im, img, files := readArchive(t, filepath.Join(dir, "out", k+".tar"))
		if im.Manifests[0].Annotations[annotationContainerdName] != names[k] {
			t.Errorf("%s: named %v", k, im.Manifests[0].Annotations)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		ep := cf.Config.Entrypoint
		if len(ep) != 1 || !bytes.Equal(files[ep[0]].data, minimalELF(k)) || files[ep[0]].hdr.Mode != 0o755 {
			t.Errorf("%s: entrypoint %q is not its binary", k, ep)
		}
		uid := "65532:65532"
		if k == imgPause {
			uid = "65535:65535"
		}
		if cf.Config.User != uid {
			t.Errorf("%s: user %q, want %s", k, cf.Config.User, uid)
		}
	}
	// nats-server is found on PATH, as the chart's `command: [nats-server]` needs.
	_, img, files := readArchive(t, filepath.Join(dir, "out", "nats.tar"))
	cf, _ := img.ConfigFile()
	if _, ok := files["/usr/local/bin/nats-server"]; !ok || !slices.Contains(cf.Config.Env, "PATH="+defaultPath) {
		t.Errorf("nats-server not on PATH: env %v", cf.Config.Env)
	}
}

func TestRunRefusesDynamicOrForeignBinaries(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bin")
	if err := os.WriteFile(p, standIn("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, []byte(testCA), 0o644); err != nil {
		t.Fatal(err)
	}
	err := run([]string{"-out", filepath.Join(dir, "out"), "-images", "pause", "-pause-bin", p, "-ca-bundle", ca}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "not a linux executable") {
		t.Fatalf("a non-ELF binary: %v", err)
	}
	if err := checkStatic(minimalELF("x"), v1.Platform{OS: "linux", Architecture: "arm64"}); err == nil {
		t.Fatal("an amd64 binary passed for arm64")
	}
	if err := checkStatic(minimalELF("x"), amd64); err != nil {
		t.Fatal(err)
	}
}

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"tokenwarden:dev":            "docker.io/library/tokenwarden:dev",
		"org/app:1.0":                "docker.io/org/app:1.0",
		"registry.k8s.io/pause:3.10": "registry.k8s.io/pause:3.10",
		"localhost/x:y":              "localhost/x:y",
		"localhost:5000/x:y":         "localhost:5000/x:y",
		"tokenwarden":                "",
		"tokenwarden:latest":         "",
		"localhost:5000/x":           "",
		"Tokenwarden:dev":            "",
		"tokenwarden@sha256:abc":     "",
		"tokenwarden:v1+dirty":       "",
		"tokenwarden:v1.2.3-4-gabc":  "docker.io/library/tokenwarden:v1.2.3-4-gabc",
	} {
		got, err := NormalizeRef(in)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("NormalizeRef(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestLayerTarRefusesBadPaths(t *testing.T) {
	for _, f := range []File{
		{Path: "relative", Mode: 0o644},
		{Path: "/a/../b", Mode: 0o644},
		{Path: "/", Mode: fs.ModeDir | 0o755},
		{Path: "/suid", Mode: fs.ModeSetuid | 0o755},
	} {
		if _, err := layerTar([]File{f}, time.Unix(0, 0)); err == nil {
			t.Errorf("%+v accepted", f)
		}
	}
	if _, err := layerTar([]File{{Path: "/a", Mode: 0o644}, {Path: "/a", Mode: 0o644}}, time.Unix(0, 0)); err == nil {
		t.Error("a path given twice accepted")
	}
}

func ExampleNormalizeRef() {
	ref, _ := NormalizeRef("tokenwarden:dev")
	fmt.Println(ref)
	// Output: docker.io/library/tokenwarden:dev
}

// TestCoreDNSNeedsItsBinary: no package of this module builds CoreDNS, so asking for its image
// without -coredns-bin is a clear error, not a `go build` of nothing.
func TestCoreDNSNeedsItsBinary(t *testing.T) {
	err := run([]string{"-out", t.TempDir(), "-images", "coredns", "-go", "/nonexistent/go"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "-coredns-bin") {
		t.Fatalf("err = %v, want one naming -coredns-bin", err)
	}
}
