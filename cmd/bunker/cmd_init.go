package main

import (
	"github.com/spf13/cobra"

	"bunker/internal/backend/s3"
	"bunker/internal/repo/repository"
)

func newInitCmd(g *globalOptions) *cobra.Command {
	var lockMode string
	var lockDays int
	var from sideFlags
	c := &cobra.Command{
		Use:   "init",
		Short: "Create a new repository",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			loc, err := g.repoLocation()
			if err != nil {
				return err
			}
			pw, err := g.password("enter a password for the new repository: ", true)
			if err != nil {
				return err
			}
			opts, err := g.repoOptions()
			if err != nil {
				return err
			}
			var lock *s3.LockConfig
			switch {
			case lockMode == "" && c.Flags().Changed("lock-days"):
				return usagef("--lock-days goes with --object-lock")
			case lockMode == "":
			case lockMode != "compliance" && lockMode != "governance":
				return usagef("--object-lock %q: want compliance or governance", lockMode)
			case lockDays < 1 || lockDays > 36500:
				return usagef("--lock-days must be between 1 and 36500, got %d", lockDays)
			default:
				lock = &s3.LockConfig{Mode: lockMode, Days: lockDays}
				opts.ObjectLock = &repository.ObjectLock{Mode: lockMode, Days: lockDays}
			}
			if c.Flags().Changed("copy-params-from") {
				if from.repo == "" {
					return usagef("--copy-params-from needs a repository location")
				}
				if sameLocation(from.repo, loc) {
					return usagef("--copy-params-from names the repository being created")
				}
				src, release, err := copyParamsSource(ctx, g, from)
				if err != nil {
					return err
				}
				defer release()
				opts.ParamsFrom = src
			}
			be, err := g.createBackend(ctx, lock)
			if err != nil {
				return err
			}
			defer be.Close()
			r, err := repository.Create(ctx, be, pw, opts)
			if err != nil {
				return err
			}
			defer r.Close()
			if g.json {
				return printJSON(c.OutOrStdout(), map[string]any{"message_type": "initialized", "id": r.Config().ID, "repository": loc})
			}
			g.msgf(c, "created repository %s at %s\n", shortName(r.Config().ID), loc)
			g.msgf(c, "Keep the password safe: without it the data cannot be read back.\n")
			if opts.ParamsFrom != nil {
				g.msgf(c, "It shares the keys and chunking of %s: copies between the two move packs as they are.\n", from.repo)
			}
			if lock != nil {
				g.msgf(c, "Every object is locked (%s mode) for %d days; prune deletes only what has expired.\n", lock.Mode, lock.Days)
			}
			return nil
		},
	}
	c.Flags().StringVar(&lockMode, "object-lock", "", "lock every object with S3 Object Lock: `mode` compliance or governance (s3: repositories; the bucket must have Object Lock, a new one gets it)")
	c.Flags().IntVar(&lockDays, "lock-days", 30, "with --object-lock: how many `days` each object stays locked (prune extends what kept snapshots use)")
	f := c.Flags()
	f.StringVar(&from.repo, "copy-params-from", "", "share the keys and chunker parameters of the repository at `location` (the source of later copies; opened with the --from-* options)")
	f.StringVar(&from.passwordFile, "from-password-file", "", "`file` holding the password of the --copy-params-from repository (env BUNKER_FROM_PASSWORD_FILE or BUNKER_FROM_PASSWORD_COMMAND)")
	f.StringVar(&from.cacert, "from-cacert", "", "PEM `file` of CA certificates for the --copy-params-from repository's storage")
	f.StringVar(&from.clientCert, "from-tls-client-cert", "", "PEM `file` with a client certificate for the --copy-params-from repository's server")
	f.StringVar(&from.credsFile, "from-credentials-file", "", "`file` of the --copy-params-from storage's credentials (NAME=value lines, as for copy)")
	return c
}
