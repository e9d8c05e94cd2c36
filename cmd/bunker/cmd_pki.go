package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"bunker/internal/pki"
)

func newPKICmd(g *globalOptions) *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "pki",
		Short: "Certificates of a deployment: a CA, the director's and each agent's",
	}
	c.PersistentFlags().StringVar(&dir, "dir", "", "directory of the deployment's CA (ca.pem, ca.key) and of the certificates issued (required)")

	var deployment string
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create the certificate authority of a deployment",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if dir == "" {
				return usagef("--dir is required")
			}
			ca, err := pki.Init(dir, deployment, time.Now())
			if err != nil {
				return pkiError(err)
			}
			if g.json {
				return printJSON(c.OutOrStdout(), map[string]any{"message_type": "pki_init", "ca": dir + "/" + pki.CACertFile,
					"not_after": ca.Cert.NotAfter})
			}
			g.msgf(c, "created the CA of %s in %s (valid until %s)\n", deployment, dir, ca.Cert.NotAfter.Format("2006-01-02"))
			g.msgf(c, "Keep %s/%s offline if you can: whoever holds it can issue certificates for any node.\n", dir, pki.CAKeyFile)
			return nil
		},
	}
	initCmd.Flags().StringVar(&deployment, "deployment", "bunker", "name of the deployment, written into the CA")

	var hosts []string
	var days int
	issueCmd := &cobra.Command{
		Use:   "issue director|agent|operator NAME",
		Short: "Issue a certificate (and key) for the director, one agent's node, or an operator of the director's API",
		Long: `Issue a certificate for the director or for an agent. An agent's certificate
names its node: the director takes the node's identity from it, so an agent
can never act as another node. The files are written next to the CA as
<role>-<name>.pem (certificate and CA chain) and <role>-<name>.key (mode 0600).`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			if dir == "" {
				return usagef("--dir is required")
			}
			role, name := args[0], args[1]
			if role != pki.RoleDirector && role != pki.RoleAgent && role != pki.RoleOperator {
				return usagef("unknown role %q: want director, agent or operator", role)
			}
			if days < 1 || days > 3650 {
				return usagef("--days must be between 1 and 3650, got %d", days)
			}
			if role != pki.RoleDirector && len(hosts) > 0 {
				return usagef("--host is for a director's certificate")
			}
			ca, err := pki.Load(dir)
			if err != nil {
				return fmt.Errorf("load the CA (run `bunker pki init --dir %s` first): %w", dir, err)
			}
			cert, key, err := ca.IssueFiles(dir, pki.Request{Role: role, Name: name, Hosts: hosts, Validity: time.Duration(days) * 24 * time.Hour}, time.Now())
			if err != nil {
				return pkiError(err)
			}
			if g.json {
				return printJSON(c.OutOrStdout(), map[string]any{"message_type": "pki_issue", "role": role, "name": name, "certificate": cert, "key": key})
			}
			g.msgf(c, "issued the %s certificate of %s: %s (key %s)\n", role, name, cert, key)
			return nil
		},
	}
	issueCmd.Flags().StringArrayVar(&hosts, "host", nil, "a DNS name or IP address the director is reached at (repeatable)")
	issueCmd.Flags().IntVar(&days, "days", 730, "validity in `days`")
	c.AddCommand(initCmd, issueCmd)
	return c
}

// pkiError turns a bad name into a usage error.
func pkiError(err error) error {
	if errors.Is(err, pki.ErrBadName) {
		return usageError{err}
	}
	return err
}
