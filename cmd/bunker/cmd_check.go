package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"bunker/internal/checker"
	"bunker/internal/ui"
)

// parseSubset parses "n/m" or "p%". A percentage is one of round(100/p)
// shares of the packs, a random one each run: the same share every run
// would leave the others never read.
func parseSubset(s string) (n, m uint32, err error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || v <= 0 || v > 100 {
			return 0, 0, usagef("--read-data-subset %q: want a percentage in (0, 100]", s)
		}
		m := max(uint32(100/v+0.5), 1)
		return 1 + rand.Uint32N(m), m, nil
	}
	a, b, ok := strings.Cut(s, "/")
	x, err1 := strconv.ParseUint(a, 10, 32)
	y, err2 := strconv.ParseUint(b, 10, 32)
	if !ok || err1 != nil || err2 != nil || x < 1 || y < 1 || x > y {
		return 0, 0, usagef("--read-data-subset %q: want n/m with 1 <= n <= m, or a percentage", s)
	}
	return uint32(x), uint32(y), nil
}

func newCheckCmd(g *globalOptions) *cobra.Command {
	var readData bool
	var subset string
	c := &cobra.Command{
		Use:   "check",
		Short: "Check the repository's structure, and with --read-data all of its data",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			opts := checker.Options{ReadData: readData || subset != ""}
			if subset != "" {
				n, m, err := parseSubset(subset)
				if err != nil {
					return err
				}
				opts.SubsetN, opts.SubsetM = n, m
			}
			r, _, release, err := g.openRepoLocked(ctx, false, false)
			if err != nil {
				return err
			}
			defer release()
			stop := ui.StartProgress(c.ErrOrStderr(), !g.quiet && !g.json && isTerminal(os.Stderr), func() string { return "checking" })
			var progress struct{ done, total int }
			opts.Progress = func(done, total int) { progress.done, progress.total = done, total }
			res, err := checker.Check(ctx, r, opts)
			stop()
			if err != nil {
				return err
			}
			w := c.OutOrStdout()
			if g.json {
				if res.Problems == nil {
					res.Problems = []checker.Problem{}
				}
				if err := printJSON(w, res); err != nil {
					return err
				}
			} else {
				for _, p := range res.Problems {
					fmt.Fprintf(w, "error: %s\n", quote(p.String()))
				}
				for _, d := range res.Damaged {
					fmt.Fprintf(w, "damaged blob %s in pack %s\n", shortName(d.Blob), shortName(d.Pack))
					for _, f := range d.Files {
						fmt.Fprintf(w, "  file %s\n", quote(f))
					}
					for _, s := range d.Snapshots {
						fmt.Fprintf(w, "  in snapshot %s\n", shortName(s))
					}
				}
				g.msgf(c, "checked %d snapshots, %d trees, %d packs (%d read in full), %d unreferenced packs\n",
					res.Snapshots, res.Trees, res.Packs, res.PacksRead, res.UnreferencedPacks)
			}
			if !res.OK() {
				// One line: what was found, and the runbook's first steps.
				fix := "`bunker repair index`"
				if res.PacksRead > 0 {
					fix = "`bunker repair index --read-data`"
				}
				fmt.Fprintf(c.ErrOrStderr(), "bunker: check found %d problems: repair with %s, then `bunker repair snapshots --dry-run` (docs/operations.md, \"Data was lost\")\n",
					len(res.Problems), fix)
				return errDamaged
			}
			g.msgf(c, "no problems found\n")
			return nil
		},
	}
	c.Flags().BoolVar(&readData, "read-data", false, "read and verify every pack")
	c.Flags().StringVar(&subset, "read-data-subset", "", "read and verify a subset of the packs: `n/m` (share n of m; 1/m .. m/m cover all), or p% (a random one of round(100/p) shares)")
	return c
}
