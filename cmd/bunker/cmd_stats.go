package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"bunker/internal/backend"
	"bunker/internal/repo"
	"bunker/internal/repo/index"
	"bunker/internal/snapshot"
	"bunker/internal/ui"
)

type statsResult struct {
	Snapshots     int     `json:"snapshots"`
	Files         uint64  `json:"files_in_snapshots"`
	RestoreSize   uint64  `json:"restore_size"`
	Blobs         int     `json:"blobs"`
	Packs         int     `json:"packs"`
	RawSize       uint64  `json:"raw_data_size"`
	StoredSize    uint64  `json:"stored_blob_size"`
	RepoSize      uint64  `json:"repository_size"`
	Compression   float64 `json:"compression_ratio"`
	Deduplication float64 `json:"deduplication_ratio"`
}

func newStatsCmd(g *globalOptions) *cobra.Command {
	var f snapshotFilter
	c := &cobra.Command{
		Use:   "stats",
		Short: "Show how much data the snapshots hold and how much the repository stores",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
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
			var s statsResult
			for _, sn := range snaps {
				if !f.match(sn) {
					continue
				}
				s.Snapshots++
				err := walk(ctx, r, sn.Tree, "/", func(_ string, n *snapshot.Node) error {
					if n.Type == snapshot.TypeFile {
						s.Files++
						s.RestoreSize += n.Size
					}
					return nil
				})
				if err != nil {
					return err
				}
			}
			packs := map[repo.ID]bool{}
			r.Index().Each(func(_ repo.BlobHandle, l index.Location) {
				s.Blobs++
				s.RawSize += uint64(l.RawLength)
				s.StoredSize += uint64(l.Length)
				packs[l.Pack] = true
			})
			s.Packs = len(packs)
			for _, t := range backend.AllTypes {
				err := r.Backend().List(ctx, t, func(fi backend.FileInfo) error {
					s.RepoSize += uint64(fi.Size)
					return nil
				})
				if err != nil {
					return err
				}
			}
			if s.StoredSize > 0 {
				s.Compression = float64(s.RawSize) / float64(s.StoredSize)
			}
			if s.RawSize > 0 {
				s.Deduplication = float64(s.RestoreSize) / float64(s.RawSize)
			}
			if g.json {
				if err := printJSON(c.OutOrStdout(), s); err != nil {
					return err
				}
			} else {
				w := c.OutOrStdout()
				fmt.Fprintf(w, "Snapshots:          %d\n", s.Snapshots)
				fmt.Fprintf(w, "Files in snapshots: %d, %s to restore\n", s.Files, ui.Bytes(s.RestoreSize))
				fmt.Fprintf(w, "Unique data:        %d blobs in %d packs, %s (%s stored)\n", s.Blobs, s.Packs, ui.Bytes(s.RawSize), ui.Bytes(s.StoredSize))
				fmt.Fprintf(w, "Repository size:    %s\n", ui.Bytes(s.RepoSize))
				fmt.Fprintf(w, "Compression:        %.2fx, deduplication %.2fx\n", s.Compression, s.Deduplication)
			}
			if len(damaged) > 0 {
				return errDamagedLeftOut(damaged)
			}
			return nil
		},
	}
	addFilterFlags(c, &f)
	return c
}
