package main

import (
	"context"
	"fmt"
	"path"
	"slices"

	"github.com/spf13/cobra"

	"bunker/internal/repo"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
)

type diffEntry struct {
	Path   string `json:"path"`
	Change string `json:"change"` // "+" added, "-" removed, "M" content, "U" metadata, "T" type
}

func newDiffCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "diff SNAPSHOT1 SNAPSHOT2",
		Short: "Show what changed between two snapshots",
		Long:  "Show what changed between two snapshots: + added, - removed, M content changed, U metadata changed, T type changed.",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			r, _, release, err := g.openRepoLocked(ctx, true, false)
			if err != nil {
				return err
			}
			defer release()
			snaps, damaged, err := r.ReadableSnapshots(ctx)
			if err != nil {
				return err
			}
			a, err := pickSnapshot(snaps, damaged, args[0], snapshotFilter{})
			if err != nil {
				return err
			}
			b, err := pickSnapshot(snaps, damaged, args[1], snapshotFilter{})
			if err != nil {
				return err
			}
			warnDamaged(c.ErrOrStderr(), damaged)
			var out []diffEntry
			if err := diffTrees(ctx, r, a.Tree, b.Tree, "/", &out); err != nil {
				return err
			}
			counts := map[string]int{}
			for _, d := range out {
				counts[d.Change]++
			}
			w := c.OutOrStdout()
			if g.json {
				if out == nil {
					out = []diffEntry{}
				}
				return printJSON(w, map[string]any{"changes": out, "added": counts["+"], "removed": counts["-"], "modified": counts["M"],
					"metadata": counts["U"], "type": counts["T"]})
			}
			for _, d := range out {
				fmt.Fprintf(w, "%-2s %s\n", d.Change, quote(d.Path))
			}
			fmt.Fprintf(w, "%d added, %d removed, %d modified, %d metadata only, %d type changed\n",
				counts["+"], counts["-"], counts["M"], counts["U"], counts["T"])
			return nil
		},
	}
}

func listAll(ctx context.Context, r *repository.Repository, n *snapshot.Node, p, change string, out *[]diffEntry) error {
	*out = append(*out, diffEntry{Path: p, Change: change})
	if n.Type != snapshot.TypeDir {
		return nil
	}
	return walk(ctx, r, n.Subtree, p, func(q string, _ *snapshot.Node) error {
		*out = append(*out, diffEntry{Path: q, Change: change})
		return nil
	})
}

func diffTrees(ctx context.Context, r *repository.Repository, a, b repo.ID, dir string, out *[]diffEntry) error {
	if a == b {
		return nil
	}
	ta, err := loadTree(ctx, r, a)
	if err != nil {
		return err
	}
	tb, err := loadTree(ctx, r, b)
	if err != nil {
		return err
	}
	i, j := 0, 0
	for i < len(ta.Nodes) || j < len(tb.Nodes) {
		switch {
		case j >= len(tb.Nodes) || i < len(ta.Nodes) && ta.Nodes[i].Name < tb.Nodes[j].Name:
			if err := listAll(ctx, r, ta.Nodes[i], path.Join(dir, ta.Nodes[i].Name), "-", out); err != nil {
				return err
			}
			i++
		case i >= len(ta.Nodes) || tb.Nodes[j].Name < ta.Nodes[i].Name:
			if err := listAll(ctx, r, tb.Nodes[j], path.Join(dir, tb.Nodes[j].Name), "+", out); err != nil {
				return err
			}
			j++
		default:
			na, nb := ta.Nodes[i], tb.Nodes[j]
			p := path.Join(dir, na.Name)
			switch {
			case na.Type != nb.Type:
				*out = append(*out, diffEntry{Path: p, Change: "T"})
			case na.Type == snapshot.TypeDir:
				if !sameMeta(na, nb) {
					*out = append(*out, diffEntry{Path: p, Change: "U"})
				}
				if err := diffTrees(ctx, r, na.Subtree, nb.Subtree, p, out); err != nil {
					return err
				}
			case !slices.Equal(na.Content, nb.Content) || na.LinkTarget != nb.LinkTarget || na.Rdev != nb.Rdev:
				*out = append(*out, diffEntry{Path: p, Change: "M"})
			case !sameMeta(na, nb):
				*out = append(*out, diffEntry{Path: p, Change: "U"})
			}
			i++
			j++
		}
	}
	return nil
}

func sameMeta(a, b *snapshot.Node) bool {
	return a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID && a.ModTime.Equal(b.ModTime) &&
		slices.EqualFunc(a.Xattrs, b.Xattrs, func(x, y snapshot.Xattr) bool { return x.Name == y.Name && string(x.Value) == string(y.Value) })
}
