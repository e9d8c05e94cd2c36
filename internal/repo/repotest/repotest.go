// Package repotest holds fixture helpers shared by the tests of the packages
// that work on a repository (pruner, repair, reliability): open an in-memory
// repository, save blobs, trees and snapshots, inspect and tamper with the
// stored files. It is for tests only: no production code may import it.
package repotest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
)

// Options has small packs and a cheap KDF: the tests make many packs quickly.
var Options = repository.Options{KDF: crypto.TestKDF, PackSize: 64 << 10}

// Password is the password of the test repositories.
const Password = "pw"

// BaseTime is the modification time of the nodes made here, and a base for
// snapshot times.
var BaseTime = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// Open opens the repository on be with Password and Options, loading its
// index if withIndex; it is closed when the test ends.
func Open(t testing.TB, be backend.Backend, withIndex bool) *repository.Repository {
	t.Helper()
	ctx := context.Background()
	r, err := repository.Open(ctx, be, []byte(Password), Options)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	if withIndex {
		if err := r.LoadIndex(ctx); err != nil {
			t.Fatalf("load index: %v", err)
		}
	}
	return r
}

// RandBytes returns n pseudo-random bytes, the same for the same seed.
func RandBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// SaveData stores data as a data blob and returns its ID.
func SaveData(t testing.TB, r *repository.Repository, data []byte) repo.ID {
	t.Helper()
	id, _, _, err := r.SaveBlob(context.Background(), repo.DataBlob, data, repo.ID{})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// SaveTree stores a tree of nodes (sorted) and returns its ID.
func SaveTree(t testing.TB, r *repository.Repository, nodes ...*snapshot.Node) repo.ID {
	t.Helper()
	tree := &snapshot.Tree{Nodes: nodes}
	tree.Sort()
	id, _, _, err := r.SaveBlob(context.Background(), repo.TreeBlob, tree.Encode(), repo.ID{})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// FileNode is a regular file node of size bytes made of content.
func FileNode(name string, size int, content ...repo.ID) *snapshot.Node {
	return &snapshot.Node{Name: name, Type: snapshot.TypeFile, Mode: 0o644, ModTime: BaseTime, Links: 1,
		Size: uint64(size), Content: content}
}

// DirNode is a directory node whose tree is sub.
func DirNode(name string, sub repo.ID) *snapshot.Node {
	return &snapshot.Node{Name: name, Type: snapshot.TypeDir, Mode: 0o755, ModTime: BaseTime, Subtree: sub}
}

// LoadTree loads and decodes tree id of r; the test fails if it cannot.
func LoadTree(t testing.TB, r *repository.Repository, id repo.ID) *snapshot.Tree {
	t.Helper()
	data, err := r.LoadBlob(context.Background(), repo.TreeBlob, id)
	if err != nil {
		t.Fatalf("load tree %s: %v", id.Short(), err)
	}
	tree, err := snapshot.DecodeTree(data)
	if err != nil {
		t.Fatalf("decode tree %s: %v", id.Short(), err)
	}
	return tree
}

// Flush writes r's pending packs and index.
func Flush(t testing.TB, r *repository.Repository) {
	t.Helper()
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// SaveSnapshot flushes r and stores a snapshot of tree.
func SaveSnapshot(t testing.TB, r *repository.Repository, tree repo.ID, at time.Time) repo.ID {
	t.Helper()
	Flush(t, r)
	id, err := r.SaveSnapshot(context.Background(), &snapshot.Snapshot{Time: at, Tree: tree, Paths: []string{"/src"}, Hostname: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// PackOf is the pack that r's index gives for a blob; the test fails if the
// blob is not indexed.
func PackOf(t testing.TB, r *repository.Repository, tp repo.BlobType, id repo.ID) repo.ID {
	t.Helper()
	loc, ok := r.LookupBlob(repo.BlobHandle{Type: tp, ID: id})
	if !ok {
		t.Fatalf("%v blob %s is not indexed", tp, id.Short())
	}
	return loc.Pack
}

// Files lists the stored files of one type by ID.
func Files(t testing.TB, be backend.Backend, ft backend.FileType) map[repo.ID]backend.FileInfo {
	t.Helper()
	out := map[repo.ID]backend.FileInfo{}
	err := be.List(context.Background(), ft, func(fi backend.FileInfo) error {
		id, err := repo.ParseID(fi.Name)
		if err != nil {
			return err
		}
		out[id] = fi
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Exists reports whether a file is stored.
func Exists(t testing.TB, be backend.Backend, ft backend.FileType, id repo.ID) bool {
	t.Helper()
	_, err := be.Stat(context.Background(), backend.Handle{Type: ft, Name: id.String()})
	if err != nil && !errors.Is(err, backend.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// Remove deletes a stored file.
func Remove(t testing.TB, be backend.Backend, ft backend.FileType, id repo.ID) {
	t.Helper()
	if err := be.Remove(context.Background(), backend.Handle{Type: ft, Name: id.String()}); err != nil {
		t.Fatal(err)
	}
}

// Replace rewrites a stored file with edit applied to its content.
func Replace(t testing.TB, be backend.Backend, ft backend.FileType, id repo.ID, edit func([]byte) []byte) {
	t.Helper()
	ctx := context.Background()
	h := backend.Handle{Type: ft, Name: id.String()}
	data, err := backend.LoadAll(ctx, be, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Remove(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := be.Save(ctx, h, edit(data)); err != nil {
		t.Fatal(err)
	}
}

// Listing fingerprints every stored file of every type: handle to SHA-256.
func Listing(t testing.TB, be backend.Backend) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	for _, ft := range backend.AllTypes {
		err := be.List(ctx, ft, func(fi backend.FileInfo) error {
			h := backend.Handle{Type: ft, Name: fi.Name}
			data, err := backend.LoadAll(ctx, be, h)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			out[h.String()] = hex.EncodeToString(sum[:])
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// DiffListings fails the test for every entry that disappeared, changed or
// appeared between two listings (of Listing, or any name-to-fingerprint map).
func DiffListings(t testing.TB, what string, before, after map[string]string) {
	t.Helper()
	for k, b := range before {
		if a, ok := after[k]; !ok {
			t.Errorf("%s: %s disappeared", what, k)
		} else if a != b {
			t.Errorf("%s: %s changed: %s, was %s", what, k, a, b)
		}
	}
	for k, a := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("%s: %s appeared: %s", what, k, a)
		}
	}
}
