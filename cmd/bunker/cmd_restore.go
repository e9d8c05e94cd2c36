package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"bunker/internal/archiver"
	"bunker/internal/repo"
	"bunker/internal/restorer"
	"bunker/internal/snapshot"
	"bunker/internal/ui"
)

func newRestoreCmd(g *globalOptions) *cobra.Command {
	var (
		target             string
		includes, excludes []string
		verify             bool
		f                  snapshotFilter
		grp                groupRestore
	)
	c := &cobra.Command{
		Use:   "restore SNAPSHOT|latest --target DIR | restore --plan NAME --group JOB",
		Short: "Restore a snapshot into a directory",
		Long: "Restore a snapshot, or some of its paths, into a directory. Nothing is ever written outside it.\n" +
			"Files that cannot be restored whole are named and left out, never written with gaps.\n\n" +
			"With --plan and --group, restore a group a director committed: every node (or --node ones) through its\n" +
			"agent, with the plan's restore hooks around it; --map old=new restores a node's part through another\n" +
			"node's agent (production into staging).",
		Args: func(c *cobra.Command, args []string) error {
			if grp.plan != "" {
				return cobra.NoArgs(c, args)
			}
			return cobra.ExactArgs(1)(c, args)
		},
		RunE: func(c *cobra.Command, args []string) error {
			if grp.plan != "" || grp.group != "" {
				if target != "" || len(excludes) > 0 || verify {
					return usagef("--target, --exclude and --verify are for one snapshot; a group restores where each agent's configuration says")
				}
				return grp.run(c, g, includes)
			}
			if target == "" {
				return usagef("--target is required")
			}
			ctx := c.Context()
			start := time.Now()
			r, sn, release, err := g.openSnapshot(ctx, args[0], f, c.ErrOrStderr())
			if err != nil {
				return err
			}
			defer release()
			// The plan holds every file's node and the places of its blobs:
			// about 200 bytes more per blob than the index (30 MB for the
			// bench's 39k files), room the collector needs or it runs all
			// the time (measured: a quarter more CPU without it).
			setMemoryLimit(2 * r.Index().Len())
			var failed []string
			res := restorer.New(r, restorer.Options{
				Includes: includes, Excludes: excludes, Match: archiver.Excluded, Verify: verify,
				Owner: os.Geteuid() == 0,
				Error: func(path string, err error) {
					failed = append(failed, path)
					if g.json {
						_ = printJSON(c.ErrOrStderr(), map[string]any{"message_type": "error", "item": path, "error": err.Error()})
					} else {
						fmt.Fprintf(c.ErrOrStderr(), "error: %s: %s\n", quote(path), oneLine(err))
					}
				},
			})
			stop := ui.StartProgress(c.ErrOrStderr(), !g.quiet && !g.json && isTerminal(os.Stderr), func() string {
				return fmt.Sprintf("%d files, %s restored", res.Stats.Files.Load(), ui.Bytes(res.Stats.Bytes.Load()))
			})
			err = res.Run(ctx, sn.Tree, target)
			stop()
			if err != nil && !errors.Is(err, restorer.ErrIncomplete) {
				// Stopped (interrupted, storage failure): no summary that
				// reads as "restored"; the error is the one line.
				return err
			}
			s := &res.Stats
			if g.json {
				_ = printJSON(c.OutOrStdout(), map[string]any{"message_type": "summary", "snapshot_id": sn.ID.String(),
					"files": s.Files.Load(), "dirs": s.Dirs.Load(), "links": s.Links.Load(), "others": s.Others.Load(),
					"bytes": s.Bytes.Load(), "errors": failed, "verified": verify, "duration_seconds": time.Since(start).Seconds()})
			} else {
				v := ""
				if verify && err == nil {
					v = ", verified"
				}
				g.msgf(c, "restored snapshot %s to %s: %d files, %d dirs, %d hard links, %d others, %s in %s%s\n",
					sn.ID.Short(), target, s.Files.Load(), s.Dirs.Load(), s.Links.Load(), s.Others.Load(),
					ui.Bytes(s.Bytes.Load()), ui.Duration(time.Since(start)), v)
			}
			if errors.Is(err, restorer.ErrIncomplete) {
				fmt.Fprintf(c.ErrOrStderr(), "bunker: restore incomplete: %d entries could not be restored (listed above)\n", len(failed))
				return errIncomplete
			}
			return err
		},
	}
	c.Flags().StringVarP(&target, "target", "t", "", "directory to restore into (created if missing)")
	c.Flags().StringArrayVarP(&includes, "include", "i", nil, "restore only this snapshot `path` and what is below it (repeatable)")
	c.Flags().StringArrayVarP(&excludes, "exclude", "e", nil, "leave out entries matching `pattern` (repeatable)")
	c.Flags().BoolVar(&verify, "verify", false, "read every restored file back and check it against the snapshot")
	addFilterFlags(c, &f)
	grp.register(c)
	return c
}

func newDumpCmd(g *globalOptions) *cobra.Command {
	var f snapshotFilter
	c := &cobra.Command{
		Use:   "dump SNAPSHOT|latest FILE",
		Short: "Write one file of a snapshot to standard output",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			r, sn, release, err := g.openSnapshot(ctx, args[0], f, c.ErrOrStderr())
			if err != nil {
				return err
			}
			defer release()
			node, err := findNode(ctx, r, sn.Tree, args[1])
			if err != nil {
				return err
			}
			if node.Type != snapshot.TypeFile {
				return fmt.Errorf("%s is a %v, not a file", args[1], node.Type)
			}
			return dumpFile(c, r, node, c.OutOrStdout())
		},
	}
	addFilterFlags(c, &f)
	return c
}

func dumpFile(c *cobra.Command, r interface {
	LoadBlob(ctx context.Context, t repo.BlobType, id repo.ID) ([]byte, error)
}, n *snapshot.Node, w io.Writer) error {
	for _, id := range n.Content {
		data, err := r.LoadBlob(c.Context(), repo.DataBlob, id)
		if err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
	return nil
}
