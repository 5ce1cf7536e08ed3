package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// setting is one configuration key that a flag and a TOKENWARDEN_* variable
// can set. One table per program drives the flags, the environment and
// --help, so the three can never disagree.
type setting struct {
	flag  string // --flag; the variable is TOKENWARDEN_ + upper snake case
	usage string
	bind  any // *string, *int, *bool, *[]string (comma-separated) or *time.Duration inside the config struct
	// envOnly keeps secrets off the command line, where ps would show them.
	envOnly bool
}

func (s setting) env() string {
	return "TOKENWARDEN_" + strings.ToUpper(strings.ReplaceAll(s.flag, "-", "_"))
}

func setValue(bind any, v string) error {
	switch p := bind.(type) {
	case *string:
		*p = v
	case *int:
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", v)
		}
		*p = n
	case *bool:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		*p = b
	case *[]string:
		var list []string
		for _, item := range strings.Split(v, ",") {
			if item = strings.TrimSpace(item); item != "" {
				list = append(list, item)
			}
		}
		*p = list
	case *time.Duration:
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration like 10m or 24h", v)
		}
		*p = d
	default:
		return fmt.Errorf("unsupported setting type %T", bind)
	}
	return nil
}

// registerFlags adds a flag per setting. Flags are declared as strings and
// applied after the config file and the environment, so a default never
// overrides a value from the file.
func registerFlags(cmd *cobra.Command, settings []setting) {
	for _, s := range settings {
		if s.envOnly {
			continue
		}
		cmd.Flags().String(s.flag, "", fmt.Sprintf("%s (env %s)", s.usage, s.env()))
	}
}

// loadLayered fills cfg from: its defaults, then the YAML file (strictly:
// unknown keys are errors), then TOKENWARDEN_* variables, then the flags
// the user set.
func loadLayered(cmd *cobra.Command, file string, cfg any, settings []setting) error {
	if file != "" {
		b, err := os.ReadFile(file) // #nosec G304 -- the operator names the config file
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(cfg); err != nil && err.Error() != "EOF" {
			return fmt.Errorf("config %s: %w", file, err)
		}
	}
	for _, s := range settings {
		if v, ok := os.LookupEnv(s.env()); ok {
			if err := setValue(s.bind, v); err != nil {
				return fmt.Errorf("%s: %w", s.env(), err)
			}
		}
	}
	for _, s := range settings {
		if s.envOnly || !cmd.Flags().Changed(s.flag) {
			continue
		}
		v, _ := cmd.Flags().GetString(s.flag)
		if err := setValue(s.bind, v); err != nil {
			return fmt.Errorf("--%s: %w", s.flag, err)
		}
	}
	return nil
}
