package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"bunker/internal/backend/local"
	"bunker/internal/fs/fstest"
	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
)

// fastPrune shortens prune's wait between its new index and its deletions.
var fastPrune = runOpts{env: map[string]string{"BUNKER_TEST_PRUNE_WAIT": "50ms"}}

// dirSize sums the sizes of the files below dir.
func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type forgetJSON struct {
	MessageType string `json:"message_type"`
	DryRun      bool   `json:"dry_run"`
	Groups      []struct {
		Group     string `json:"group"`
		Snapshots []struct {
			ID      string   `json:"id"`
			Keep    bool     `json:"keep"`
			Reasons []string `json:"reasons"`
		} `json:"snapshots"`
	} `json:"groups"`
	Removed []string `json:"removed"`
}

type pruneJSON struct {
	MessageType string `json:"message_type"`
	DryRun      bool   `json:"dry_run"`
	Plan        struct {
		Delete    []struct{ ID string } `json:"delete"`
		Repack    []struct{ ID string } `json:"repack"`
		Unindexed []struct{ ID string } `json:"unindexed"`
	} `json:"plan"`
	Result *struct {
		DeletedPacks int `json:"deleted_packs"`
	} `json:"result"`
}

// forgetPrune runs `forget --json --prune ARGS` and decodes its two lines.
func (e *repoEnv) forgetPrune(o runOpts, args ...string) (forgetJSON, pruneJSON) {
	e.t.Helper()
	r := e.runWith(o, append([]string{"forget", "--json", "--prune"}, args...)...)
	if r.code != 0 {
		e.t.Fatalf("want exit 0, got %v", r)
	}
	var f forgetJSON
	var p pruneJSON
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var head struct {
			MessageType string `json:"message_type"`
		}
		if err := json.Unmarshal(sc.Bytes(), &head); err != nil {
			e.t.Fatalf("output line %q: %v", sc.Text(), err)
		}
		var err error
		switch head.MessageType {
		case "forget":
			err = json.Unmarshal(sc.Bytes(), &f)
		case "prune":
			err = json.Unmarshal(sc.Bytes(), &p)
		}
		if err != nil {
			e.t.Fatal(err)
		}
	}
	if f.MessageType != "forget" || p.MessageType != "prune" {
		e.t.Fatalf("missing forget or prune output: %s", r.stdout)
	}
	return f, p
}

func packIDs(l []struct{ ID string }) []string {
	var out []string
	for _, p := range l {
		out = append(out, p.ID)
	}
	sort.Strings(out)
	return out
}

// TestForgetPruneAcceptance is issue 3's acceptance test: after
// `forget --keep-last 2 --prune` on 10 snapshots of changing data the
// repository shrinks, check --read-data passes, both kept snapshots restore
// identical, and --dry-run printed exactly what was then removed.
func TestForgetPruneAcceptance(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "stable"), string(randomData(1, 1<<20)))
	manifests := map[string]map[string]fstest.Entry{}
	var ids []string
	for i := 0; i < 10; i++ {
		writeFile(t, filepath.Join(src, "changing"), string(randomData(uint64(100+i), 1<<20+i*4096)))
		writeFile(t, filepath.Join(src, "dir", "small"), strings.Repeat("v", i+1))
		s := e.backupJSON(src)
		ids = append(ids, s.SnapshotID)
		manifests[s.SnapshotID] = fstest.Manifest(t, src)
	}
	before := dirSize(t, e.repo)

	dryF, dryP := e.forgetPrune(fastPrune, "--keep-last", "2", "--dry-run")
	if !dryF.DryRun || !dryP.DryRun || dryP.Result != nil {
		t.Fatalf("dry run did something: %+v %+v", dryF, dryP)
	}
	if got := dirSize(t, e.repo); got != before {
		t.Fatalf("dry run changed the repository size: %d -> %d", before, got)
	}
	var wouldRemove []string
	for _, g := range dryF.Groups {
		for _, s := range g.Snapshots {
			if !s.Keep {
				wouldRemove = append(wouldRemove, s.ID)
			} else if !slices.Equal(s.Reasons, []string{"last"}) {
				t.Errorf("snapshot %.8s kept for %v, want [last]", s.ID, s.Reasons)
			}
		}
	}
	sort.Strings(wouldRemove)
	if want := slices.Sorted(slices.Values(ids[:8])); !slices.Equal(wouldRemove, want) {
		t.Fatalf("dry run would remove %v, want the 8 oldest %v", wouldRemove, want)
	}
	if len(dryP.Plan.Delete)+len(dryP.Plan.Repack) == 0 {
		t.Fatal("dry run plans to delete no pack")
	}

	realF, realP := e.forgetPrune(fastPrune, "--keep-last", "2")
	removed := slices.Sorted(slices.Values(realF.Removed))
	if !slices.Equal(removed, wouldRemove) {
		t.Errorf("removed %v, dry run said %v", removed, wouldRemove)
	}
	for _, l := range []struct {
		what      string
		dry, real []struct{ ID string }
	}{{"delete", dryP.Plan.Delete, realP.Plan.Delete}, {"repack", dryP.Plan.Repack, realP.Plan.Repack}, {"unindexed", dryP.Plan.Unindexed, realP.Plan.Unindexed}} {
		if !slices.Equal(packIDs(l.dry), packIDs(l.real)) {
			t.Errorf("%s: dry run listed %v, the real run %v", l.what, packIDs(l.dry), packIDs(l.real))
		}
	}
	if realP.Result == nil || realP.Result.DeletedPacks != len(realP.Plan.Delete)+len(realP.Plan.Repack)+len(realP.Plan.Unindexed) {
		t.Errorf("the real run deleted %+v packs, its plan named %d", realP.Result, len(realP.Plan.Delete)+len(realP.Plan.Repack)+len(realP.Plan.Unindexed))
	}
	for _, p := range append(packIDs(realP.Plan.Delete), packIDs(realP.Plan.Repack)...) {
		if _, err := os.Stat(filepath.Join(e.repo, "data", p[:2], p)); !os.IsNotExist(err) {
			t.Errorf("pack %.8s still stored (%v)", p, err)
		}
	}
	after := dirSize(t, e.repo)
	t.Logf("repository: %d bytes before, %d after forget --keep-last 2 --prune", before, after)
	if after >= before*4/10 {
		t.Errorf("repository did not shrink enough: %d -> %d bytes (8 of 10 versions of a 1 MiB file forgotten)", before, after)
	}
	e.ok("check", "--read-data")
	if got := e.snapshots(); len(got) != 2 {
		t.Fatalf("%d snapshots left, want 2", len(got))
	}
	for _, id := range ids[8:] {
		target := t.TempDir()
		e.ok("restore", id, "--target", target)
		compareTrees(t, "snapshot "+id[:8], manifests[id], inTarget(target, src), fstest.CompareOptions{})
	}
	// Nothing is left to do.
	if out := e.runWith(fastPrune, "prune").stdout; !strings.Contains(out, "nothing to prune") {
		t.Errorf("second prune: %s", out)
	}
}

// TestForgetPruneBadInput: every bad input is a clear error and changes
// nothing in the repository.
func TestForgetPruneBadInput(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	for i := 0; i < 3; i++ {
		writeFile(t, filepath.Join(src, "f"), strings.Repeat("x", i+1))
		e.ok("backup", "--tag", "daily", src)
	}
	first := e.snapshots()[0].ID
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"zero keep", []string{"forget", "--keep-daily", "0"}, 2},
		{"negative keep", []string{"forget", "--keep-last", "-1"}, 2},
		{"negative keep-weekly", []string{"forget", "--keep-weekly", "-3", "--keep-last", "1"}, 2},
		{"no rule", []string{"forget"}, 2},
		{"no rule prune", []string{"forget", "--prune"}, 2},
		{"unknown group-by", []string{"forget", "--keep-last", "1", "--group-by", "host,colour"}, 2},
		{"bad keep-within", []string{"forget", "--keep-within", "3 weeks"}, 2},
		{"empty keep-tag", []string{"forget", "--keep-tag", ""}, 2},
		{"keeps nothing", []string{"forget", "--keep-tag", "no-such-tag"}, 2},
		{"ids and rules", []string{"forget", "--keep-last", "1", first}, 2},
		{"unknown snapshot", []string{"forget", "deadbeef"}, 2},
		{"max-unused above 100", []string{"prune", "--max-unused", "101"}, 2},
		{"max-unused negative", []string{"prune", "--max-unused", "-1"}, 2},
		{"unknown setting", []string{"config", "set", "colour", "blue"}, 2},
		{"bad min-retention", []string{"config", "set", "min-retention", "forever"}, 2},
		{"negative upload limit", []string{"snapshots", "--limit-upload", "-1"}, 2},
		{"negative connections", []string{"prune", "--connections", "-2"}, 2},
		{"object lock on a local repository", []string{"init", "--object-lock", "compliance"}, 2},
		{"unknown bucket lookup", []string{"snapshots", "--s3-bucket-lookup", "sideways", "--repo", "s3:http://127.0.0.1:1/b/p"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.contents(t)
			e.with(t).fails(tc.code, tc.args...)
			if after := e.contents(t); !slices.Equal(before, after) {
				t.Errorf("the repository changed")
			}
		})
	}

	// A prune or forget while another process holds a lock: exit 11, the
	// holder named, nothing changed.
	ctx := context.Background()
	r := e.openInProcess(t)
	defer r.Close()
	lock, err := r.Lock(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Unlock(ctx) }()
	before := e.contents(t)
	for _, args := range [][]string{{"prune"}, {"forget", "--keep-last", "1", "--prune"}, {"repair", "index"}, {"config", "set", "min-retention", "1d"}} {
		res := e.fails(11, args...)
		if !strings.Contains(res.stderr, "shared lock is held by PID") {
			t.Errorf("%v: the error does not name the holder: %q", args, res.stderr)
		}
	}
	if after := e.contents(t); !slices.Equal(before, after) {
		t.Errorf("a refused command changed the repository")
	}
}

// TestMinRetention: under the repository's min-retention floor no snapshot
// is forgotten, whatever the flags, and the output says why.
func TestMinRetention(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	for i := 0; i < 3; i++ {
		writeFile(t, filepath.Join(src, "f"), strings.Repeat("y", i+1))
		e.ok("backup", src)
	}
	if out := e.ok("config", "get"); out != "min-retention off\n" {
		t.Errorf("config get: %q", out)
	}
	e.ok("config", "set", "min-retention", "14d")
	if out := e.ok("config", "get", "min-retention"); out != "min-retention 14d\n" {
		t.Errorf("config get: %q", out)
	}
	var f forgetJSON
	e.okJSON(&f, "forget", "--json", "--keep-last", "1")
	if len(f.Removed) != 0 {
		t.Fatalf("removed %v under a 14d floor", f.Removed)
	}
	for _, s := range f.Groups[0].Snapshots {
		if !s.Keep || !slices.Contains(s.Reasons, "min-retention 14d") {
			t.Errorf("snapshot %.8s: keep %v, reasons %v", s.ID, s.Keep, s.Reasons)
		}
	}
	// A snapshot dated a year ago (a host whose clock is wrong) but stored
	// just now is under the floor too.
	ctx := context.Background()
	r := e.openInProcess(t)
	latest := e.snapshots()[2]
	tree, _ := repo.ParseID(latest.Tree)
	backdated := &snapshot.Snapshot{Time: time.Now().AddDate(-1, 0, 0), Tree: tree, Paths: latest.Paths, Hostname: latest.Hostname}
	if _, err := r.SaveSnapshot(ctx, backdated); err != nil {
		t.Fatal(err)
	}
	r.Close()
	e.okJSON(&f, "forget", "--json", "--keep-last", "1")
	if len(f.Removed) != 0 {
		t.Fatalf("removed %v under a 14d floor (one dated a year ago, stored now)", f.Removed)
	}
	found := false
	for _, s := range f.Groups[0].Snapshots {
		if s.ID == backdated.ID.String() {
			found = s.Keep && slices.ContainsFunc(s.Reasons, func(r string) bool { return strings.Contains(r, "by the time it was stored") })
		}
	}
	if !found {
		t.Errorf("the backdated snapshot was not kept by the floor: %+v", f.Groups)
	}
	first := e.snapshots()[0].ID
	if res := e.fails(2, "forget", first); !strings.Contains(res.stderr, "min-retention") {
		t.Errorf("forget by ID under the floor: %q", res.stderr)
	}
	if n := len(e.snapshots()); n != 4 {
		t.Fatalf("%d snapshots, want 4", n)
	}
	e.ok("config", "set", "min-retention", "off")
	e.okJSON(&f, "forget", "--json", "--keep-last", "1")
	if len(f.Removed) != 3 {
		t.Fatalf("removed %v without the floor, want 3", f.Removed)
	}
}

// TestUnlock: unlock removes stale locks and keeps live ones unless told.
func TestUnlock(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	ctx := context.Background()
	r := e.openInProcess(t)
	defer r.Close()
	old := time.Now().Add(-2 * time.Hour).UTC()
	stale, _ := json.Marshal(repository.LockInfo{Time: old, Created: old, Exclusive: true, Hostname: "gone-host", PID: 4242})
	if _, err := r.SaveUnpacked(ctx, 5 /* backend.LockFile */, stale); err != nil {
		t.Fatal(err)
	}
	live, err := r.Lock(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	// The stale exclusive lock does not block a backup.
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "f"), "f")
	e.ok("backup", src)

	out := e.ok("unlock")
	if !strings.Contains(out, "removed stale lock") || !strings.Contains(out, "kept live lock") {
		t.Errorf("unlock: %q", out)
	}
	if n := len(e.files("locks")); n != 1 {
		t.Fatalf("%d lock files after unlock, want the live one", n)
	}
	out = e.ok("unlock", "--remove-all")
	if !strings.Contains(out, "removed live lock") || len(e.files("locks")) != 0 {
		t.Errorf("unlock --remove-all: %q, %d locks left", out, len(e.files("locks")))
	}
	if err := live.Check(ctx); err == nil {
		t.Error("the holder of a removed lock still trusts it")
	}
	_ = live.Unlock(ctx)
	if out := e.ok("unlock"); out != "no locks\n" {
		t.Errorf("unlock with no locks: %q", out)
	}

	// A damaged lock file keeps others out (exit 11, naming it); plain
	// unlock keeps it, --remove-all removes it.
	bad, err := r.SaveUnpacked(ctx, 5 /* backend.LockFile */, []byte("not json"))
	if err != nil {
		t.Fatal(err)
	}
	if res := e.fails(11, "backup", src); !strings.Contains(res.stderr, "damaged") || !strings.Contains(res.stderr, bad.Short()) {
		t.Errorf("backup with a damaged lock: %v", res)
	}
	if out := e.ok("unlock"); !strings.Contains(out, "kept unreadable lock "+bad.Short()) || len(e.files("locks")) != 1 {
		t.Errorf("unlock with a damaged lock: %q", out)
	}
	if out := e.ok("unlock", "--remove-all"); !strings.Contains(out, "removed unreadable lock "+bad.Short()) || len(e.files("locks")) != 0 {
		t.Errorf("unlock --remove-all with a damaged lock: %q", out)
	}
	e.ok("backup", src)
}

// TestRepair (RELIABILITY B2): a lost pack makes check fail and prune
// refuse without changing anything; repair index and repair snapshots name
// what was lost, and afterwards check passes and the rest restores.
func TestRepair(t *testing.T) {
	t.Parallel()
	e := newFastRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "a"), string(randomData(7, 256<<10)))
	e.ok("backup", src)
	packsBefore := e.files("data")
	writeFile(t, filepath.Join(src, "b"), string(randomData(8, 256<<10)))
	e.ok("backup", src)
	var biggest string
	var size int64
	for _, p := range e.files("data") {
		if slices.Contains(packsBefore, p) {
			continue
		}
		fi, err := os.Stat(filepath.Join(e.repo, "data", p[:2], p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > size {
			biggest, size = p, fi.Size()
		}
	}
	// The data pack of the second backup holds only b's content.
	if err := os.Remove(filepath.Join(e.repo, "data", biggest[:2], biggest)); err != nil {
		t.Fatal(err)
	}
	e.fails(4, "check")
	before := e.contents(t)
	if res := e.runWith(fastPrune, "prune"); res.code != 4 || !strings.Contains(res.stderr, "repair index") {
		t.Fatalf("prune on a damaged repository: %v", res)
	}
	if after := e.contents(t); !slices.Equal(before, after) {
		t.Fatal("the refused prune changed the repository")
	}
	if out := e.ok("repair", "index"); !strings.Contains(out, "blobs the old index named are in no readable pack") {
		t.Errorf("repair index: %q", out)
	}
	out := e.ok("repair", "snapshots", "--dry-run")
	lost := filepath.Join(src, "b")
	if !strings.Contains(out, "lost "+lost) || strings.Contains(out, "lost "+filepath.Join(src, "a")) {
		t.Errorf("repair snapshots --dry-run: %q", out)
	}
	if n := len(e.snapshots()); n != 2 {
		t.Fatalf("dry run changed the snapshots: %d", n)
	}
	out = e.ok("repair", "snapshots", "--forget")
	if !strings.Contains(out, "rewritten as") || !strings.Contains(out, "lost "+lost) {
		t.Errorf("repair snapshots: %q", out)
	}
	e.ok("check", "--read-data")
	snaps := e.snapshots()
	if len(snaps) != 2 {
		t.Fatalf("%d snapshots after repair, want 2", len(snaps))
	}
	repaired := 0
	for _, s := range snaps {
		if slices.Contains(s.Tags, "repaired") {
			repaired++
			target := t.TempDir()
			e.ok("restore", s.ID, "--target", target)
			if _, err := os.Stat(inTarget(target, lost)); !os.IsNotExist(err) {
				t.Errorf("the lost file came back: %v", err)
			}
			if _, err := os.Stat(inTarget(target, filepath.Join(src, "a"))); err != nil {
				t.Errorf("the kept file is missing: %v", err)
			}
		}
	}
	if repaired != 1 {
		t.Errorf("%d repaired snapshots, want 1", repaired)
	}
	e.runWith(fastPrune, "prune")
	e.ok("check", "--read-data")
}

// files lists the names of the repository's files below sub (temporary
// files left out).
func (e *repoEnv) files(sub string) []string {
	var out []string
	err := filepath.WalkDir(filepath.Join(e.repo, sub), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
			out = append(out, d.Name())
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// contents lists the repository's files, leaving out the locks directory:
// a refused command may take and drop a lock, and must change nothing else.
func (e *repoEnv) contents(t *testing.T) []string {
	t.Helper()
	locks := filepath.Join(e.repo, "locks")
	return slices.DeleteFunc(listRepo(t, e.repo), func(l string) bool { return strings.HasPrefix(l, locks+" ") || strings.HasPrefix(l, locks+"/") })
}

// openInProcess opens the repository in this process (to hold a lock, or
// write what the CLI cannot); the caller closes it.
func (e *repoEnv) openInProcess(t *testing.T) *repository.Repository {
	t.Helper()
	ctx := context.Background()
	be, err := local.Open(ctx, e.repo)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repository.Open(ctx, be, []byte("correct horse battery staple"), repository.Options{KDF: crypto.TestKDF})
	if err != nil {
		t.Fatal(err)
	}
	return r
}
