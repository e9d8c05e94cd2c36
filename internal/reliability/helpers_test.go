package reliability

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"bunker/internal/archiver"
	"bunker/internal/backend"
	"bunker/internal/backend/local"
	"bunker/internal/checker"
	"bunker/internal/fs/fstest"
	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/repository"
	"bunker/internal/repo/repotest"
	"bunker/internal/restorer"
	"bunker/internal/snapshot"
)

const testPassword = "reliability-test-password"

// testRepo is a local repository on disk that the tests reach both through
// the CLI and in process.
type testRepo struct {
	dir    string // repository directory
	pwFile string
}

// newTestRepo creates a local repository with a cheap KDF (the CLI opens it
// with the parameters stored in the key slot, so it is fast there too).
func newTestRepo(t testing.TB) *testRepo {
	t.Helper()
	base := t.TempDir()
	tr := &testRepo{dir: filepath.Join(base, "repo"), pwFile: filepath.Join(base, "password")}
	if err := os.WriteFile(tr.pwFile, []byte(testPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	be, err := local.Create(ctx, tr.dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repository.Create(ctx, be, []byte(testPassword), repository.Options{KDF: crypto.TestKDF})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	return tr
}

// open opens the repository in process with its index loaded; it is closed
// when the test ends.
func (tr *testRepo) open(t testing.TB, opts repository.Options) *repository.Repository {
	t.Helper()
	r, err := tr.openErr(opts, true)
	if err != nil {
		t.Fatalf("open repository: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// openNoIndex opens the repository without loading the index (for checker.Check).
func (tr *testRepo) openNoIndex(t testing.TB) *repository.Repository {
	t.Helper()
	r, err := tr.openErr(repository.Options{KDF: crypto.TestKDF}, false)
	if err != nil {
		t.Fatalf("open repository: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func (tr *testRepo) openErr(opts repository.Options, withIndex bool) (*repository.Repository, error) {
	ctx := context.Background()
	be, err := local.Open(ctx, tr.dir)
	if err != nil {
		return nil, err
	}
	if opts.KDF == (crypto.KDFParams{}) {
		opts.KDF = crypto.TestKDF
	}
	r, err := repository.Open(ctx, be, []byte(testPassword), opts)
	if err != nil {
		return nil, err
	}
	if withIndex {
		if err := r.LoadIndex(ctx); err != nil {
			r.Close()
			return nil, err
		}
	}
	return r, nil
}

// cliResult is the outcome of one CLI run.
type cliResult struct {
	stdout, stderr string
	code           int            // exit code; -1 if killed by a signal
	signal         syscall.Signal // the signal that ended it, or 0
}

func (c cliResult) String() string {
	return fmt.Sprintf("exit %d (signal %v)\nstdout:\n%s\nstderr:\n%s", c.code, c.signal, c.stdout, c.stderr)
}

// command returns an unstarted CLI command on the repository.
func (tr *testRepo) command(env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(bunkerBin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BUNKER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "BUNKER_REPOSITORY="+tr.dir, "BUNKER_PASSWORD_FILE="+tr.pwFile)
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// run runs the CLI to completion.
func (tr *testRepo) run(t testing.TB, env []string, args ...string) cliResult {
	t.Helper()
	cmd := tr.command(env, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	if testing.Verbose() {
		t.Logf("bunker %s: %v", args[0], time.Since(start).Round(time.Millisecond))
	}
	res := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	if err := waitResult(err, &res); err != nil {
		t.Fatalf("bunker %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// waitResult fills in the exit status of a finished command.
func waitResult(err error, res *cliResult) error {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.signal = ws.Signal()
		}
		return nil
	}
	return err
}

// backup runs `bunker backup --json` of src and returns the new snapshot's ID.
func (tr *testRepo) backup(t testing.TB, src string, extra ...string) string {
	t.Helper()
	args := append([]string{"backup", "--json", "--host", "reliability"}, append(extra, src)...)
	res := tr.run(t, nil, args...)
	if res.code == 130 && res.signal == 0 {
		// The failure TestC2PackUploadOutlivesArchiverRun guards against.
		t.Fatalf("bunker %s: failed as interrupted without any signal (a pack upload outlived archiver.Run): %v", strings.Join(args, " "), res)
	}
	if res.code != 0 {
		t.Fatalf("bunker %s: want exit 0, got %v", strings.Join(args, " "), res)
	}
	var sum struct {
		SnapshotID string `json:"snapshot_id"`
	}
	for _, line := range strings.Split(res.stdout, "\n") {
		if strings.Contains(line, `"summary"`) {
			if err := json.Unmarshal([]byte(line), &sum); err != nil {
				t.Fatalf("backup output %q: %v", line, err)
			}
		}
	}
	if sum.SnapshotID == "" {
		t.Fatalf("backup printed no snapshot ID: %v", res)
	}
	return sum.SnapshotID
}

// check runs `bunker check --json` and returns its exit code and result.
func (tr *testRepo) check(t testing.TB, readData bool) (int, checker.Result) {
	t.Helper()
	args := []string{"check", "--json"}
	if readData {
		args = append(args, "--read-data")
	}
	res := tr.run(t, nil, args...)
	var out checker.Result
	if res.code == 0 || res.code == 4 {
		if err := json.Unmarshal([]byte(strings.TrimSpace(res.stdout)), &out); err != nil {
			t.Fatalf("check output: %v\n%v", err, res)
		}
	}
	return res.code, out
}

// mustCheckClean fails the test unless check (with readData) finds no problem.
func (tr *testRepo) mustCheckClean(t testing.TB, readData bool) checker.Result {
	t.Helper()
	code, res := tr.check(t, readData)
	if code != 0 || len(res.Problems) > 0 {
		t.Fatalf("check (read data %v): exit %d, problems %v", readData, code, res.Problems)
	}
	return res
}

// restoreErrors runs `bunker restore --json` and returns the exit code and
// the paths reported as not restored.
func (tr *testRepo) restore(t testing.TB, id, target string) (int, []string) {
	t.Helper()
	res := tr.run(t, nil, "restore", "--json", id, "--target", target)
	var failed []string
	for _, line := range strings.Split(res.stderr, "\n") {
		var msg struct {
			Type string `json:"message_type"`
			Item string `json:"item"`
		}
		if json.Unmarshal([]byte(line), &msg) == nil && msg.Type == "error" {
			failed = append(failed, msg.Item)
		}
	}
	if res.code != 0 && res.code != 3 {
		t.Logf("restore %s: %v", id, res)
	}
	sort.Strings(failed)
	return res.code, failed
}

// snapshotIDs lists the snapshot files of a local repository.
func (tr *testRepo) snapshotIDs(t testing.TB) []string {
	return tr.listFiles(t, "snapshots")
}

func (tr *testRepo) listFiles(t testing.TB, sub string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(filepath.Join(tr.dir, sub), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
			out = append(out, d.Name())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// packPath is where the local backend stores a pack.
func (tr *testRepo) packPath(id string) string {
	return filepath.Join(tr.dir, "data", id[:2], id)
}

// --- Source trees -----------------------------------------------------------

// makeSource fills dir (created if needed) with a deterministic tree of about
// total bytes: random and text-like files of mixed sizes in a few
// directories, an empty file, a symlink and a hard link pair.
func makeSource(t testing.TB, dir string, seed uint64, total int64) {
	t.Helper()
	makeSourceEvery(t, dir, seed, total, 0, nil)
}

// seedRepo makes a source of total bytes in src and backs it up in steps of
// at most 12 MiB, a history of snapshots as a repository in use has. It
// returns the final snapshot and the source manifest it was taken from.
func seedRepo(t testing.TB, tr *testRepo, src string, seed uint64, total int64) (string, map[string]fstest.Entry) {
	t.Helper()
	makeSourceEvery(t, src, seed, total, 12<<20, func() { tr.backup(t, src) })
	m := manifest(t, src)
	return tr.backup(t, src), m
}

// makeSourceEvery is makeSource that calls fn whenever writing the next file
// would make more than every bytes written since the last call.
func makeSourceEvery(t testing.TB, dir string, seed uint64, total, every int64, fn func()) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0xb0b))
	for _, d := range []string{"", "a", "a/deep", "b", "c"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dirs := []string{"", "a", "a/deep", "b", "c"}
	var n, pending int64
	for i := 0; n < total; i++ {
		var size int
		switch i % 4 {
		case 0:
			size = 1 + rng.IntN(64<<10) // small, one chunk
		case 1:
			size = (1 << 20) + rng.IntN(3<<20)
		case 2:
			size = rng.IntN(400 << 10)
		default:
			size = (2 << 20) + rng.IntN(6<<20)
		}
		if int64(size) > total-n {
			size = int(total - n)
		}
		var data []byte
		if i%5 == 3 {
			data = textBytes(rng, size)
		} else {
			data = randomBytes(rng, size)
		}
		if fn != nil && pending+int64(size) > every {
			fn()
			pending = 0
		}
		name := filepath.Join(dir, dirs[i%len(dirs)], fmt.Sprintf("f%03d", i))
		writeFile(t, name, data)
		n += int64(size)
		pending += int64(size)
	}
	writeFile(t, filepath.Join(dir, "empty"), nil)
	if err := os.Symlink("a/deep", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "b", "hard1"), []byte("hard-linked content\n"))
	if err := os.Link(filepath.Join(dir, "b", "hard1"), filepath.Join(dir, "c", "hard2")); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b[:n:n]
}

func textBytes(rng *rand.Rand, n int) []byte {
	words := []string{"bunker", "backup", "restore", "pack", "index", "tree", "blob", "the", "of", "and"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[rng.IntN(len(words))])
		b.WriteByte(" \n"[rng.IntN(8)/7])
	}
	return b.Bytes()[:n]
}

// manifest records src (see fstest.Manifest).
func manifest(t testing.TB, dir string) map[string]fstest.Entry {
	t.Helper()
	return fstest.Manifest(t, dir)
}

// restoredAt is where a restore into target puts the snapshot path src.
func restoredAt(target, src string) string { return filepath.Join(target, src) }

// compareManifests fails the test with every difference between want and got.
func compareManifests(t testing.TB, what string, want, got map[string]fstest.Entry) {
	t.Helper()
	diffs := fstest.Compare(want, got, fstest.CompareOptions{})
	if len(diffs) > 20 {
		diffs = append(diffs[:20], fmt.Sprintf("... and %d more", len(diffs)-20))
	}
	for _, d := range diffs {
		t.Errorf("%s: %s", what, d)
	}
}

// without returns a copy of m without the given paths and what is below them.
func without(m map[string]fstest.Entry, paths ...string) map[string]fstest.Entry {
	out := make(map[string]fstest.Entry, len(m))
	for p, e := range m {
		drop := false
		for _, x := range paths {
			if p == x || strings.HasPrefix(p, x+"/") {
				drop = true
			}
		}
		if !drop {
			out[p] = e
		}
	}
	return out
}

// dirListing records every name below dir (recursively), with a hash of each
// regular file, its mode and mtime: a cheap fingerprint to prove that nothing
// below dir changed. skip leaves out one subdirectory (relative).
func dirListing(t testing.TB, dir string, skip string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if skip != "" && (rel == skip || strings.HasPrefix(rel, skip+"/")) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode=%o mtime=%d.%d size=%d", st.Mode, st.Mtim.Sec, st.Mtim.Nsec, st.Size)
		if d.Type().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" sha256=%x", sha256.Sum256(data))
		}
		if d.Type()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			desc += " -> " + target
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diffListings(t testing.TB, what string, before, after map[string]string) {
	t.Helper()
	repotest.DiffListings(t, what, before, after)
}

// --- In-process repository work --------------------------------------------

// backupInProcess backs up paths as the CLI does: archiver, Flush, snapshot.
func backupInProcess(ctx context.Context, t testing.TB, r *repository.Repository, paths ...string) (*snapshot.Snapshot, error) {
	t.Helper()
	arch := archiver.New(r, archiver.Options{Error: func(p string, err error) { t.Logf("backup: %s: %v", p, err) }})
	tree, targets, err := arch.Run(ctx, paths)
	if err != nil {
		r.Abort()
		return nil, err
	}
	if n := arch.Stats.Errors.Load(); n > 0 {
		r.Abort()
		return nil, fmt.Errorf("backup incomplete: %d entries not read", n)
	}
	if err := r.Flush(ctx); err != nil {
		return nil, err
	}
	sum := arch.Stats.Summary()
	sn := &snapshot.Snapshot{Time: time.Now(), Tree: tree, Paths: targets, Hostname: "reliability", Summary: &sum}
	if _, err := r.SaveSnapshot(ctx, sn); err != nil {
		return nil, err
	}
	return sn, nil
}

// report is one entry a restore reported as not restored.
type report struct {
	path string
	err  error
}

// restoreInProcess restores tree into target and returns what it reported.
func restoreInProcess(ctx context.Context, r *repository.Repository, tree repo.ID, target string) ([]report, error) {
	var mu sync.Mutex
	var reported []report
	res := restorer.New(r, restorer.Options{Owner: true, Error: func(p string, err error) {
		mu.Lock()
		defer mu.Unlock()
		reported = append(reported, report{p, err})
	}})
	err := res.Run(ctx, tree, target)
	sort.Slice(reported, func(i, j int) bool { return reported[i].path < reported[j].path })
	return reported, err
}

// loadTree loads and decodes a tree blob.
func loadTree(t testing.TB, r *repository.Repository, id repo.ID) *snapshot.Tree {
	t.Helper()
	return repotest.LoadTree(t, r, id)
}

// walkFiles calls fn for every node below the tree id, with its absolute
// snapshot path.
func walkFiles(t testing.TB, r *repository.Repository, id repo.ID, dir string, fn func(p string, n *snapshot.Node)) {
	t.Helper()
	for _, n := range loadTree(t, r, id).Nodes {
		p := path.Join(dir, n.Name)
		fn(p, n)
		if n.Type == snapshot.TypeDir {
			walkFiles(t, r, n.Subtree, p, fn)
		}
	}
}

// findNode returns the node at the absolute snapshot path p.
func findNode(t testing.TB, r *repository.Repository, root repo.ID, p string) *snapshot.Node {
	t.Helper()
	var found *snapshot.Node
	walkFiles(t, r, root, "/", func(q string, n *snapshot.Node) {
		if q == p {
			found = n
		}
	})
	if found == nil {
		t.Fatalf("no node %s in tree %s", p, root.Short())
	}
	return found
}

// saveTree encodes nodes (sorted by name here; names are not validated) and
// stores them as a tree blob.
func saveTree(t testing.TB, r *repository.Repository, nodes ...*snapshot.Node) repo.ID {
	t.Helper()
	return repotest.SaveTree(t, r, nodes...)
}

// saveData stores a data blob.
func saveData(t testing.TB, r *repository.Repository, data []byte) repo.ID {
	t.Helper()
	return repotest.SaveData(t, r, data)
}

// saveSnapshot flushes r and stores a snapshot of tree.
func saveSnapshot(t testing.TB, r *repository.Repository, tree repo.ID) repo.ID {
	t.Helper()
	ctx := context.Background()
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	id, err := r.SaveSnapshot(ctx, &snapshot.Snapshot{Time: time.Now(), Tree: tree, Paths: []string{"/hostile"}, Hostname: "reliability"})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

var fixedTime = time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC)

// fileNode returns a file node holding data (stored as one blob).
func fileNode(t testing.TB, r *repository.Repository, name string, data []byte) *snapshot.Node {
	t.Helper()
	n := &snapshot.Node{Name: name, Type: snapshot.TypeFile, Mode: 0o644, ModTime: fixedTime, AccessTime: fixedTime,
		UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Links: 1, Size: uint64(len(data))}
	if len(data) > 0 {
		n.Content = []repo.ID{saveData(t, r, data)}
	}
	return n
}

func dirNode(name string, subtree repo.ID) *snapshot.Node {
	return &snapshot.Node{Name: name, Type: snapshot.TypeDir, Mode: 0o755, ModTime: fixedTime, AccessTime: fixedTime,
		UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Subtree: subtree}
}

func symlinkNode(name, target string) *snapshot.Node {
	return &snapshot.Node{Name: name, Type: snapshot.TypeSymlink, Mode: 0o777, ModTime: fixedTime, AccessTime: fixedTime,
		UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), LinkTarget: target, Links: 1}
}

// rewriteTree returns a new root tree in which the tree at the absolute
// snapshot directory dir was changed by edit; every ancestor is re-saved.
func rewriteTree(t testing.TB, r *repository.Repository, root repo.ID, dir string, edit func(*snapshot.Tree)) repo.ID {
	t.Helper()
	var parts []string
	if dir = strings.Trim(dir, "/"); dir != "" {
		parts = strings.Split(dir, "/")
	}
	var rec func(id repo.ID, parts []string) repo.ID
	rec = func(id repo.ID, parts []string) repo.ID {
		tree := loadTree(t, r, id)
		if len(parts) == 0 {
			edit(tree)
		} else {
			n := tree.Find(parts[0])
			if n == nil || n.Type != snapshot.TypeDir {
				t.Fatalf("rewriteTree: no directory %q", parts[0])
			}
			n.Subtree = rec(n.Subtree, parts[1:])
		}
		return saveTree(t, r, tree.Nodes...)
	}
	return rec(root, parts)
}

// flipBit flips one bit of the file at off (byte) and bit.
func flipBit(t testing.TB, name string, off int64, bit uint) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 1 << (bit % 8)
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

// storedPacks lists the pack files of a backend.
func storedPacks(t testing.TB, be backend.Backend) map[repo.ID]int64 {
	t.Helper()
	out := map[repo.ID]int64{}
	err := be.List(context.Background(), backend.PackFile, func(fi backend.FileInfo) error {
		id, err := repo.ParseID(fi.Name)
		if err != nil {
			return err
		}
		out[id] = fi.Size
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// countFiles counts the stored files of one type.
func countFiles(t testing.TB, be backend.Backend, ft backend.FileType) int {
	t.Helper()
	n := 0
	if err := be.List(context.Background(), ft, func(backend.FileInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// verifyAllPacks decodes every blob of every stored pack (indexed or not) and
// fails the test for any that does not verify: proof that nothing corrupt
// was stored.
func verifyAllPacks(t testing.TB, r *repository.Repository) int {
	t.Helper()
	ctx := context.Background()
	blobs := 0
	for id, size := range storedPacks(t, r.Backend()) {
		hdr, err := r.ReadPackHeader(ctx, id, size)
		if err != nil {
			t.Errorf("pack %s: header: %v", id.Short(), err)
			continue
		}
		err = r.LoadPackRange(ctx, id, hdr, func(b repo.PackedBlob, plain []byte, err error) error {
			blobs++
			if err != nil {
				t.Errorf("pack %s: blob %s does not verify: %v", id.Short(), b.ID.Short(), err)
			}
			return nil
		})
		if err != nil {
			t.Errorf("pack %s: %v", id.Short(), err)
		}
	}
	return blobs
}

// checkInProcess runs the checker on a fresh handle of tr.
func checkInProcess(t testing.TB, r *repository.Repository, readData bool) *checker.Result {
	t.Helper()
	res, err := checker.Check(context.Background(), r, checker.Options{ReadData: readData})
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	return res
}
