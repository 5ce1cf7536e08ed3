// Command mkimage builds tokenwarden's container images without a Docker
// engine and without pulling anything: every image is FROM scratch, made of
// static Go binaries and a small distroless-like base layer, and written as
// an OCI image layout tarball that `ctr -n k8s.io images import FILE` loads
// under the image's name.
//
//	go run ./hack/mkimage -out bin/images -tag dev
//	go run ./hack/mkimage -images tokenwarden -tokenwarden-bin bin/tokenwarden -tag v1.2.3
//
// Images: tokenwarden (the Dockerfile's image), nats (nats-server at the
// version go.mod requires, which the chart pins), pause (the pod sandbox)
// and testapp (the end-to-end test's app). A binary not given with
// -NAME-bin is built with `go build` (CGO_ENABLED=0, -trimpath) for the
// platform. Builds are reproducible: every timestamp is SOURCE_DATE_EPOCH
// (default 0), so the same binaries give the same digests.
package main

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const natsModule = "github.com/nats-io/nats-server/v2"

// packages are what each image's binary is built from.
var packages = map[string]string{ // #nosec G101 -- package paths, no credentials
	imgTokenwarden: "./cmd/tokenwarden",
	imgNATS:        natsModule,
	imgPause:       "./hack/pause",
	imgTestapp:     "./test/k8s/testapp",
}

type options struct {
	out      string
	tag      string
	commit   string
	images   []string
	bins     map[string]string // kind → prebuilt binary
	names    map[string]string // kind → image name
	caBundle string
	platform v1.Platform
	created  time.Time
	goCmd    string
	natsVer  string // version of the nats image; default: from the binary's build information
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "mkimage:", err)
		}
		os.Exit(2)
	}
}

type nameFlag map[string]string

func (n nameFlag) String() string { return "" }

func (n nameFlag) Set(s string) error {
	kind, ref, ok := strings.Cut(s, "=")
	if !ok || specFor(kind) == nil {
		return fmt.Errorf("want IMAGE=NAME:TAG with IMAGE one of %s", strings.Join(allImages, ", "))
	}
	n[kind] = ref
	return nil
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{bins: map[string]string{}, names: nameFlag{}}
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.out, "out", "bin/images", "directory of the image tarballs (IMAGE.tar) and of the binaries it builds")
	fs.StringVar(&o.tag, "tag", "dev", "tag and version label of the tokenwarden and testapp images")
	fs.StringVar(&o.commit, "commit", "", "commit stamped into a tokenwarden binary mkimage builds (default: git rev-parse HEAD)")
	images := fs.String("images", strings.Join(defaultImages, ","), "comma-separated images to build, of "+strings.Join(allImages, ", "))
	for _, k := range allImages {
		usage := "prebuilt static linux binary of the " + k + " image (default: go build " + packages[k] + ")"
		if packages[k] == "" {
			usage = "static linux binary of the " + k + " image (required with -images " + k + ")"
		}
		fs.Func(k+"-bin", usage, func(s string) error {
			o.bins[k] = s
			return nil
		})
	}
	fs.Var(nameFlag(o.names), "name", "IMAGE=NAME:TAG: another name for an image, e.g. pause=registry.k8s.io/pause:3.10 (repeatable)")
	fs.StringVar(&o.caBundle, "ca-bundle", caBundlePath, "CA certificates bundle copied to "+caBundlePath+" (Debian: apt-get install ca-certificates)")
	platform := fs.String("platform", "linux/amd64", "os/arch[/variant] of the images and of the binaries it builds")
	fs.StringVar(&o.natsVer, "nats-version", "", "version (tag and label) of the nats image (default: "+natsModule+"'s version in the binary's build information)")
	fs.StringVar(&o.goCmd, "go", envOr("GO", "go"), "go command used to build binaries")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	p, err := v1.ParsePlatform(*platform)
	if err != nil || p.OS == "" || p.Architecture == "" {
		return nil, fmt.Errorf("-platform %q: want os/arch", *platform)
	}
	o.platform = *p
	for _, k := range strings.Split(*images, ",") {
		k = strings.TrimSpace(k)
		if specFor(k) == nil {
			return nil, fmt.Errorf("-images: unknown image %q (have %s)", k, strings.Join(allImages, ", "))
		}
		o.images = append(o.images, k)
	}
	if o.created, err = sourceDateEpoch(); err != nil {
		return nil, err
	}
	return o, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// sourceDateEpoch is the time of every timestamp in the images:
// SOURCE_DATE_EPOCH (reproducible-builds.org) or the Unix epoch.
func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q is not a Unix time", s)
	}
	return time.Unix(n, 0).UTC(), nil
}

// result is one built image.
type result struct {
	kind, ref, file string
	digest          v1.Hash
	took            time.Duration
	err             error
}

func run(args []string, stdout, stderr io.Writer) error {
	start := time.Now()
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(o.caBundle)
	if err != nil {
		return fmt.Errorf("CA bundle: %w (install Debian's ca-certificates or pass -ca-bundle)", err)
	}
	if !bytes.Contains(ca, []byte("-----BEGIN CERTIFICATE-----")) {
		return fmt.Errorf("CA bundle %s holds no PEM certificate", o.caBundle)
	}
	if err := os.MkdirAll(filepath.Join(o.out, "bin"), 0o750); err != nil {
		return err
	}
	if err := buildBinaries(o, stderr); err != nil {
		return err
	}
	built := time.Now()

	results := make([]result, len(o.images))
	var wg sync.WaitGroup
	for i, kind := range o.images {
		wg.Go(func() {
			t0 := time.Now()
			r := result{kind: kind, file: filepath.Join(o.out, kind+".tar")}
			r.ref, r.digest, r.err = buildOne(o, kind, ca, r.file)
			r.took = time.Since(t0)
			results[i] = r
		})
	}
	wg.Wait()
	var errs []error
	for _, r := range results {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.kind, r.err))
			continue
		}
		_, _ = fmt.Fprintf(stdout, "%-12s %-50s %s %s (%s)\n", r.kind, r.ref, r.digest, r.file, r.took.Round(time.Millisecond))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	_, _ = fmt.Fprintf(stdout, "binaries %s, images %s, total %s; load with: ctr -n k8s.io images import FILE\n",
		built.Sub(start).Round(time.Millisecond), time.Since(built).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	return nil
}

// buildOne reads the binary of kind and writes its image to file.
func buildOne(o *options, kind string, ca []byte, file string) (string, v1.Hash, error) {
	binPath := o.bins[kind]
	bin, err := os.ReadFile(binPath) // #nosec G304 G703 -- the binary the caller named
	if err != nil {
		return "", v1.Hash{}, err
	}
	if err := checkStatic(bin, o.platform); err != nil {
		return "", v1.Hash{}, fmt.Errorf("%s: %w", binPath, err)
	}
	version := o.tag
	switch kind {
	case imgNATS:
		version = o.natsVer
		if version == "" {
			if version, err = moduleVersion(binPath, natsModule); err != nil {
				return "", v1.Hash{}, err
			}
		}
		version = strings.TrimPrefix(version, "v")
	case imgPause:
		version = pauseVersion
	case imgCoreDNS:
		if version, err = moduleVersion(binPath, corednsModule); err != nil {
			return "", v1.Hash{}, err
		}
	}
	ref, err := NormalizeRef(imageName(o, kind, version))
	if err != nil {
		return "", v1.Hash{}, err
	}
	spec := specFor(kind)(specInput{Ref: ref, Version: version, Binary: bin, CABundle: ca, Platform: o.platform, Created: o.created})
	digest, err := WriteImage(spec, file)
	return ref, digest, err
}

// imageName is the name given with -name, or the default one.
func imageName(o *options, kind, version string) string {
	if n := o.names[kind]; n != "" {
		return n
	}
	switch kind {
	case imgTokenwarden:
		return "tokenwarden:" + version
	case imgNATS:
		return "tokenwarden-nats:" + version
	case imgPause:
		return "tokenwarden-pause:" + version
	case imgCoreDNS:
		return "tokenwarden-coredns:" + version
	}
	return "tokenwarden-" + kind + ":" + version
}

// WriteImage builds spec and writes it to file as an OCI archive; it
// returns the image's manifest digest (what `ctr images ls` shows).
func WriteImage(spec Spec, file string) (v1.Hash, error) {
	img, err := Build(spec)
	if err != nil {
		return v1.Hash{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, err
	}
	err = writeFileAtomic(file, func(w io.Writer) error {
		return WriteOCIArchive(w, img, spec.Ref, spec.Platform, spec.Created)
	})
	return digest, err
}

// buildBinaries builds, in one `go build` (one build graph, each package
// compiled once), every binary not given prebuilt, and records where each
// is. The version ldflags only exist in tokenwarden's main package; the
// linker ignores them in the others.
func buildBinaries(o *options, stderr io.Writer) error {
	var pkgs []string
	dir := filepath.Join(o.out, "bin")
	for _, kind := range o.images {
		if o.bins[kind] != "" {
			continue
		}
		if packages[kind] == "" {
			return fmt.Errorf("-images %s needs -%s-bin (no package of this module builds it)", kind, kind)
		}
		pkgs = append(pkgs, packages[kind])
		name := kind
		if kind == imgNATS {
			name = "nats-server" // go build names a .../v2 module's binary after the module
		}
		o.bins[kind] = filepath.Join(dir, name)
	}
	if len(pkgs) == 0 {
		return nil
	}
	commit := o.commit
	if commit == "" {
		commit = gitCommit()
	}
	ldflags := "-s -w -X main.version=" + o.tag + " -X main.commit=" + commit
	args := append([]string{"build", "-trimpath", "-ldflags", ldflags, "-o", dir + string(filepath.Separator)}, pkgs...)
	cmd := exec.Command(o.goCmd, args...) // #nosec G204 G702 -- the caller's go command, fixed packages
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+o.platform.OS, "GOARCH="+o.platform.Architecture)
	if o.platform.Variant != "" && o.platform.Architecture == "arm" {
		cmd.Env = append(cmd.Env, "GOARM="+strings.TrimPrefix(o.platform.Variant, "v"))
	}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", strings.Join(pkgs, " "), err)
	}
	return nil
}

func gitCommit() string {
	out, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// goArch maps GOARCH names to ELF machines.
var goArch = map[string]elf.Machine{
	"amd64":   elf.EM_X86_64,
	"arm64":   elf.EM_AARCH64,
	"arm":     elf.EM_ARM,
	"386":     elf.EM_386,
	"ppc64le": elf.EM_PPC64,
	"s390x":   elf.EM_S390,
	"riscv64": elf.EM_RISCV,
}

// checkStatic refuses a binary that cannot run FROM scratch: not an ELF
// executable of the platform, or dynamically linked (a program
// interpreter, as cgo binaries have).
func checkStatic(bin []byte, p v1.Platform) error {
	if p.OS != "linux" {
		return nil
	}
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("not a linux executable: %w", err)
	}
	defer func() { _ = f.Close() }()
	if m, ok := goArch[p.Architecture]; ok && f.Machine != m {
		return fmt.Errorf("built for %s, not %s", f.Machine, p.Architecture)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return errors.New("dynamically linked (build it with CGO_ENABLED=0)")
		}
	}
	return nil
}

// moduleVersion is the version of module mod in the binary's build
// information: a dependency's, or the main module's when mod is it.
func moduleVersion(binPath, mod string) (string, error) {
	bi, err := buildinfo.ReadFile(binPath)
	if err != nil {
		return "", fmt.Errorf("%s: %w", binPath, err)
	}
	if bi.Main.Path == mod && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version, nil
	}
	for _, d := range bi.Deps {
		if d.Path == mod {
			if d.Replace != nil && d.Replace.Version != "" {
				return d.Replace.Version, nil
			}
			return d.Version, nil
		}
	}
	return "", fmt.Errorf("%s: no version of %s in its build information", binPath, mod)
}
