package main

// End-to-end tests: they build the real bunker binary once (TestMain) and run
// it as a user would, with a controlled environment, checking exit codes,
// standard output, standard error and the restored trees.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"bunker/internal/backend/local"
	"bunker/internal/fs/fstest"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/repository"
)

// onlyFuzzing reports whether this process runs fuzz targets and no test: a
// fuzz worker, or a fuzzing run with -run '^$' (make fuzz). The fuzz
// targets call functions, not the binary.
func onlyFuzzing() bool {
	value := func(name string) string {
		if f := flag.Lookup(name); f != nil {
			return f.Value.String()
		}
		return ""
	}
	return value("test.fuzzworker") == "true" || (value("test.fuzz") != "" && value("test.run") == "^$")
}

// bunkerBin is the binary built by TestMain.
var bunkerBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	flag.Parse()
	if onlyFuzzing() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "bunker-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Readable and executable by everyone: one test runs it as nobody.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bunkerBin = filepath.Join(dir, "bunker")
	build := exec.Command("go", "build", "-o", bunkerBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building bunker: %v\n", err)
		return 1
	}
	return m.Run()
}

// result is the outcome of one run of the binary.
type result struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("bunker %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// repoEnv is one repository and the environment to reach it.
type repoEnv struct {
	t      *testing.T
	dir    string // scratch directory holding the repository and the password
	repo   string
	pwFile string
	cred   *syscall.Credential // run as this user if set
	// extraEnv is added to every run (a remote repository's credentials).
	extraEnv map[string]string
}

// runOpts changes one run.
type runOpts struct {
	stdin io.Reader
	env   map[string]string // overrides; "" removes the variable
}

// newEnv returns an environment with a password file but no repository yet.
func newEnv(t *testing.T) *repoEnv {
	t.Helper()
	dir := t.TempDir()
	e := &repoEnv{t: t, dir: dir, repo: filepath.Join(dir, "repo"), pwFile: filepath.Join(dir, "password")}
	writeFile(t, e.pwFile, "correct horse battery staple\n")
	return e
}

// newRepo returns an environment with a repository made by `bunker init`.
func newRepo(t *testing.T) *repoEnv {
	t.Helper()
	e := newEnv(t)
	if out := e.ok("init"); !strings.HasPrefix(out, "created repository ") {
		t.Errorf("init: %q", out)
	}
	return e
}

// newFastRepo returns an environment with a repository whose key slot uses
// the cheap test KDF, so that each run of the binary does not spend a
// quarter of a second deriving the key. Tests about init, passwords and keys
// use newRepo; the others only need some repository.
func newFastRepo(t *testing.T) *repoEnv {
	t.Helper()
	e := newEnv(t)
	createFastRepo(t, e.repo, e.pwFile)
	return e
}

// newFastRepoWithSnapshot is newFastRepo after one backup of src, a new
// directory holding the file "f".
func newFastRepoWithSnapshot(t *testing.T) (*repoEnv, string) {
	t.Helper()
	e := newFastRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "f"), "f\n")
	e.ok("backup", src)
	return e, src
}

func createFastRepo(t *testing.T, dir, pwFile string) {
	t.Helper()
	ctx := context.Background()
	be, err := local.Create(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	pw, err := os.ReadFile(pwFile)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repository.Create(ctx, be, bytes.TrimSuffix(pw, []byte("\n")), repository.Options{KDF: crypto.TestKDF})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
}

// with returns a copy of e that reports to t (for subtests).
func (e *repoEnv) with(t *testing.T) *repoEnv {
	c := *e
	c.t = t
	return &c
}

func (e *repoEnv) runWith(o runOpts, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bunkerBin, args...)
	vars := map[string]string{"BUNKER_REPOSITORY": e.repo, "BUNKER_PASSWORD_FILE": e.pwFile}
	for k, v := range e.extraEnv {
		vars[k] = v
	}
	for k, v := range o.env {
		vars[k] = v
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BUNKER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for k, v := range vars {
		if v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	// A new session has no controlling terminal: a missing password can
	// never turn into a prompt that hangs the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: e.cred}
	cmd.Dir = e.dir
	cmd.Stdin = o.stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		e.t.Fatalf("bunker %s: %v (stderr: %s)", strings.Join(args, " "), err, stderr.String())
	}
	return r
}

func (e *repoEnv) run(args ...string) result {
	e.t.Helper()
	return e.runWith(runOpts{}, args...)
}

// ok runs bunker and fails the test unless it exits 0; it returns stdout.
func (e *repoEnv) ok(args ...string) string {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("want exit 0, got %v", r)
	}
	return r.stdout
}

// okJSON runs bunker, wants exit 0 and decodes stdout into v.
func (e *repoEnv) okJSON(v any, args ...string) {
	e.t.Helper()
	out := e.ok(args...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		e.t.Fatalf("bunker %s: output is not JSON: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// fails runs bunker and wants the given exit code and one clear error line.
func (e *repoEnv) fails(code int, args ...string) result {
	e.t.Helper()
	return e.failsWith(runOpts{}, code, args...)
}

func (e *repoEnv) failsWith(o runOpts, code int, args ...string) result {
	e.t.Helper()
	r := e.runWith(o, args...)
	if r.code != code {
		e.t.Fatalf("want exit %d, got %v", code, r)
	}
	checkOneLineError(e.t, r)
	return r
}

// checkOneLineError wants stderr to be exactly one line "bunker: ...",
// without a panic or a stack trace.
func checkOneLineError(t *testing.T, r result) {
	t.Helper()
	noGarbage(t, r)
	msg := strings.TrimSuffix(r.stderr, "\n")
	if msg == "" || strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "bunker: ") {
		t.Errorf("want one error line \"bunker: ...\" on stderr, got %q (%v)", r.stderr, r)
	}
}

func noGarbage(t *testing.T, r result) {
	t.Helper()
	for _, bad := range []string{"panic", "goroutine ", "runtime/", ".go:"} {
		if strings.Contains(r.stderr, bad) || strings.Contains(r.stdout, bad) {
			t.Errorf("output contains %q: %v", bad, r)
		}
	}
}

type backupSummary struct {
	MessageType string `json:"message_type"`
	SnapshotID  string `json:"snapshot_id"`
	Summary     struct {
		FilesNew       int `json:"files_new"`
		FilesChanged   int `json:"files_changed"`
		FilesUnchanged int `json:"files_unchanged"`
		FilesProcessed int `json:"files_processed"`
		Errors         int `json:"errors"`
	} `json:"summary"`
	Errors []string `json:"errors"`
}

func (e *repoEnv) backupJSON(args ...string) backupSummary {
	e.t.Helper()
	var s backupSummary
	e.okJSON(&s, append([]string{"backup", "--json"}, args...)...)
	if s.MessageType != "summary" || len(s.SnapshotID) != 64 {
		e.t.Fatalf("bad backup summary %+v", s)
	}
	return s
}

type snapshotInfo struct {
	ID       string   `json:"id"`
	ShortID  string   `json:"short_id"`
	Tree     string   `json:"tree"`
	Paths    []string `json:"paths"`
	Hostname string   `json:"hostname"`
	Tags     []string `json:"tags"`
	Parent   string   `json:"parent"`
}

func (e *repoEnv) snapshots(filters ...string) []snapshotInfo {
	e.t.Helper()
	var out []snapshotInfo
	e.okJSON(&out, append([]string{"snapshots", "--json"}, filters...)...)
	return out
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func randomData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b[:n:n]
}

// inTarget is where restore puts the backed-up directory src: snapshots
// record absolute paths, and restore recreates them below the target.
func inTarget(target, src string) string { return filepath.Join(target, src) }

// listRepo records every file of a repository: path, size, mode and mtime.
func listRepo(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, fmt.Sprintf("%s %d %v %d", p, fi.Size(), fi.Mode(), fi.ModTime().UnixNano()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func compareTrees(t *testing.T, what string, want map[string]fstest.Entry, got string, opts fstest.CompareOptions) {
	t.Helper()
	if diffs := fstest.Compare(want, fstest.Manifest(t, got), opts); len(diffs) > 0 {
		t.Errorf("%s: %d differences:\n%s", what, len(diffs), strings.Join(diffs, "\n"))
	}
}

// TestRoundTrip is the acceptance test: every kind of entry and metadata
// survives backup and restore, a second restore over the first gives the same
// tree (RELIABILITY F3), and restore --verify passes.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	e := newRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	tree := fstest.MakeTree(t, src)
	if !tree.Root {
		t.Log("not running as root: devices and foreign owners are not covered")
	}
	if !tree.Xattrs {
		t.Log("no user xattrs on this file system: xattrs are not covered")
	}
	if !tree.Sparse {
		t.Log("this file system does not keep files sparse: sparseness is not covered")
	}
	want := fstest.Manifest(t, src)

	// Nothing is relaxed as root: restore sets atime and mtime from the
	// snapshot, and Manifest reads with O_NOATIME, so even access times must
	// match. Without root, O_NOATIME is refused on files we do not own and
	// chown is impossible, so atimes and owners are not comparable then.
	var opts fstest.CompareOptions
	if os.Geteuid() != 0 {
		opts = fstest.CompareOptions{IgnoreAtime: true, IgnoreOwner: true}
	}

	sum := e.backupJSON(src)
	if sum.Summary.Errors != 0 || len(sum.Errors) != 0 || sum.Summary.FilesNew == 0 {
		t.Fatalf("backup reported errors: %+v", sum)
	}
	t.Run("backup leaves the source unchanged", func(t *testing.T) {
		// Files are read with O_NOATIME; directories must be too.
		compareTrees(t, "source after backup", want, src, opts)
	})

	target := filepath.Join(t.TempDir(), "target")
	t.Run("restore", func(t *testing.T) {
		e := e.with(t)
		e.ok("restore", "latest", "--target", target)
		compareTrees(t, "restore", want, inTarget(target, src), opts)
	})

	t.Run("restore again into the same target", func(t *testing.T) {
		// RELIABILITY F3, and A5 (a restore interrupted part way leaves
		// short files and missing entries): damage the first restore, then
		// restore again over it.
		e := e.with(t)
		dst := inTarget(target, src)
		if err := os.Truncate(filepath.Join(dst, "dir1", "random3m"), 1000); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dst, "one")); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Join(dst, "dir1", "sub")); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dst, "modes", "0640"), 0o666); err != nil {
			t.Fatal(err)
		}
		r := e.run("restore", "latest", "--target", target)
		if r.code != 0 {
			t.Fatalf("second restore into the same target: %v", r)
		}
		noGarbage(t, r)
		compareTrees(t, "second restore into the same target", want, dst, opts)
	})

	t.Run("restore --verify", func(t *testing.T) {
		e := e.with(t)
		target := filepath.Join(t.TempDir(), "target")
		var rs struct {
			MessageType string   `json:"message_type"`
			Files       int      `json:"files"`
			Verified    bool     `json:"verified"`
			Errors      []string `json:"errors"`
		}
		e.okJSON(&rs, "restore", "latest", "--target", target, "--verify", "--json")
		if rs.MessageType != "summary" || !rs.Verified || len(rs.Errors) != 0 || rs.Files == 0 {
			t.Errorf("restore --verify summary: %+v", rs)
		}
		compareTrees(t, "restore --verify", want, inTarget(target, src), opts)
	})

	// Spot checks that the manifest really holds what the test claims to cover.
	for _, p := range []string{tree.Fifo, tree.BadUTF8, tree.Newline, tree.SparseFile, tree.HardLinks[0], tree.XattrFile,
		"links/dangling", "links/absolute", tree.Setuid, tree.StickyDir, tree.EmptyDir} {
		if _, ok := want[p]; !ok {
			t.Errorf("manifest lacks %q", p)
		}
	}
	if tree.Root {
		if w := want[tree.Owned]; w.UID != 1234 || w.GID != 5678 {
			t.Errorf("manifest of %s: owner %d:%d", tree.Owned, w.UID, w.GID)
		}
		for _, p := range []string{tree.CharDev, tree.BlockDev} {
			if _, ok := want[p]; !ok {
				t.Errorf("manifest lacks %q", p)
			}
		}
	}
}

// TestIncremental: an unchanged tree is not read again, one changed file is
// counted as changed, and each snapshot names its parent.
func TestIncremental(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	files := map[string]string{"a.txt": "alpha\n", "b.txt": "bravo\n", "sub/c.txt": "charlie\n", "sub/deep/d.bin": string(randomData(1, 300<<10))}
	// Written an hour ago: a file written within a second of a backup's
	// start is read again by the next one (its times may hide a write made
	// in the same tick after the backup read it).
	hourAgo := time.Now().Add(-time.Hour)
	for name, data := range files {
		writeFile(t, filepath.Join(src, name), data)
		if err := os.Chtimes(filepath.Join(src, name), hourAgo, hourAgo); err != nil {
			t.Fatal(err)
		}
	}
	n := len(files)

	first := e.backupJSON(src)
	if s := first.Summary; s.FilesNew != n || s.FilesChanged != 0 || s.FilesUnchanged != 0 {
		t.Errorf("first backup: %+v, want %d new", s, n)
	}
	second := e.backupJSON(src)
	if s := second.Summary; s.FilesNew != 0 || s.FilesChanged != 0 || s.FilesUnchanged != n {
		t.Errorf("second backup of an unchanged tree: %+v, want files_unchanged %d and nothing new or changed", s, n)
	}

	// Change one file: other size, other mtime.
	p := filepath.Join(src, "sub", "c.txt")
	writeFile(t, p, "charlie, changed\n")
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(p, later, later); err != nil {
		t.Fatal(err)
	}
	third := e.backupJSON(src)
	if s := third.Summary; s.FilesNew != 0 || s.FilesChanged != 1 || s.FilesUnchanged != n-1 {
		t.Errorf("backup after changing one file: %+v, want 1 changed, %d unchanged", s, n-1)
	}

	snaps := e.snapshots()
	if len(snaps) != 3 {
		t.Fatalf("want 3 snapshots, got %d", len(snaps))
	}
	ids := []string{first.SnapshotID, second.SnapshotID, third.SnapshotID}
	for i, sn := range snaps {
		if sn.ID != ids[i] {
			t.Errorf("snapshot %d is %s, want %s", i, sn.ID, ids[i])
		}
		wantParent := ""
		if i > 0 {
			wantParent = ids[i-1]
		}
		if sn.Parent != wantParent {
			t.Errorf("snapshot %d: parent %q, want %q", i, sn.Parent, wantParent)
		}
	}
	if got := e.ok("dump", "latest", p); got != "charlie, changed\n" {
		t.Errorf("dump of the changed file: %q", got)
	}
	if got := e.ok("dump", first.SnapshotID[:8], p); got != "charlie\n" {
		t.Errorf("dump of the file in the first snapshot: %q", got)
	}

	// --force reads everything again.
	forced := e.backupJSON("--force", src)
	if s := forced.Summary; s.FilesUnchanged != 0 || s.FilesProcessed != n {
		t.Errorf("backup --force: %+v, want nothing unchanged", s)
	}
}

// TestCommands covers the options of backup, snapshots, ls, diff, stats, dump
// and restore on a small tree.
func TestCommands(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	big := randomData(2, 3<<20) // several chunks
	writeFile(t, filepath.Join(src, "keep.txt"), "keep\n")
	writeFile(t, filepath.Join(src, "old.txt"), "to be removed\n")
	writeFile(t, filepath.Join(src, "mod.txt"), "version 1\n")
	writeFile(t, filepath.Join(src, "skip.log"), "excluded by --exclude\n")
	writeFile(t, filepath.Join(src, "cache", "x"), "excluded by an absolute pattern\n")
	writeFile(t, filepath.Join(src, "sub", "a.txt"), "a\n")
	writeFile(t, filepath.Join(src, "sub", "b.tmp"), "excluded by --exclude-file\n")
	writeFile(t, filepath.Join(src, "sub", "big.bin"), string(big))
	writeFile(t, filepath.Join(src, "with\nnewline"), "odd name\n")
	if err := os.Symlink("keep.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	exFile := filepath.Join(e.dir, "excludes")
	writeFile(t, exFile, "# comment\n\n*.tmp\n")

	s1 := e.backupJSON("--exclude", "*.log", "--exclude", filepath.Join(src, "cache"), "--exclude-file", exFile,
		"--tag", "daily", "--tag", "db", "--host", "h1", src)

	// ls, plain: one absolute path per line, excluded entries absent.
	lines := strings.Split(strings.TrimSuffix(e.ok("ls", "latest"), "\n"), "\n")
	for _, want := range []string{src, src + "/keep.txt", src + "/sub/a.txt", src + "/sub/big.bin", src + "/link", src + `/with\nnewline`} {
		if !slices.Contains(lines, want) {
			t.Errorf("ls: %q missing from\n%s", want, strings.Join(lines, "\n"))
		}
	}
	for _, l := range lines {
		for _, bad := range []string{"skip.log", "b.tmp", "/cache"} {
			if strings.Contains(l, bad) {
				t.Errorf("ls: excluded %q listed: %q", bad, l)
			}
		}
	}
	// ls PATH lists what is below that directory.
	if got := e.ok("ls", "latest", src+"/sub"); got != src+"/sub/a.txt\n"+src+"/sub/big.bin\n" {
		t.Errorf("ls latest %s/sub:\n%s", src, got)
	}
	// ls -l: mode, owner, size, name, link target.
	long := e.ok("ls", "-l", "latest", src)
	var bigLine, linkLine string
	for _, l := range strings.Split(long, "\n") {
		if strings.HasSuffix(l, "/sub/big.bin") {
			bigLine = l
		}
		if strings.Contains(l, "/link -> ") {
			linkLine = l
		}
	}
	if f := strings.Fields(bigLine); len(f) < 4 || f[0] != "-rw-r--r--" || f[3] != fmt.Sprint(len(big)) {
		t.Errorf("ls -l: big.bin line %q in\n%s", bigLine, long)
	}
	if !strings.HasPrefix(linkLine, "Lrwxrwxrwx") || !strings.HasSuffix(linkLine, "/link -> keep.txt") {
		t.Errorf("ls -l: link line %q in\n%s", linkLine, long)
	}
	// ls --json: one object per line.
	var nodes []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(e.ok("ls", "--json", "latest", src)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("ls --json line %q: %v", l, err)
		}
		nodes = append(nodes, m)
	}
	found := map[string]map[string]any{}
	for _, m := range nodes {
		found[fmt.Sprint(m["path"])] = m
	}
	if m := found[src+"/sub/big.bin"]; m == nil || m["type"] != "file" || m["size"] != float64(len(big)) {
		t.Errorf("ls --json: big.bin: %v", m)
	}
	if m := found[src+"/link"]; m == nil || m["type"] != "symlink" || m["link_target"] != "keep.txt" {
		t.Errorf("ls --json: link: %v", m)
	}
	if m := found[src+"/with\nnewline"]; m == nil {
		t.Errorf("ls --json: the name with a newline is missing")
	}

	// dump equals the file content.
	if got := e.ok("dump", "latest", src+"/sub/big.bin"); got != string(big) {
		t.Errorf("dump of big.bin: %d bytes, want %d equal bytes", len(got), len(big))
	}
	e.fails(1, "dump", "latest", src+"/sub")
	e.fails(1, "dump", "latest", src+"/no-such-file")

	// A second snapshot with changes, another host and tag.
	if err := os.Remove(filepath.Join(src, "old.txt")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(src, "mod.txt"), "version 2, longer\n")
	writeFile(t, filepath.Join(src, "new.txt"), "new\n")
	s2 := e.backupJSON("--exclude", "*.log", "--exclude", filepath.Join(src, "cache"), "--exclude-file", exFile,
		"--tag", "weekly", "--host", "h2", src)

	// snapshots with filters.
	all := e.snapshots()
	if len(all) != 2 || all[0].ID != s1.SnapshotID || all[1].ID != s2.SnapshotID {
		t.Fatalf("snapshots: %+v", all)
	}
	if sn := all[0]; sn.Hostname != "h1" || !slices.Equal(sn.Tags, []string{"daily", "db"}) || !slices.Equal(sn.Paths, []string{src}) ||
		sn.ShortID != sn.ID[:8] {
		t.Errorf("first snapshot: %+v", sn)
	}
	for _, tc := range []struct {
		filters []string
		want    []string
	}{
		{[]string{"--host", "h1"}, []string{s1.SnapshotID}},
		{[]string{"--host", "h2"}, []string{s2.SnapshotID}},
		{[]string{"--host", "h1", "--host", "h2"}, []string{s1.SnapshotID, s2.SnapshotID}},
		{[]string{"--tag", "daily"}, []string{s1.SnapshotID}},
		{[]string{"--tag", "daily", "--tag", "db"}, []string{s1.SnapshotID}},
		{[]string{"--tag", "weekly", "--host", "h1"}, nil},
		{[]string{"--tag", "nope"}, nil},
		{[]string{"--path", src}, []string{s1.SnapshotID, s2.SnapshotID}},
		{[]string{"--path", "/elsewhere"}, nil},
	} {
		var got []string
		for _, sn := range e.snapshots(tc.filters...) {
			got = append(got, sn.ID)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("snapshots %v: got %v, want %v", tc.filters, got, tc.want)
		}
	}
	if out := e.ok("snapshots", "--json", "--tag", "nope"); strings.TrimSpace(out) != "[]" {
		t.Errorf("snapshots --json with no match: %q, want []", out)
	}
	if out := e.ok("snapshots"); !strings.Contains(out, s1.SnapshotID[:8]) || !strings.Contains(out, "2 snapshots") {
		t.Errorf("snapshots:\n%s", out)
	}
	// latest honours the filters.
	if got := e.ok("dump", "--host", "h1", "latest", src+"/mod.txt"); got != "version 1\n" {
		t.Errorf("dump --host h1 latest: %q", got)
	}

	// diff: + added, - removed, M modified.
	diff := e.ok("diff", s1.SnapshotID[:8], s2.SnapshotID[:8])
	for _, want := range []string{"+  " + src + "/new.txt", "-  " + src + "/old.txt", "M  " + src + "/mod.txt"} {
		if !slices.Contains(strings.Split(diff, "\n"), want) {
			t.Errorf("diff: line %q missing from\n%s", want, diff)
		}
	}
	for _, l := range strings.Split(diff, "\n") {
		if strings.Contains(l, "keep.txt") || strings.Contains(l, "big.bin") {
			t.Errorf("diff lists an unchanged file: %q", l)
		}
	}
	var dj struct {
		Changes []struct {
			Path   string `json:"path"`
			Change string `json:"change"`
		} `json:"changes"`
		Added    int `json:"added"`
		Removed  int `json:"removed"`
		Modified int `json:"modified"`
	}
	e.okJSON(&dj, "diff", "--json", s1.SnapshotID, s2.SnapshotID)
	if dj.Added != 1 || dj.Removed != 1 || dj.Modified != 1 {
		t.Errorf("diff --json: %+v", dj)
	}
	var same struct {
		Changes []any `json:"changes"`
	}
	e.okJSON(&same, "diff", "--json", s2.SnapshotID, s2.SnapshotID)
	if same.Changes == nil || len(same.Changes) != 0 {
		t.Errorf("diff of a snapshot with itself: %+v, want an empty list", same)
	}

	// stats --json.
	var st struct {
		Snapshots   int     `json:"snapshots"`
		Files       int     `json:"files_in_snapshots"`
		RestoreSize int64   `json:"restore_size"`
		Blobs       int     `json:"blobs"`
		Packs       int     `json:"packs"`
		RepoSize    int64   `json:"repository_size"`
		Dedup       float64 `json:"deduplication_ratio"`
	}
	e.okJSON(&st, "stats", "--json")
	// Snapshot 1: keep, old, mod, a.txt, big.bin, with\nnewline = 6 files;
	// snapshot 2: keep, mod, new, a.txt, big.bin, with\nnewline = 6 files.
	if st.Snapshots != 2 || st.Files != 12 || st.Blobs == 0 || st.Packs == 0 || st.RepoSize < int64(len(big)) ||
		st.RestoreSize < 2*int64(len(big)) || st.Dedup < 1.5 {
		t.Errorf("stats --json: %+v", st)
	}
	e.okJSON(&st, "stats", "--json", "--host", "h1")
	if st.Snapshots != 1 || st.Files != 6 {
		t.Errorf("stats --json --host h1: %+v", st)
	}

	// restore --include restores only that subtree.
	target := filepath.Join(t.TempDir(), "inc")
	e.ok("restore", "latest", "--target", target, "--include", src+"/sub")
	var restored []string
	err := filepath.WalkDir(inTarget(target, src), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(inTarget(target, src), p)
		restored = append(restored, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{".", "sub", "sub/a.txt", "sub/big.bin"}; !slices.Equal(restored, want) {
		t.Errorf("restore --include sub: got %v, want %v", restored, want)
	}
	if b, err := os.ReadFile(filepath.Join(inTarget(target, src), "sub", "big.bin")); err != nil || !bytes.Equal(b, big) {
		t.Errorf("restore --include: big.bin differs (%v)", err)
	}

	// restore --exclude leaves matching entries out.
	target = filepath.Join(t.TempDir(), "exc")
	e.ok("restore", "latest", "--target", target, "--exclude", "*.txt", "--exclude", "big.bin")
	restored = nil
	err = filepath.WalkDir(inTarget(target, src), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(inTarget(target, src), p)
		restored = append(restored, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(restored)
	if want := []string{".", "link", "sub", "with\nnewline"}; !slices.Equal(restored, want) {
		t.Errorf("restore --exclude: got %q, want %q", restored, want)
	}
}

// TestStreams covers --stdin and --stdin-from-command.
func TestStreams(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	data := "CREATE TABLE t (x int);\n" + string(randomData(3, 200<<10))
	var s backupSummary
	out := e.runWith(runOpts{stdin: strings.NewReader(data)}, "backup", "--json", "--stdin", "--stdin-filename", "db.sql")
	if out.code != 0 {
		t.Fatalf("backup --stdin: %v", out)
	}
	if err := json.Unmarshal([]byte(out.stdout), &s); err != nil || s.SnapshotID == "" {
		t.Fatalf("backup --stdin --json: %v: %q", err, out.stdout)
	}
	if got := e.ok("dump", "latest", "/db.sql"); got != data {
		t.Errorf("dump /db.sql: %d bytes, want the %d bytes given", len(got), len(data))
	}
	if sn := e.snapshots(); len(sn) != 1 || !slices.Equal(sn[0].Paths, []string{"/db.sql"}) {
		t.Errorf("snapshots after --stdin: %+v", sn)
	}

	e.ok("backup", "--stdin-from-command", "--stdin-filename", "cmd.out", "--", "sh", "-c", "printf data; exit 0")
	if got := e.ok("dump", "latest", "/cmd.out"); got != "data" {
		t.Errorf("dump /cmd.out: %q, want %q", got, "data")
	}
	before := e.snapshots()
	if len(before) != 2 {
		t.Fatalf("want 2 snapshots, got %d", len(before))
	}

	// A failing command fails the backup and saves no snapshot.
	r := e.run("backup", "--stdin-from-command", "--stdin-filename", "fail.out", "--", "sh", "-c", "printf partial; exit 3")
	if r.code == 0 {
		t.Fatalf("backup of a command that exits 3 succeeded: %v", r)
	}
	checkOneLineError(t, r)
	if after := e.snapshots(); len(after) != len(before) {
		t.Errorf("a failed --stdin-from-command saved a snapshot: %d snapshots, want %d", len(after), len(before))
	}
	e.fails(1, "backup", "--stdin-from-command", "--", "/nonexistent/command")

	// Usage errors.
	e.fails(2, "backup", "--stdin-from-command")
	e.fails(2, "backup", "--stdin", "--stdin-from-command", "--", "true")
	e.fails(2, "backup", "--stdin", "/etc")
	e.fails(2, "backup")
}

// TestBadInput: every mistake gives one clear line and the documented code.
func TestBadInput(t *testing.T) {
	t.Parallel()
	e, src := newFastRepoWithSnapshot(t)
	wrongPw := filepath.Join(e.dir, "wrong")
	writeFile(t, wrongPw, "not the password\n")
	emptyPw := filepath.Join(e.dir, "empty")
	writeFile(t, emptyPw, "\n")

	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		code int
	}{
		{"wrong password snapshots", map[string]string{"BUNKER_PASSWORD_FILE": wrongPw}, []string{"snapshots"}, 12},
		{"wrong password backup", map[string]string{"BUNKER_PASSWORD_FILE": wrongPw}, []string{"backup", src}, 12},
		{"wrong password key add", map[string]string{"BUNKER_PASSWORD_FILE": wrongPw}, []string{"key", "add", "--new-password-file", wrongPw}, 12},
		{"wrong password check", map[string]string{"BUNKER_PASSWORD_FILE": wrongPw}, []string{"check", "--read-data"}, 12},
		{"wrong password flag", nil, []string{"snapshots", "--password-file", wrongPw}, 12},
		{"wrong password command", map[string]string{"BUNKER_PASSWORD_FILE": "", "BUNKER_PASSWORD_COMMAND": "echo nope"}, []string{"snapshots"}, 12},
		{"password command fails", map[string]string{"BUNKER_PASSWORD_FILE": "", "BUNKER_PASSWORD_COMMAND": "exit 1"}, []string{"snapshots"}, 1},
		{"no password", map[string]string{"BUNKER_PASSWORD_FILE": ""}, []string{"snapshots"}, 2},
		{"empty password", map[string]string{"BUNKER_PASSWORD_FILE": emptyPw}, []string{"snapshots"}, 1},
		{"missing password file", map[string]string{"BUNKER_PASSWORD_FILE": filepath.Join(e.dir, "nope")}, []string{"snapshots"}, 1},
		{"missing repository", map[string]string{"BUNKER_REPOSITORY": filepath.Join(e.dir, "nope")}, []string{"snapshots"}, 10},
		{"missing repository flag", nil, []string{"snapshots", "--repo", filepath.Join(e.dir, "nope")}, 10},
		{"no repository", map[string]string{"BUNKER_REPOSITORY": ""}, []string{"snapshots"}, 2},
		{"init existing", nil, []string{"init"}, 1},
		{"unknown flag", nil, []string{"snapshots", "--no-such-flag"}, 2},
		{"unknown global flag", nil, []string{"--no-such-flag", "snapshots"}, 2},
		{"unknown command", nil, []string{"frobnicate"}, 2},
		{"extra argument", nil, []string{"snapshots", "extra"}, 2},
		{"restore without target", nil, []string{"restore", "latest"}, 2},
		{"bad compression", nil, []string{"snapshots", "--compression", "bogus"}, 2},
		{"short snapshot id", nil, []string{"ls", "abc"}, 2},
		{"unknown snapshot", nil, []string{"ls", "deadbeef"}, 1},
		{"bad exclude pattern", nil, []string{"backup", "--exclude", "[", src}, 2},
		{"path does not exist", nil, []string{"backup", filepath.Join(e.dir, "no-such-path")}, 1},
		{"read-data-subset 0/3", nil, []string{"check", "--read-data-subset", "0/3"}, 2},
		{"read-data-subset 4/3", nil, []string{"check", "--read-data-subset", "4/3"}, 2},
		{"read-data-subset 0%", nil, []string{"check", "--read-data-subset", "0%"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.with(t).failsWith(runOpts{env: tc.env}, tc.code, tc.args...)
		})
	}
}

// TestWrongPasswordWritesNothing (RELIABILITY G7): a wrong password is a
// clear error, and nothing in the repository changes.
func TestWrongPasswordWritesNothing(t *testing.T) {
	t.Parallel()
	e, src := newFastRepoWithSnapshot(t)
	wrongPw := filepath.Join(e.dir, "wrong")
	writeFile(t, wrongPw, "not the password\n")
	writeFile(t, filepath.Join(src, "g"), "new data that a backup would store\n")

	before := listRepo(t, e.repo)
	wrong := runOpts{env: map[string]string{"BUNKER_PASSWORD_FILE": wrongPw}}
	for _, args := range [][]string{
		{"backup", src},
		{"key", "add", "--new-password-file", wrongPw},
		{"key", "passwd", "--new-password-file", wrongPw},
		{"check"},
		{"restore", "latest", "--target", filepath.Join(e.dir, "t")},
	} {
		r := e.failsWith(wrong, 12, args...)
		if !strings.Contains(r.stderr, "password") {
			t.Errorf("%v: error does not mention the password: %q", args, r.stderr)
		}
	}
	if after := listRepo(t, e.repo); !slices.Equal(before, after) {
		t.Errorf("the repository changed after runs with a wrong password:\nbefore %v\nafter  %v", before, after)
	}
	if _, err := os.Lstat(filepath.Join(e.dir, "t")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("restore with a wrong password created its target (%v)", err)
	}
}

// corruptSnapshotFile flips a byte in the middle of a snapshot's file.
func corruptSnapshotFile(t *testing.T, repoDir, id string) {
	t.Helper()
	flipMiddleByte(t, filepath.Join(repoDir, "snapshots", id))
}

// flipMiddleByte flips a bit of the byte in the middle of a stored file
// (stored files are read-only).
func flipMiddleByte(t *testing.T, file string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	if err := os.Chmod(file, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptSnapshot: a flipped byte in one snapshot's file is damage that
// check reports (exit 4), but it does not take the other snapshots with it
// (RELIABILITY B1/B2): they list, restore and serve as a backup's parent,
// with a warning; the commands that decide from all snapshots what to keep
// or delete refuse; `repair snapshots --forget` removes the damaged file.
func TestCorruptSnapshot(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "f"), "first\n")
	e.ok("backup", src)
	writeFile(t, filepath.Join(src, "g"), "second\n")
	e.ok("backup", src)
	snaps := e.snapshots()
	if len(snaps) != 2 {
		t.Fatalf("want 2 snapshots, got %d", len(snaps))
	}
	good, bad := snaps[0], snaps[1]
	corruptSnapshotFile(t, e.repo, bad.ID)

	r := e.fails(4, "snapshots")
	if !strings.Contains(r.stdout, good.ShortID) || strings.Contains(r.stdout, bad.ShortID) || !strings.Contains(r.stderr, bad.ShortID) {
		t.Errorf("snapshots with one damaged: want the good one listed and the damaged one named on stderr, got %v", r)
	}
	r = e.fails(4, "snapshots", "--json")
	var listed []snapshotInfo
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil || len(listed) != 1 || listed[0].ID != good.ID {
		t.Errorf("snapshots --json with one damaged: want the good one, got %v (%v)", r, err)
	}
	e.fails(4, "stats")
	e.fails(4, "ls", bad.ShortID)
	e.fails(4, "restore", bad.ID, "--target", filepath.Join(t.TempDir(), "t"))

	// "latest" is the newest readable snapshot; the damage is a warning.
	r = e.run("ls", "latest")
	if r.code != 0 || !strings.Contains(r.stdout, "/f") || strings.Contains(r.stdout, "/g") ||
		!strings.Contains(r.stderr, "warning") || !strings.Contains(r.stderr, bad.ShortID) {
		t.Errorf("ls latest with the newest snapshot damaged: %v", r)
	}
	target := filepath.Join(t.TempDir(), "restored")
	r = e.run("restore", good.ShortID, "--target", target)
	if r.code != 0 || !strings.Contains(r.stderr, bad.ShortID) {
		t.Errorf("restore of the good snapshot: %v", r)
	}
	if b, err := os.ReadFile(filepath.Join(target, src, "f")); err != nil || string(b) != "first\n" {
		t.Errorf("restored f: %q, %v", b, err)
	}
	if r := e.run("diff", good.ShortID, "latest"); r.code != 0 {
		t.Errorf("diff between readable snapshots: %v", r)
	}
	r = e.run("backup", src)
	if r.code != 0 || !strings.Contains(r.stderr, bad.ShortID) {
		t.Errorf("backup with a damaged snapshot in the repository: %v", r)
	}

	// Deciding what to delete needs every snapshot.
	e.fails(4, "forget", "--keep-last", "1")
	e.fails(4, "prune")
	r = e.run("check")
	if r.code != 4 || !strings.Contains(r.stdout+r.stderr, bad.ShortID) {
		t.Errorf("check of a repository with a damaged snapshot: want exit 4 naming it, got %v", r)
	}
	noGarbage(t, r)

	out := e.ok("repair", "snapshots", "--dry-run")
	if !strings.Contains(out, bad.ShortID) || !strings.Contains(out, "damaged") {
		t.Errorf("repair snapshots --dry-run does not name the damaged snapshot: %q", out)
	}
	e.fails(4, "snapshots")
	out = e.ok("repair", "snapshots", "--forget")
	if !strings.Contains(out, "removed the original snapshot "+bad.ShortID) {
		t.Errorf("repair snapshots --forget: %q", out)
	}
	if got := e.snapshots(); len(got) != 2 {
		t.Errorf("after repair: want the 2 readable snapshots, got %d", len(got))
	}
	e.ok("check", "--read-data")
	e.ok("forget", "--keep-last", "1")
}

// TestDamagedIndexFile: a flipped byte in an index file is damage (exit 4,
// one line pointing to repair index) for the commands that need the index;
// repair index rebuilds it from the packs, after which check --read-data
// passes and every snapshot restores.
func TestDamagedIndexFile(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "f"), "first\n")
	e.ok("backup", src)
	writeFile(t, filepath.Join(src, "g"), string(randomData(3, 200<<10)))
	e.ok("backup", src)
	idx, _ := filepath.Glob(filepath.Join(e.repo, "index", "*"))
	if len(idx) != 2 {
		t.Fatalf("want 2 index files, got %v", idx)
	}
	flipMiddleByte(t, idx[0])
	if r := e.fails(4, "ls", "latest"); !strings.Contains(r.stderr, "repair index") {
		t.Errorf("ls with a damaged index file does not point to repair index: %q", r.stderr)
	}
	e.fails(4, "backup", src)
	if r := e.run("check"); r.code != 4 {
		t.Errorf("check with a damaged index file: %v", r)
	}
	e.ok("repair", "index")
	e.ok("check", "--read-data")
	target := filepath.Join(t.TempDir(), "t")
	e.ok("restore", "latest", "--target", target)
	if got, err := os.ReadFile(filepath.Join(target, src, "f")); err != nil || string(got) != "first\n" {
		t.Errorf("restored f: %q, %v", got, err)
	}
}

// TestOnlySnapshotDamaged: with its only snapshot damaged, "latest" names
// the damage in one line (exit 4), not "no snapshot found".
func TestOnlySnapshotDamaged(t *testing.T) {
	t.Parallel()
	e, _ := newFastRepoWithSnapshot(t)
	corruptSnapshotFile(t, e.repo, e.snapshots()[0].ID)
	r := e.fails(4, "ls", "latest")
	if !strings.Contains(r.stderr, "no readable snapshot") {
		t.Errorf("ls latest: %v", r)
	}
	e.fails(4, "snapshots")
}

// nobodyUID and nobodyGID run bunker as nobody: root can read everything.
const nobodyUID, nobodyGID = 65534, 65534

// newNobodyEnv returns a repository in a directory of its own that bunker
// runs in as nobody, everything below it nobody's; it skips the test unless
// it runs as root and bunker can run as nobody. Files made later for nobody
// go through chownNobody.
func newNobodyEnv(t *testing.T) *repoEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run bunker as another user")
	}
	base, err := os.MkdirTemp("", "bunker-e2e-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	e := &repoEnv{t: t, dir: base, repo: filepath.Join(base, "repo"), pwFile: filepath.Join(base, "password"),
		cred: &syscall.Credential{Uid: nobodyUID, Gid: nobodyGID, NoSetGroups: true}}
	writeFile(t, e.pwFile, "nobody's password\n")
	createFastRepo(t, e.repo, e.pwFile)
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	chownNobody(t, base)
	if r := e.run("exit-codes"); r.code != 0 {
		t.Skipf("cannot run bunker as uid %d: %v", nobodyUID, r)
	}
	return e
}

// chownNobody gives dir and everything below it to nobody.
func chownNobody(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, nobodyUID, nobodyGID)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestUnreadableRepository: a repository this user may not read is one
// line and exit 13 (the storage refused), for reading and writing commands
// alike, and nothing in it changes.
func TestUnreadableRepository(t *testing.T) {
	t.Parallel()
	e := newNobodyEnv(t)
	src := filepath.Join(e.dir, "src")
	writeFile(t, filepath.Join(src, "f"), "f\n")
	chownNobody(t, src)
	// The repository directory is root's and closed to others.
	if err := os.Lchown(e.repo, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.repo, 0o700); err != nil {
		t.Fatal(err)
	}
	before := listRepo(t, e.repo)
	for _, args := range [][]string{{"snapshots"}, {"backup", src}, {"check"}} {
		r := e.fails(13, args...)
		if !strings.Contains(r.stderr, "permission denied") {
			t.Errorf("bunker %v: %q does not say why", args, r.stderr)
		}
	}
	if after := listRepo(t, e.repo); !slices.Equal(before, after) {
		t.Error("the repository changed")
	}
}

// TestUnreadableFile: a file that cannot be read is reported, the backup
// goes on, exits 3 and saves a snapshot of everything else. Root can read
// everything, so bunker runs as nobody here.
func TestUnreadableFile(t *testing.T) {
	t.Parallel()
	e := newNobodyEnv(t)
	src := filepath.Join(e.dir, "src")
	writeFile(t, filepath.Join(src, "ok.txt"), "readable\n")
	writeFile(t, filepath.Join(src, "secret"), "unreadable\n")
	writeFile(t, filepath.Join(src, "sub", "b.txt"), "also readable\n")
	chownNobody(t, src)
	if err := os.Chmod(filepath.Join(src, "secret"), 0); err != nil {
		t.Fatal(err)
	}

	r := e.run("backup", "--json", src)
	if r.code != 3 {
		t.Fatalf("backup with an unreadable file: want exit 3, got %v", r)
	}
	noGarbage(t, r)
	if !strings.Contains(r.stderr, filepath.Join(src, "secret")) || !strings.Contains(r.stderr, "incomplete") {
		t.Errorf("stderr does not name the unreadable file and the incomplete snapshot: %q", r.stderr)
	}
	var s backupSummary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("backup --json: %v: %q", err, r.stdout)
	}
	if !slices.Equal(s.Errors, []string{filepath.Join(src, "secret")}) {
		t.Errorf("backup --json errors: %q", s.Errors)
	}
	sn := e.snapshots()
	if len(sn) != 1 || sn[0].ID != s.SnapshotID {
		t.Fatalf("the incomplete snapshot was not saved: %+v", sn)
	}
	ls := e.ok("ls", "latest", src)
	if want := src + "/ok.txt\n" + src + "/sub\n" + src + "/sub/b.txt\n"; ls != want {
		t.Errorf("ls of the incomplete snapshot:\n%s\nwant\n%s", ls, want)
	}

	// Human output: one error line naming the file, then the summary line.
	r = e.run("backup", "--quiet", src)
	if r.code != 3 {
		t.Fatalf("second backup: want exit 3, got %v", r)
	}
	noGarbage(t, r)
	if lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n"); len(lines) != 2 ||
		!strings.HasPrefix(lines[0], "error: ") || !strings.Contains(lines[0], "secret") || !strings.HasPrefix(lines[1], "bunker: ") {
		t.Errorf("stderr: want an error line and a summary line, got %q", r.stderr)
	}
}

// TestNobodyRestoresReadOnlyEntries: a restore not run as root brings back
// the user.* attributes of read-only files and directories (set before
// their modes, which take away the write permission they need), verifies a
// file its mode does not let its owner read, and restores again into the
// same target, whose directories the first restore left read-only.
func TestNobodyRestoresReadOnlyEntries(t *testing.T) {
	t.Parallel()
	e := newNobodyEnv(t)
	src := filepath.Join(e.dir, "src")
	writeFile(t, filepath.Join(src, "ro"), "read only\n")
	writeFile(t, filepath.Join(src, "wo"), "write only\n")
	writeFile(t, filepath.Join(src, "dir", "inner"), "inner\n")
	chownNobody(t, src)
	for name, attr := range map[string]string{"ro": "user.origin", "dir": "user.tag"} {
		if err := unix.Setxattr(filepath.Join(src, name), attr, []byte(name), 0); err != nil {
			if errors.Is(err, unix.ENOTSUP) {
				t.Skipf("no user.* attributes here: %v", err)
			}
			t.Fatal(err)
		}
	}
	modes := map[string]os.FileMode{"ro": 0o444, "wo": 0o200, "dir": 0o555 | os.ModeDir}
	for name, mode := range modes {
		if err := os.Chmod(filepath.Join(src, name), mode.Perm()); err != nil {
			t.Fatal(err)
		}
	}
	// Root backs up (nobody cannot read wo), then the repository is nobody's again.
	asRoot := *e
	asRoot.cred = nil
	asRoot.ok("backup", src)
	chownNobody(t, e.dir)
	target := filepath.Join(e.dir, "target")
	for round := range 2 {
		e.ok("restore", "latest", "--target", target, "--verify")
		dst := inTarget(target, src)
		for name, mode := range modes {
			st, err := os.Lstat(filepath.Join(dst, name))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode() != mode {
				t.Errorf("round %d: %s has mode %v, want %v", round, name, st.Mode(), mode)
			}
		}
		for name, attr := range map[string]string{"ro": "user.origin", "dir": "user.tag"} {
			buf := make([]byte, 64)
			n, err := unix.Getxattr(filepath.Join(dst, name), attr, buf)
			if err != nil || string(buf[:n]) != name {
				t.Errorf("round %d: %s of %s: %q, %v", round, attr, name, buf[:max(n, 0)], err)
			}
		}
	}
}

// TestDamagedKeySlot: a key slot that does not decode neither locks out the
// holder of another slot nor stops `key list` (it is marked damaged), and
// `key remove` removes it (format §4).
func TestDamagedKeySlot(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	pw2 := filepath.Join(e.dir, "pw2")
	writeFile(t, pw2, "second password\n")
	var added struct {
		ID string `json:"id"`
	}
	e.okJSON(&added, "key", "add", "--new-password-file", pw2, "--json")
	slot := filepath.Join(e.repo, "keys", added.ID)
	if err := os.Chmod(slot, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(slot, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	var keys []struct {
		ID      string `json:"id"`
		Current bool   `json:"current"`
		Damaged bool   `json:"damaged"`
	}
	e.okJSON(&keys, "key", "list", "--json")
	if len(keys) != 2 {
		t.Fatalf("key list with a damaged slot: %+v", keys)
	}
	for _, k := range keys {
		if k.Damaged != (k.ID == added.ID) || k.Current == k.Damaged {
			t.Errorf("key list with a damaged slot: %+v", keys)
		}
	}
	if out := e.ok("key", "list"); !strings.Contains(out, "damaged") {
		t.Errorf("key list does not mark the damaged slot:\n%s", out)
	}
	// A stray file in keys/ is listed as damaged too, and removable.
	writeFile(t, filepath.Join(e.repo, "keys", "notes"), "not a key slot\n")
	if out := e.ok("key", "list"); !strings.Contains(out, "notes") {
		t.Errorf("key list with a stray file:\n%s", out)
	}
	e.ok("key", "remove", "notes")
	e.ok("key", "remove", added.ID[:8])
	keys = nil
	e.okJSON(&keys, "key", "list", "--json")
	if len(keys) != 1 || keys[0].Damaged {
		t.Errorf("after removing the damaged slot: %+v", keys)
	}
}

// TestKeys (RELIABILITY G7): key add, list, remove, passwd.
func TestKeys(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	pw2 := filepath.Join(e.dir, "pw2")
	writeFile(t, pw2, "second password\n")
	pw3 := filepath.Join(e.dir, "pw3")
	writeFile(t, pw3, "third password\n")
	as := func(pw string) runOpts { return runOpts{env: map[string]string{"BUNKER_PASSWORD_FILE": pw}} }
	type key struct {
		ID      string `json:"id"`
		Current bool   `json:"current"`
	}
	listKeys := func(pw string) []key {
		t.Helper()
		r := e.runWith(as(pw), "key", "list", "--json")
		if r.code != 0 {
			t.Fatalf("key list: %v", r)
		}
		var keys []key
		if err := json.Unmarshal([]byte(r.stdout), &keys); err != nil {
			t.Fatalf("key list --json: %v: %q", err, r.stdout)
		}
		return keys
	}

	keys := listKeys(e.pwFile)
	if len(keys) != 1 || !keys[0].Current {
		t.Fatalf("keys after init: %+v", keys)
	}
	first := keys[0].ID

	var added struct {
		ID string `json:"id"`
	}
	e.okJSON(&added, "key", "add", "--new-password-file", pw2, "--json")
	if len(added.ID) != 64 {
		t.Fatalf("key add --json: %+v", added)
	}
	keys = listKeys(e.pwFile)
	if len(keys) != 2 {
		t.Fatalf("want 2 keys after key add, got %+v", keys)
	}
	for _, k := range keys {
		if k.Current != (k.ID == first) {
			t.Errorf("key list opened with the first password: %+v", keys)
		}
	}
	if out := e.ok("key", "list"); !strings.Contains(out, "*"+first[:8]) || !strings.Contains(out, added.ID[:8]) {
		t.Errorf("key list:\n%s", out)
	}
	// The new password opens the repository.
	keys = listKeys(pw2)
	for _, k := range keys {
		if k.Current != (k.ID == added.ID) {
			t.Errorf("key list opened with the second password: %+v", keys)
		}
	}

	// The key in use cannot be removed.
	r := e.runWith(as(pw2), "key", "remove", added.ID[:8])
	if r.code == 0 {
		t.Fatalf("removing the key in use succeeded: %v", r)
	}
	checkOneLineError(t, r)
	if len(listKeys(pw2)) != 2 {
		t.Fatal("a refused key remove removed a key")
	}

	// Remove the new key while opened with the old password.
	e.ok("key", "remove", added.ID[:8])
	e.failsWith(as(pw2), 12, "snapshots")
	if keys := listKeys(e.pwFile); len(keys) != 1 || keys[0].ID != first {
		t.Errorf("keys after remove: %+v", keys)
	}
	e.fails(1, "key", "remove", "ffffffffff")

	// key passwd: the old password stops working, the new one works.
	e.ok("key", "passwd", "--new-password-file", pw3)
	e.fails(12, "snapshots")
	keys = listKeys(pw3)
	if len(keys) != 1 || keys[0].ID == first || !keys[0].Current {
		t.Errorf("keys after passwd: %+v", keys)
	}
}

// TestCheck: a healthy repository passes check and check --read-data.
func TestCheck(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "a"), string(randomData(4, 1<<20)))
	writeFile(t, filepath.Join(src, "sub", "b"), "b\n")
	e.ok("backup", src)
	writeFile(t, filepath.Join(src, "c"), "c\n")
	e.ok("backup", src)

	if out := e.ok("check"); !strings.Contains(out, "no problems found") {
		t.Errorf("check:\n%s", out)
	}
	if out := e.ok("check", "--read-data"); !strings.Contains(out, "no problems found") {
		t.Errorf("check --read-data:\n%s", out)
	}
	var res struct {
		Problems  []any `json:"problems"`
		Snapshots int   `json:"snapshots"`
		Trees     int   `json:"trees"`
		Packs     int   `json:"packs"`
		PacksRead int   `json:"packs_read"`
	}
	e.okJSON(&res, "check", "--read-data", "--json")
	if res.Problems == nil || len(res.Problems) != 0 || res.Snapshots != 2 || res.Trees == 0 || res.Packs == 0 || res.PacksRead != res.Packs {
		t.Errorf("check --read-data --json: %+v", res)
	}
	e.okJSON(&res, "check", "--json")
	if len(res.Problems) != 0 || res.Snapshots != 2 || res.PacksRead != 0 {
		t.Errorf("check --json: %+v", res)
	}
	for _, subset := range []string{"1/3", "2/3", "3/3", "50%"} {
		e.ok("check", "--read-data-subset", subset)
	}
}

// TestExitCodes: the table of exit codes is printed and complete.
func TestExitCodes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	out := e.ok("exit-codes")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 || lines[0] != "Exit codes:" {
		t.Fatalf("exit-codes:\n%s", out)
	}
	codes := map[string]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 2 {
			t.Errorf("exit-codes: bad line %q", l)
			continue
		}
		codes[f[0]] = strings.Join(f[1:], " ")
	}
	for code, word := range map[string]string{"0": "success", "1": "failure", "2": "usage", "3": "incomplete", "4": "damaged",
		"10": "does not exist", "11": "locked", "12": "wrong password", "13": "refused", "130": "interrupted"} {
		if !strings.Contains(codes[code], word) {
			t.Errorf("exit-codes: code %s is %q, want it to mention %q", code, codes[code], word)
		}
	}
	if len(codes) != 10 {
		t.Errorf("exit-codes: %d codes, want 10:\n%s", len(codes), out)
	}
	if help := e.ok("--help"); !strings.Contains(help, out) {
		t.Errorf("--help does not include the exit codes:\n%s", help)
	}
}

// mountTmpfs mounts a tmpfs of the given size at dir (made if missing) until
// the test ends; the test is skipped where mounting is not allowed (not
// root).
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): needs root and mount rights", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, 0) })
}

// TestFullDisk backs up into a repository on a file system that fills up:
// the backup fails with exit 1 and one line naming the cause, nothing stored
// before is changed, no temporary file is left, check finds no problem, and
// once there is room again the same backup succeeds and restores.
func TestFullDisk(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	mountTmpfs(t, mnt, "6m")
	e.repo = filepath.Join(mnt, "repo")
	createFastRepo(t, e.repo, e.pwFile)

	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "small"), "fits\n")
	e.ok("backup", src)
	before := listRepo(t, e.repo)

	big := randomData(7, 16<<20)
	writeFile(t, filepath.Join(src, "big"), string(big))
	r := e.fails(exitFailure, "backup", src)
	if !strings.Contains(r.stderr, "no space left") {
		t.Errorf("full disk: the error does not say so: %q", r.stderr)
	}
	after := listRepo(t, e.repo)
	for _, f := range before {
		if strings.Fields(f)[2][0] == 'd' {
			continue // directories' times change with the lock files
		}
		if !slices.Contains(after, f) {
			t.Errorf("full disk: %s was changed or removed", f)
		}
	}
	for _, f := range after {
		if strings.Contains(filepath.Base(strings.Fields(f)[0]), ".tmp") {
			t.Errorf("full disk: temporary file left: %s", f)
		}
	}
	if out := e.ok("check"); !strings.Contains(out, "no problems found") {
		t.Errorf("check after a full disk:\n%s", out)
	}
	if n := len(e.snapshots()); n != 1 {
		t.Errorf("full disk: %d snapshots, want the one from before", n)
	}

	if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_REMOUNT, "size=64m"); err != nil {
		t.Fatal(err)
	}
	e.ok("backup", src)
	e.ok("check", "--read-data")
	target := t.TempDir()
	e.ok("restore", "latest", "--target", target)
	if got, err := os.ReadFile(inTarget(target, filepath.Join(src, "big"))); err != nil || !bytes.Equal(got, big) {
		t.Errorf("restore after the disk had room again: big file differs (%v)", err)
	}
}

// TestOneFileSystem: with --one-file-system the mount point itself is kept (an
// empty directory), what is mounted on it is not; without it, both are.
func TestOneFileSystem(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "top.txt"), "on the root file system\n")
	mnt := filepath.Join(src, "mnt")
	mountTmpfs(t, mnt, "1m")
	writeFile(t, filepath.Join(mnt, "inner.txt"), "on another file system\n")

	e.backupJSON("--one-file-system", src)
	lines := e.ok("ls", "latest", src)
	if !strings.Contains(lines, src+"/mnt\n") || !strings.Contains(lines, src+"/top.txt\n") {
		t.Errorf("--one-file-system: mount point or file missing:\n%s", lines)
	}
	if strings.Contains(lines, "inner.txt") {
		t.Errorf("--one-file-system crossed into the mounted file system:\n%s", lines)
	}
	e.backupJSON("--force", src)
	if lines := e.ok("ls", "latest", src); !strings.Contains(lines, src+"/mnt/inner.txt\n") {
		t.Errorf("without --one-file-system the mounted files are missing:\n%s", lines)
	}
}

// TestShortStoredNames: stored objects with names shorter than an ID's
// short form (a stray or renamed file) are shown whole, not a crash: a key
// slot of another repository that opens with the same password, under a
// name sorting first, and the only key slot renamed, through key list and
// key passwd.
func TestShortStoredNames(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	other := filepath.Join(e.dir, "other")
	createFastRepo(t, other, e.pwFile)
	foreign, err := filepath.Glob(filepath.Join(other, "keys", "*"))
	if err != nil || len(foreign) != 1 {
		t.Fatalf("other repository's key slots: %v %v", foreign, err)
	}
	data, err := os.ReadFile(foreign[0])
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(e.repo, "keys", "0"), string(data))
	if r := e.run("snapshots"); r.code != 0 {
		t.Errorf("with another repository's key slot first: %v", r)
	} else {
		noGarbage(t, r)
	}
	if err := os.Remove(filepath.Join(e.repo, "keys", "0")); err != nil {
		t.Fatal(err)
	}

	own, err := filepath.Glob(filepath.Join(e.repo, "keys", "*"))
	if err != nil || len(own) != 1 {
		t.Fatalf("key slots: %v %v", own, err)
	}
	if err := os.Rename(own[0], filepath.Join(e.repo, "keys", "k1")); err != nil {
		t.Fatal(err)
	}
	if out := e.ok("key", "list"); !strings.Contains(out, "*k1 ") {
		t.Errorf("key list does not show the slot k1:\n%s", out)
	}
	newPW := filepath.Join(e.dir, "new-password")
	writeFile(t, newPW, "another password\n")
	r := e.run("key", "passwd", "--new-password-file", newPW)
	noGarbage(t, r)
	if r.code != 0 || !strings.Contains(r.stdout, "replaces k1") {
		t.Errorf("key passwd: %v", r)
	}
}

// TestUnknownSubcommand: a typo in a subcommand, or a command group run
// without one, is a usage error (exit 2), as a wrong argument count of a
// subcommand is; not the help and exit 0, which a cron line would take for
// success.
func TestUnknownSubcommand(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	for _, args := range [][]string{{"key", "remve", "abcd"}, {"repair"}, {"key"}, {"key", "remove"}, {"config"}, {"config", "validate"}, {"key", "list", "extra"}} {
		r := e.fails(2, args...)
		noGarbage(t, r)
	}
	if r := e.run("key", "--help"); r.code != 0 {
		t.Errorf("key --help: %v", r)
	}
}

// TestTargetBelowSymlinkedDirectory: a path given to back up that lies
// below a symbolic link to a directory (/home -> /data/home) is stored
// where its path says, with the link recorded as the directory it leads
// to, and restores there; before, the link was stored as a link and the
// target under it could never be listed or restored.
func TestTargetBelowSymlinkedDirectory(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	base := filepath.Join(e.dir, "sl")
	writeFile(t, filepath.Join(base, "real", "user", "f"), "data\n")
	if err := os.Symlink("real", filepath.Join(base, "link")); err != nil {
		t.Fatal(err)
	}
	e.ok("backup", filepath.Join(base, "link", "user"))
	if ls := e.ok("ls", "latest"); !strings.Contains(ls, filepath.Join(base, "link", "user", "f")+"\n") {
		t.Errorf("ls does not show the file:\n%s", ls)
	}
	target := filepath.Join(e.dir, "target")
	e.ok("restore", "latest", "--target", target)
	if got, err := os.ReadFile(filepath.Join(inTarget(target, base), "link", "user", "f")); err != nil || string(got) != "data\n" {
		t.Errorf("restored file: %q, %v", got, err)
	}
}

// TestBackupTagsAndStreamName: --tag takes tags as forget --tag reads them
// ("a,b" is two, none empty), and a stream name that cannot be a file name
// is refused before the command runs (it would run on with no reader).
func TestBackupTagsAndStreamName(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	src := filepath.Join(e.dir, "src")
	writeFile(t, filepath.Join(src, "f"), "f\n")
	e.ok("backup", "--tag", "a,b", "--tag", "c", "--tag", "a", src)
	if sn := e.snapshots(); len(sn) != 1 || !slices.Equal(sn[0].Tags, []string{"a", "b", "c"}) {
		t.Errorf("tags: %+v", sn)
	}
	for _, tag := range []string{"a,,b", "", ",a"} {
		noGarbage(t, e.fails(2, "backup", "--tag", tag, src))
	}
	marker := filepath.Join(e.dir, "ran")
	noGarbage(t, e.fails(2, "backup", "--stdin-from-command", "--stdin-filename", "a/b", "--", "touch", marker))
	if _, err := os.Stat(marker); err == nil {
		t.Error("the command ran although its stream name was refused")
	}
}

// TestMissingOrShortPack: a pack the index names that is gone, or shorter
// than its blobs, is damage (exit 4) for commands that read trees, not a
// general failure (exit 1).
func TestMissingOrShortPack(t *testing.T) {
	t.Parallel()
	for _, damage := range []string{"missing", "truncated"} {
		t.Run(damage, func(t *testing.T) {
			e, _ := newFastRepoWithSnapshot(t)
			packs, err := filepath.Glob(filepath.Join(e.repo, "data", "*", "*"))
			if err != nil || len(packs) == 0 {
				t.Fatalf("packs: %v %v", packs, err)
			}
			for _, p := range packs {
				if damage == "missing" {
					err = os.Remove(p)
				} else {
					err = os.Truncate(p, 10)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			for _, args := range [][]string{{"ls", "latest"}, {"stats"}} {
				noGarbage(t, e.fails(4, args...))
			}
		})
	}
}

// TestInterrupted: Ctrl-C (SIGINT) in the middle of a backup or a restore
// ends it with exit 130 and one line: not an "error:" line for every file
// that was being read, nor a summary that reads as done. The repository then
// checks clean and the next backup succeeds.
func TestInterrupted(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	for i := range 6 {
		writeFile(t, filepath.Join(src, fmt.Sprintf("big%d", i)), string(randomData(uint64(100+i), 24<<20)))
	}
	for i := range 300 {
		writeFile(t, filepath.Join(src, "small", fmt.Sprintf("f%03d", i)), string(randomData(uint64(1000+i), 3000)))
	}
	// The limits keep each run from ending before the signal (on local
	// storage too): 144 MiB at 8 MiB/s take 18 s.
	r := e.interrupt(filepath.Join(src, "big"), "--limit-upload", "8192", "backup", src)
	if r.stdout != "" {
		t.Errorf("interrupted backup printed %q", r.stdout)
	}
	e.ok("check")
	e.ok("backup", src)
	e.ok("check", "--read-data")

	target := filepath.Join(t.TempDir(), "target")
	r = e.interrupt(filepath.Join(target, src, "big"), "--limit-download", "8192", "restore", "latest", "--target", target)
	if r.stdout != "" {
		t.Errorf("interrupted restore printed %q", r.stdout)
	}
	e.ok("restore", "latest", "--target", filepath.Join(t.TempDir(), "again"))
}

// interrupt runs bunker with args, sends it SIGINT once it has a file whose
// path starts with open open, and wants exit 130 with one error line.
func (e *repoEnv) interrupt(open string, args ...string) result {
	t := e.t
	t.Helper()
	cmd := exec.Command(bunkerBin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BUNKER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "BUNKER_REPOSITORY="+e.repo, "BUNKER_PASSWORD_FILE="+e.pwFile)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for found := false; !found; {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("bunker %s never opened %s*", strings.Join(args, " "), open)
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid))
		for _, fd := range fds {
			if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", cmd.Process.Pid, fd.Name())); err == nil && strings.HasPrefix(l, open) {
				found = true
			}
		}
		time.Sleep(time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	}
	if r.code != 130 || !strings.Contains(r.stderr, "interrupted") {
		t.Fatalf("interrupted: %v, want exit 130 and \"interrupted\"", r)
	}
	checkOneLineError(t, r)
	return r
}
