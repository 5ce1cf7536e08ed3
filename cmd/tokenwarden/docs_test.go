package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/tokenwarden/tokenwarden/issuer"
	"github.com/tokenwarden/tokenwarden/sidecar"
)

// yamlKeys lists the YAML keys of a config struct, nested ones as
// "parent.child", skipping fields tagged "-".
func yamlKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || name == "" || !f.IsExported() {
			continue
		}
		if f.Type.Kind() == reflect.Struct {
			keys = append(keys, yamlKeys(f.Type, prefix+name+".")...)
			continue
		}
		keys = append(keys, prefix+name)
	}
	return keys
}

// flattenYAML lists the keys set in a YAML document, nested ones as
// "parent.child".
func flattenYAML(m map[string]any, prefix string) []string {
	var keys []string
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			keys = append(keys, flattenYAML(sub, prefix+k+".")...)
			continue
		}
		keys = append(keys, prefix+k)
	}
	return keys
}

// TestExampleSidecarConfigLoads: examples/sidecar.yaml loads strictly into
// the sidecar's configuration, validates, builds a sidecar, and sets every
// key there is, so it documents them all.
func TestExampleSidecarConfigLoads(t *testing.T) {
	const path = "../../examples/sidecar.yaml"
	cfg := sidecar.DefaultConfig()
	settings := sidecarSettings(&cfg)
	cmd := &cobra.Command{Use: "x"}
	registerFlags(cmd, settings)
	if err := loadLayered(cmd, path, &cfg, settings); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// The key files it names do not exist here: trust a fresh key inline.
	missing := false
	for _, f := range cfg.DistributionPublicKeyFiles {
		if _, err := os.Stat(f); err != nil {
			missing = true
		}
	}
	if missing {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		cfg.DistributionPublicKeyFiles = nil
		cfg.DistributionPublicKeys = []string{base64.StdEncoding.EncodeToString(pub)}
	}
	cfg.CacheDir = t.TempDir()
	if _, err := sidecar.New(cfg); err != nil {
		t.Fatal(err)
	}

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	set := flattenYAML(doc, "")
	for _, k := range yamlKeys(reflect.TypeFor[sidecar.Config](), "") {
		if !slices.Contains(set, k) {
			t.Errorf("%s does not set %s", path, k)
		}
	}
}

// TestDocsConfigurationComplete: every flag, TOKENWARDEN_* variable and
// YAML key of the issuer and the sidecar appears in docs/configuration.md,
// so the reference cannot drift from the settings tables.
func TestDocsConfigurationComplete(t *testing.T) {
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	icfg, scfg := issuer.DefaultConfig(), sidecar.DefaultConfig()
	for name, settings := range map[string][]setting{"issuer": issuerSettings(&icfg), "sidecar": sidecarSettings(&scfg)} {
		for _, s := range settings {
			if !s.envOnly && !strings.Contains(doc, "`--"+s.flag+"`") {
				t.Errorf("%s flag --%s is not in docs/configuration.md", name, s.flag)
			}
			if !strings.Contains(doc, "`"+s.env()+"`") {
				t.Errorf("%s variable %s is not in docs/configuration.md", name, s.env())
			}
		}
	}
	for name, typ := range map[string]reflect.Type{"issuer": reflect.TypeFor[issuer.Config](), "sidecar": reflect.TypeFor[sidecar.Config]()} {
		for _, k := range yamlKeys(typ, "") {
			if !strings.Contains(doc, "| `"+k+"` |") {
				t.Errorf("%s YAML key %s has no row in docs/configuration.md", name, k)
			}
		}
	}
	// The global flags and every flag of the other commands this page
	// documents (a command added later documents itself here when it is
	// added to this list).
	root := newRootCommand(strings.NewReader(""), &strings.Builder{}, &strings.Builder{})
	check := func(c *cobra.Command, fs *pflag.FlagSet) {
		fs.VisitAll(func(f *pflag.Flag) {
			if f.Name != "help" && !strings.Contains(doc, "`--"+f.Name+"`") {
				t.Errorf("flag --%s of %q is not in docs/configuration.md", f.Name, c.CommandPath())
			}
		})
	}
	check(root, root.PersistentFlags())
	for _, name := range []string{"dev", "injector", "keys", "revoke", "check", "hash-password", "version"} {
		c, _, err := root.Find([]string{name})
		if err != nil || c == root {
			t.Errorf("command %s: %v", name, err)
			continue
		}
		if !strings.Contains(doc, "## `tokenwarden "+name) && !strings.Contains(doc, "`tokenwarden "+name+"`") {
			t.Errorf("command %s has no section in docs/configuration.md", name)
		}
		for _, sub := range append([]*cobra.Command{c}, c.Commands()...) {
			check(sub, sub.LocalFlags())
		}
	}
}
