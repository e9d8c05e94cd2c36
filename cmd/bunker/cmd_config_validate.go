package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"bunker/internal/agent"
	"bunker/internal/conf"
	"bunker/internal/director"
)

func newConfigValidateCmd(g *globalOptions) *cobra.Command {
	var kind string
	c := &cobra.Command{
		Use:   "validate FILE",
		Short: "Check a director or agent configuration file; every problem is printed with its line",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			file := args[0]
			if kind == "" {
				k, err := guessKind(file)
				if err != nil {
					return err
				}
				kind = k
			}
			var err error
			switch kind {
			case "director":
				_, err = director.LoadConfig(file)
			case "agent":
				_, err = agent.LoadConfig(file)
			default:
				return usagef("--kind %q: want director or agent", kind)
			}
			var errs conf.Errors
			if errors.As(err, &errs) {
				if g.json {
					_ = printJSON(c.OutOrStdout(), map[string]any{"message_type": "config_validate", "file": file, "kind": kind, "valid": false, "problems": []string(errs)})
				} else {
					for _, e := range errs {
						fmt.Fprintln(c.ErrOrStderr(), e)
					}
				}
				return usageError{fmt.Errorf("%s: %d problems", file, len(errs))}
			}
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(c.OutOrStdout(), map[string]any{"message_type": "config_validate", "file": file, "kind": kind, "valid": true})
			}
			g.msgf(c, "%s: a valid %s configuration\n", file, kind)
			return nil
		},
	}
	c.Flags().StringVar(&kind, "kind", "", "director or agent (default: from the file's keys)")
	return c
}

// guessKind tells a director's file (repositories, nodes) from an agent's
// (director).
func guessKind(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	var top map[string]any
	if err := yaml.Unmarshal(data, &top); err != nil || top == nil {
		return "", usagef("%s: not a YAML mapping; give --kind director or agent", file)
	}
	_, hasDirector := top["director"]
	_, hasNodes := top["nodes"]
	switch {
	case hasDirector && !hasNodes:
		return "agent", nil
	case hasNodes && !hasDirector:
		return "director", nil
	}
	return "", usagef("%s: cannot tell a director's file from an agent's; give --kind", file)
}
