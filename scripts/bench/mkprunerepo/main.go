// Command mkprunerepo builds the repository that `make bench` prunes: many
// small data blobs (1 million by default) spread over snapshots so that
// every pack holds blobs of every snapshot. Forgetting half of the snapshots
// then leaves every pack half unused: the prune that follows reads the whole
// index, walks every tree, repacks everything and deletes every old pack, the
// heaviest prune there is for its size.
//
//	go run ./scripts/bench/mkprunerepo -repo DIR -password-file FILE [-blobs N] [-snapshots S]
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sync/errgroup"

	"bunker/internal/repo"
	"bunker/internal/snapshot"
	"bunker/scripts/bench/benchrepo"
)

func main() {
	dir := flag.String("repo", "", "repository directory to create (must not exist)")
	pwFile := flag.String("password-file", "", "file with the password")
	blobs := flag.Int("blobs", 1_000_000, "number of data blobs")
	snaps := flag.Int("snapshots", 20, "number of snapshots")
	size := flag.Int("blob-size", 256, "bytes per data blob")
	perFile := flag.Int("blobs-per-file", 50, "data blobs per file")
	flag.Parse()
	if *dir == "" || *pwFile == "" {
		fmt.Fprintln(os.Stderr, "usage: mkprunerepo -repo DIR -password-file FILE")
		os.Exit(2)
	}
	if err := run(*dir, *pwFile, *blobs, *snaps, *size, *perFile); err != nil {
		fmt.Fprintf(os.Stderr, "mkprunerepo: %v\n", err)
		os.Exit(1)
	}
}

func run(dir, pwFile string, blobs, snaps, size, perFile int) error {
	ctx := context.Background()
	r, closeRepo, err := benchrepo.Create(ctx, dir, pwFile)
	if err != nil {
		return err
	}
	defer closeRepo()
	start := time.Now()

	// Blob i belongs to snapshot i % snaps; workers take interleaved ranges
	// so that packs mix snapshots.
	ids := make([]repo.ID, blobs)
	workers := runtime.GOMAXPROCS(0)
	g, gctx := errgroup.WithContext(ctx)
	for w := 0; w < workers; w++ {
		g.Go(func() error {
			rng := rand.New(rand.NewChaCha8([32]byte{byte(w), 'p', 'r', 'u', 'n', 'e'}))
			buf := make([]byte, size)
			for i := w; i < blobs; i += workers {
				binary.LittleEndian.PutUint64(buf, uint64(i))
				for j := 8; j < size; j += 8 {
					binary.LittleEndian.PutUint64(buf[j:], rng.Uint64())
				}
				id, _, _, err := r.SaveBlob(gctx, repo.DataBlob, buf, repo.ID{})
				if err != nil {
					return err
				}
				ids[i] = id
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for s := 0; s < snaps; s++ {
		var content []repo.ID
		for i := s; i < blobs; i += snaps {
			content = append(content, ids[i])
		}
		root := &snapshot.Tree{}
		dirTree := &snapshot.Tree{}
		dirs := 0
		flushDir := func() error {
			if len(dirTree.Nodes) == 0 {
				return nil
			}
			id, _, _, err := r.SaveBlob(ctx, repo.TreeBlob, dirTree.Encode(), repo.ID{})
			if err != nil {
				return err
			}
			root.Nodes = append(root.Nodes, &snapshot.Node{Name: fmt.Sprintf("d%04d", dirs), Type: snapshot.TypeDir, Mode: 0o755, ModTime: base, Subtree: id})
			dirs++
			dirTree = &snapshot.Tree{}
			return nil
		}
		for f := 0; f*perFile < len(content); f++ {
			c := content[f*perFile : min((f+1)*perFile, len(content))]
			dirTree.Nodes = append(dirTree.Nodes, &snapshot.Node{Name: fmt.Sprintf("f%06d", f), Type: snapshot.TypeFile, Mode: 0o644,
				ModTime: base, Size: uint64(len(c) * size), Content: c})
			if len(dirTree.Nodes) == 100 {
				if err := flushDir(); err != nil {
					return err
				}
			}
		}
		if err := flushDir(); err != nil {
			return err
		}
		id, _, _, err := r.SaveBlob(ctx, repo.TreeBlob, root.Encode(), repo.ID{})
		if err != nil {
			return err
		}
		if err := r.Flush(ctx); err != nil {
			return err
		}
		sn := &snapshot.Snapshot{Time: base.Add(time.Duration(s) * time.Hour), Tree: id, Paths: []string{"/data"}, Hostname: "bench",
			ProgramVersion: "mkprunerepo"}
		if _, err := r.SaveSnapshot(ctx, sn); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "mkprunerepo: %d blobs in %d snapshots in %s (%s)\n", blobs, snaps, time.Since(start).Round(time.Second), filepath.Clean(dir))
	return nil
}
