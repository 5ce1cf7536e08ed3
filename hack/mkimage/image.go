package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one entry of an image layer. Every entry belongs to root unless
// UID/GID say otherwise; Data is the content of a regular file, nil for a
// directory (Mode has fs.ModeDir).
type File struct {
	Path     string // absolute, slash-separated
	Mode     fs.FileMode
	UID, GID int
	Data     []byte
}

// Dir is a directory entry.
func Dir(p string, perm fs.FileMode) File { return File{Path: p, Mode: fs.ModeDir | perm} }

// Layer is a set of files with a history line saying where they come from.
type Layer struct {
	CreatedBy string
	Files     []File
}

// Spec is everything an image is made of: its name, its layers (base
// first) and its runtime configuration. Building the same Spec twice gives
// the same bytes, hence the same digest.
type Spec struct {
	Ref      string      // full reference, e.g. docker.io/library/tokenwarden:dev
	Platform v1.Platform // os/architecture of the binaries
	Created  time.Time   // every timestamp of the image: config, history, file mtimes
	Layers   []Layer
	Config   v1.Config
}

// The users and groups of gcr.io/distroless/static-debian12 (nonroot is the
// user of its :nonroot tag), so files and processes show the same names.
const (
	nonrootUID = 65532
	etcPasswd  = "root:x:0:0:root:/root:/sbin/nologin\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n" +
		"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	etcGroup = "root:x:0:\n" +
		"nobody:x:65534:\n" +
		"tty:x:5:\n" +
		"staff:x:50:\n" +
		"nonroot:x:65532:\n"
	nsswitch = "hosts: files dns\n"
	// caBundlePath is where Go's crypto/x509 looks first on Linux, and where
	// Debian's ca-certificates (and distroless) put the bundle.
	caBundlePath = "/etc/ssl/certs/ca-certificates.crt"
	// defaultPath is distroless's PATH.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	nonrootHome = "/home/nonroot"
)

// baseLayer is the part of distroless/static:nonroot the binaries need: the
// users and groups, a CA bundle, a name-service switch, /tmp and the home
// directory of nonroot. Every image shares it (same bytes, same digest), so
// a node stores it once.
func baseLayer(caBundle []byte) Layer {
	return Layer{
		CreatedBy: "mkimage: base (distroless/static:nonroot users, CA certificates, /tmp)",
		Files: []File{
			Dir("/etc", 0o755),
			{Path: "/etc/group", Mode: 0o644, Data: []byte(etcGroup)},
			{Path: "/etc/nsswitch.conf", Mode: 0o644, Data: []byte(nsswitch)},
			{Path: "/etc/passwd", Mode: 0o644, Data: []byte(etcPasswd)},
			Dir("/etc/ssl", 0o755),
			Dir("/etc/ssl/certs", 0o755),
			{Path: caBundlePath, Mode: 0o644, Data: caBundle},
			Dir("/home", 0o755),
			{Path: nonrootHome, Mode: fs.ModeDir | 0o700, UID: nonrootUID, GID: nonrootUID},
			Dir("/root", 0o700),
			{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		},
	}
}

// binaryLayer puts one executable at p (its parent directories included).
func binaryLayer(p string, bin []byte, createdBy string) Layer {
	var files []File
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		files = append([]File{Dir(d, 0o755)}, files...)
	}
	return Layer{CreatedBy: createdBy, Files: append(files, File{Path: p, Mode: 0o755, Data: bin})}
}

// nonrootEnv is distroless's environment.
func nonrootEnv() []string {
	return []string{"PATH=" + defaultPath, "SSL_CERT_FILE=" + caBundlePath}
}

// exposed turns port numbers into an image config's ExposedPorts.
func exposed(ports ...int) map[string]struct{} {
	m := make(map[string]struct{}, len(ports))
	for _, p := range ports {
		m[fmt.Sprintf("%d/tcp", p)] = struct{}{}
	}
	return m
}

// layerTar writes files as a tar stream: sorted by path, owned as given,
// every mtime t, no user or group names, no PAX times, so the bytes only
// depend on the files.
func layerTar(files []File, t time.Time) ([]byte, error) {
	files = append([]File(nil), files...)
	sort.SliceStable(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]bool{}
	for _, f := range files {
		if !strings.HasPrefix(f.Path, "/") || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("layer path %q is not a clean absolute file path", f.Path)
		}
		if seen[f.Path] {
			return nil, fmt.Errorf("layer path %q given twice", f.Path)
		}
		seen[f.Path] = true
		h := &tar.Header{
			Name:    strings.TrimPrefix(f.Path, "/"),
			Mode:    int64(f.Mode.Perm()),
			Uid:     f.UID,
			Gid:     f.GID,
			ModTime: t,
			Format:  tar.FormatPAX,
		}
		if f.Mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		if f.Mode&fs.ModeSetuid != 0 || f.Mode&fs.ModeSetgid != 0 {
			return nil, fmt.Errorf("layer path %q: no setuid/setgid files", f.Path)
		}
		if f.Mode.IsDir() {
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// gzipBytes compresses b without a name or time in the gzip header, so the
// output only depends on b (and the Go release's compress/flate).
func gzipBytes(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Build turns s into an OCI image (OCI manifest and config media types,
// gzip-compressed OCI layers).
func Build(s Spec) (v1.Image, error) {
	if s.Platform.OS == "" || s.Platform.Architecture == "" {
		return nil, fmt.Errorf("image %s: no platform", s.Ref)
	}
	created := v1.Time{Time: s.Created.UTC()}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	adds := make([]mutate.Addendum, 0, len(s.Layers))
	for _, l := range s.Layers {
		raw, err := layerTar(l.Files, s.Created.UTC())
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", s.Ref, err)
		}
		gz, err := gzipBytes(raw)
		if err != nil {
			return nil, err
		}
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(gz)), nil
		}, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.Addendum{
			Layer:     layer,
			MediaType: types.OCILayer,
			History:   v1.History{Created: created, CreatedBy: l.CreatedBy},
		})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS = s.Platform.OS
	cf.Architecture = s.Platform.Architecture
	cf.Variant = s.Platform.Variant
	cf.Created = created
	cf.Config = s.Config
	return mutate.ConfigFile(img, cf)
}

// Image name annotations of an OCI layout's index.json: containerd's import
// names the image after io.containerd.image.name (a full reference); other
// tools read the tag from org.opencontainers.image.ref.name.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// WriteOCIArchive writes img as a tar of an OCI image layout (oci-layout,
// index.json, blobs/sha256/...), the index naming it ref on platform p, to
// w. Every entry has time t, so the archive is as reproducible as img.
func WriteOCIArchive(w io.Writer, img v1.Image, ref string, p v1.Platform, t time.Time) error {
	manifest, err := img.RawManifest()
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	mt, err := img.MediaType()
	if err != nil {
		return err
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	configName, err := img.ConfigName()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	platform := p
	index := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: mt,
			Size:      int64(len(manifest)),
			Digest:    digest,
			Platform:  &platform,
			Annotations: map[string]string{
				annotationContainerdName: ref,
				annotationRefName:        refTag(ref),
			},
		}},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	t = t.UTC()
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: t, Format: tar.FormatPAX})
	}
	file := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: t, Format: tar.FormatPAX}); err != nil {
			return err
		}
		n, err := io.Copy(tw, r)
		if err == nil && n != size {
			err = fmt.Errorf("%s: wrote %d bytes, want %d", name, n, size)
		}
		return err
	}
	blob := func(h v1.Hash, size int64, r io.Reader) error {
		return file("blobs/"+h.Algorithm+"/"+h.Hex, size, r)
	}
	if err := file("oci-layout", int64(len(`{"imageLayoutVersion":"1.0.0"}`)), strings.NewReader(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := file("index.json", int64(len(indexJSON)), bytes.NewReader(indexJSON)); err != nil {
		return err
	}
	if err := dir("blobs/"); err != nil {
		return err
	}
	if err := dir("blobs/sha256/"); err != nil {
		return err
	}
	if err := blob(digest, int64(len(manifest)), bytes.NewReader(manifest)); err != nil {
		return err
	}
	if err := blob(configName, int64(len(config)), bytes.NewReader(config)); err != nil {
		return err
	}
	written := map[v1.Hash]bool{}
	for _, l := range layers {
		h, err := l.Digest()
		if err != nil {
			return err
		}
		if written[h] {
			continue
		}
		written[h] = true
		size, err := l.Size()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		err = blob(h, size, rc)
		_ = rc.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// writeFileAtomic writes the archive to a temporary file next to path and
// renames it into place, so an interrupted build leaves no half archive.
func writeFileAtomic(p string, write func(io.Writer) error) (err error) {
	f, err := os.CreateTemp(path.Dir(p), "."+path.Base(p)+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err = write(f); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}

// NormalizeRef completes a reference the way Kubernetes and containerd
// read an image name: "tokenwarden:dev" is docker.io/library/tokenwarden:dev,
// "org/app:1" is docker.io/org/app:1, "registry.k8s.io/pause:3.10" stays.
// A tag is required (and "latest" refused: pods would always pull it).
func NormalizeRef(ref string) (string, error) {
	if ref == "" || strings.ContainsAny(ref, " \t\n@") {
		return "", fmt.Errorf("image name %q: want repository:tag", ref)
	}
	slash := strings.LastIndex(ref, "/")
	colon := strings.LastIndex(ref, ":")
	if colon <= slash || colon == len(ref)-1 {
		return "", fmt.Errorf("image name %q has no tag", ref)
	}
	if !tagRE.MatchString(ref[colon+1:]) {
		return "", fmt.Errorf("image name %q: tag %q is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", ref, ref[colon+1:])
	}
	if ref[colon+1:] == "latest" {
		return "", fmt.Errorf("image name %q: a tag other than latest, or pods pull it", ref)
	}
	repo := ref[:colon]
	if strings.ToLower(repo) != repo {
		return "", fmt.Errorf("image name %q: repository must be lower case", ref)
	}
	first, _, hasSlash := strings.Cut(repo, "/")
	switch {
	case !hasSlash:
		return "docker.io/library/" + ref, nil
	case !strings.ContainsAny(first, ".:") && first != "localhost":
		return "docker.io/" + ref, nil
	}
	return ref, nil
}

var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// refTag is the tag of a normalized reference.
func refTag(ref string) string { return ref[strings.LastIndex(ref, ":")+1:] }
