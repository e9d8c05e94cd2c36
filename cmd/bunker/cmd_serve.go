package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/spf13/cobra"

	"bunker/internal/server"
)

func newServeCmd(g *globalOptions) *cobra.Command {
	var (
		listen, root, users         string
		tlsCert, tlsKey, clientCA   string
		requireClientCert, jsonLogs bool
	)
	c := &cobra.Command{
		Use:   "serve",
		Short: "Serve repositories over HTTPS (rest: URLs), append-only for clients with the append role",
		Long: "serve makes the repositories in subdirectories of --root available as\n" +
			"rest:https://HOST:PORT/NAME. Users come from --users, a file of lines\n" +
			"name:role:hash[:repo,...] (role read, append or admin; the hash from\n" +
			"`bunker serve hash-password`, empty for a user who signs in with a client\n" +
			"certificate whose common name is the user's name).",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if root == "" || users == "" {
				return usagef("--root and --users are required")
			}
			if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
				return usagef("--root %s is not a directory", root)
			}
			u, err := server.LoadUsers(users)
			if err != nil {
				return usagef("users file: %v", err)
			}
			tlsCfg, err := server.TLSConfig(server.TLSOptions{CertFile: tlsCert, KeyFile: tlsKey, ClientCA: clientCA, RequireClientCert: requireClientCert})
			if err != nil {
				return usageError{err}
			}
			var h slog.Handler = slog.NewTextHandler(c.ErrOrStderr(), nil)
			if jsonLogs {
				h = slog.NewJSONHandler(c.ErrOrStderr(), nil)
			}
			log := slog.New(h)
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			log.Info("serving", "address", l.Addr().String(), "root", root, "users", len(u), "client_certificates", clientCA != "")
			// Tests and scripts read the address from the first line of stdout.
			fmt.Fprintf(c.OutOrStdout(), "listening on %s\n", l.Addr())
			err = server.New(server.Options{Root: root, Users: u, Log: log}).Serve(c.Context(), l, tlsCfg)
			if err != nil && !errors.Is(err, net.ErrClosed) {
				return err
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:8443", "`address` to listen on")
	f.StringVar(&root, "root", "", "`directory` holding one subdirectory per repository")
	f.StringVar(&users, "users", "", "users `file`")
	f.StringVar(&tlsCert, "tls-cert", "", "server certificate (PEM `file`; may also hold the key)")
	f.StringVar(&tlsKey, "tls-key", "", "server key (PEM `file`)")
	f.StringVar(&clientCA, "client-ca", "", "CA (PEM `file`) whose client certificates sign users in")
	f.BoolVar(&requireClientCert, "require-client-cert", false, "refuse connections without a valid client certificate")
	f.BoolVar(&jsonLogs, "log-json", false, "log as JSON lines")

	hash := &cobra.Command{
		Use:   "hash-password",
		Short: "Print a users-file hash of a password read from --password-file or the terminal",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			pw, err := g.password("password to hash: ", true)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.OutOrStdout(), server.HashPassword(pw))
			return nil
		},
	}
	c.AddCommand(hash)
	return c
}
