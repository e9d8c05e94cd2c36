// Command mkcopyrepo builds the source repository of the copy benchmark: a
// few thousand snapshots (3000 by default) of several hosts, each snapshot
// one small change away from the previous one of its host, like a year of
// frequent backups of small machines. A copy with nothing new must then
// finish in well under a second: it may read only the two snapshot lists.
//
//	go run ./scripts/bench/mkcopyrepo -repo DIR -password-file FILE [-snapshots N]
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"time"

	"bunker/internal/repo"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
	"bunker/scripts/bench/benchrepo"
)

const (
	hosts   = 5
	dirs    = 10
	files   = 20
	perBlob = 4096
)

func main() {
	dir := flag.String("repo", "", "repository directory to create (must not exist)")
	pwFile := flag.String("password-file", "", "file with the password")
	snaps := flag.Int("snapshots", 3000, "number of snapshots")
	flag.Parse()
	if *dir == "" || *pwFile == "" {
		fmt.Fprintln(os.Stderr, "usage: mkcopyrepo -repo DIR -password-file FILE [-snapshots N]")
		os.Exit(2)
	}
	if err := run(*dir, *pwFile, *snaps); err != nil {
		fmt.Fprintf(os.Stderr, "mkcopyrepo: %v\n", err)
		os.Exit(1)
	}
}

func run(dir, pwFile string, snaps int) error {
	ctx := context.Background()
	r, closeRepo, err := benchrepo.Create(ctx, dir, pwFile)
	if err != nil {
		return err
	}
	defer closeRepo()
	start := time.Now()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	buf := make([]byte, perBlob)
	blob := func(host, d, f, version int) (repo.ID, error) {
		for i := 0; i < perBlob; i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], uint64(host)<<48^uint64(d)<<40^uint64(f)<<32^uint64(version)<<8^uint64(i)*0x9e3779b97f4a7c15)
		}
		id, _, _, err := r.SaveBlob(ctx, repo.DataBlob, buf, repo.ID{})
		return id, err
	}
	// state[host][dir][file] is the version of each file.
	state := make([][dirs][files]int, hosts)
	for s := 0; s < snaps; s++ {
		h := s % hosts
		n := s / hosts
		state[h][n%dirs][(n/dirs)%files]++
		root := &snapshot.Tree{}
		for d := 0; d < dirs; d++ {
			t := &snapshot.Tree{}
			for f := 0; f < files; f++ {
				id, err := blob(h, d, f, state[h][d][f])
				if err != nil {
					return err
				}
				t.Nodes = append(t.Nodes, &snapshot.Node{Name: fmt.Sprintf("f%02d", f), Type: snapshot.TypeFile, Mode: 0o644,
					ModTime: base, Size: perBlob, Content: []repo.ID{id}})
			}
			id, err := saveTree(r, t)
			if err != nil {
				return err
			}
			root.Nodes = append(root.Nodes, &snapshot.Node{Name: fmt.Sprintf("d%02d", d), Type: snapshot.TypeDir, Mode: 0o755, ModTime: base, Subtree: id})
		}
		id, err := saveTree(r, root)
		if err != nil {
			return err
		}
		// As a backup does: packs, then an index, then the snapshot.
		if err := r.Flush(ctx); err != nil {
			return err
		}
		sn := &snapshot.Snapshot{Time: base.Add(time.Duration(s) * time.Hour), Tree: id, Paths: []string{"/srv"},
			Hostname: fmt.Sprintf("host%d", h), ProgramVersion: "mkcopyrepo"}
		if _, err := r.SaveSnapshot(ctx, sn); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "mkcopyrepo: %d snapshots in %s\n", snaps, time.Since(start).Round(time.Second))
	return nil
}

func saveTree(r *repository.Repository, t *snapshot.Tree) (repo.ID, error) {
	id, _, _, err := r.SaveBlob(context.Background(), repo.TreeBlob, t.Encode(), repo.ID{})
	return id, err
}
