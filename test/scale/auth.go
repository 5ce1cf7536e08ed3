package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/template"

	"go.yaml.in/yaml/v3"
)

// The NATS users of the chart's auth.conf: the issuer in the TOKENWARDEN
// account (every bucket and the stream), the sidecars in SIDECARS (what
// TOKENWARDEN exports to it, nothing else), and the route user of the
// cluster. Their passwords are made for each run.
type natsUsers struct {
	issuerPW, sidecarPW, routePW string
}

func newNATSUsers() (natsUsers, error) {
	pw := func() (string, error) {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return "", fmt.Errorf("NATS password: %w", err)
		}
		return hex.EncodeToString(b), nil
	}
	var u natsUsers
	var err error
	for _, p := range []*string{&u.issuerPW, &u.sidecarPW, &u.routePW} {
		if *p, err = pw(); err != nil {
			return u, err
		}
	}
	return u, nil
}

// env is what a nats-server process needs to resolve the $VARIABLES of
// auth.conf and of the route authorization, as the chart's pods get them
// from the chart's Secret.
func (u natsUsers) env() []string {
	return []string{"ISSUER_PASSWORD=" + u.issuerPW, "SIDECAR_PASSWORD=" + u.sidecarPW, "ROUTE_PASSWORD=" + u.routePW}
}

// chartAuthConf renders auth.conf of the chart's NATS ConfigMap
// (charts/tokenwarden/templates/nats-configmap.yaml) from the chart's own
// template and values, so that the NATS servers the tool measures hold
// exactly the accounts, exports, imports and permissions that the chart
// deploys: the sidecars' reads cross from SIDECARS into TOKENWARDEN
// through service imports, and the events and the bundle through stream
// imports. The template uses a handful of Helm's functions, given here;
// the names its include asks for do not reach auth.conf.
func chartAuthConf(chartDir string) (string, error) {
	tplPath := filepath.Join(chartDir, "templates", "nats-configmap.yaml")
	src, err := os.ReadFile(tplPath) // #nosec G304 -- the chart of this repository
	if err != nil {
		return "", fmt.Errorf("chart template (-chart): %w", err)
	}
	rawValues, err := os.ReadFile(filepath.Join(chartDir, "values.yaml")) // #nosec G304 -- the chart of this repository
	if err != nil {
		return "", fmt.Errorf("chart values (-chart): %w", err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(rawValues, &values); err != nil {
		return "", fmt.Errorf("chart values: %w", err)
	}
	toInt := func(v any) int {
		switch n := v.(type) {
		case int:
			return n
		case int64:
			return int(n)
		case float64:
			return int(n)
		}
		return 0
	}
	funcs := template.FuncMap{
		"include": func(name string, _ any) string { return "tw-" + strings.TrimPrefix(name, "tokenwarden.") },
		"nindent": func(n int, s string) string { return "\n" + strings.Repeat(" ", n) + s },
		"upper":   strings.ToUpper,
		"dict": func(kv ...any) map[string]any {
			m := map[string]any{}
			for i := 0; i+1 < len(kv); i += 2 {
				m[fmt.Sprint(kv[i])] = kv[i+1]
			}
			return m
		},
		"list":   func(v ...any) []any { return v },
		"append": func(l []any, v any) []any { return append(l, v) },
		"int":    toInt,
		"until": func(n int) []int {
			out := make([]int, max(n, 0))
			for i := range out {
				out[i] = i
			}
			return out
		},
	}
	tpl, err := template.New(filepath.Base(tplPath)).Funcs(funcs).Option("missingkey=error").Parse(string(src))
	if err != nil {
		return "", fmt.Errorf("chart template %s: %w", tplPath, err)
	}
	var out bytes.Buffer
	if err := tpl.Execute(&out, map[string]any{"Values": values, "Release": map[string]any{"Namespace": "tokenwarden", "Name": "tw"}}); err != nil {
		return "", fmt.Errorf("chart template %s: %w", tplPath, err)
	}
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(out.Bytes(), &cm); err != nil {
		return "", fmt.Errorf("rendered %s: %w", tplPath, err)
	}
	auth := cm.Data["auth.conf"]
	if !strings.Contains(auth, "SIDECARS") || !strings.Contains(auth, "TOKENWARDEN") {
		return "", fmt.Errorf("rendered %s: auth.conf lacks the TOKENWARDEN and SIDECARS accounts", tplPath)
	}
	return auth, nil
}
