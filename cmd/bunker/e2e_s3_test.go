package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"bunker/internal/backend/s3/s3test"
	"bunker/internal/fs/fstest"
)

// s3Env returns a repository environment on a new bucket of srv.
func s3Env(t *testing.T, srv *s3test.Server) *repoEnv {
	t.Helper()
	e := newEnv(t)
	cfg := srv.Config(t)
	e.repo = s3test.URL(cfg)
	e.extraEnv = map[string]string{"AWS_ACCESS_KEY_ID": srv.AccessKey, "AWS_SECRET_ACCESS_KEY": srv.SecretKey}
	return e
}

// TestS3RoundTrip: the whole cycle against a real S3 server.
func TestS3RoundTrip(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	e := s3Env(t, srv)
	e.ok("init")
	src := filepath.Join(t.TempDir(), "src")
	var ids []string
	for i := 0; i < 3; i++ {
		writeFile(t, filepath.Join(src, "changing"), string(randomData(uint64(i), 600<<10)))
		writeFile(t, filepath.Join(src, "stable"), "stable\n")
		ids = append(ids, e.backupJSON(src).SnapshotID)
	}
	want := fstest.Manifest(t, src)
	e.ok("check", "--read-data")
	e.runWith(fastPrune, "forget", "--keep-last", "1", "--prune")
	if n := len(e.snapshots()); n != 1 {
		t.Fatalf("%d snapshots after forget, want 1", n)
	}
	e.ok("check", "--read-data")
	target := t.TempDir()
	e.ok("restore", ids[2], "--target", target)
	compareTrees(t, "restore from S3", want, inTarget(target, src), fstest.CompareOptions{})

	// Bad input: wrong credentials, a wrong endpoint, a repository that exists.
	wrong := *e
	wrong.extraEnv = map[string]string{"AWS_ACCESS_KEY_ID": srv.AccessKey, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
	if r := wrong.with(t).fails(13, "snapshots"); !strings.Contains(r.stderr, "SignatureDoesNotMatch") {
		t.Errorf("wrong secret: %q", r.stderr)
	}
	e.fails(1, "init")
	elsewhere := *e
	elsewhere.repo = "s3:http://127.0.0.1:1/bucket/repo"
	if r := elsewhere.with(t).fails(1, "snapshots"); !strings.Contains(r.stderr, "connection refused") {
		t.Errorf("wrong endpoint: %q", r.stderr)
	}
}

// TestS3ObjectLock is RELIABILITY G3 on a real S3 server in compliance
// mode: deletes before retain-until fail even for the server's root user;
// prune deletes nothing that is still locked, extends the locks of what
// kept snapshots use, and deletes the rest once it has expired.
func TestS3ObjectLock(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	e := s3Env(t, srv)
	// One "day" of --lock-days lasts 12 seconds here: the checks between
	// an extension and its expiry have 0.6 day - 1 s of slack, which a
	// loaded CI machine (every package's tests at once) once used up at 6.
	lockDay := 12 * time.Second
	e.extraEnv["BUNKER_TEST_LOCK_DAY"] = lockDay.String()
	e.extraEnv["BUNKER_TEST_PRUNE_WAIT"] = "50ms"
	e.ok("init", "--object-lock", "compliance", "--lock-days", "1")
	src := filepath.Join(t.TempDir(), "src")
	writeFile(t, filepath.Join(src, "old"), string(randomData(1, 300<<10)))
	first := e.backupJSON(src).SnapshotID
	writeFile(t, filepath.Join(src, "old"), string(randomData(2, 300<<10)))
	kept := e.backupJSON(src).SnapshotID
	want := fstest.Manifest(t, src)

	// The root user cannot delete a locked object version.
	ctx := context.Background()
	client, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	bucket, prefix := bucketOf(e.repo)
	var victim minio.ObjectInfo
	for oi := range client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix + "/data/", Recursive: true, WithVersions: true}) {
		if oi.Err != nil {
			t.Fatal(oi.Err)
		}
		victim = oi
	}
	if victim.Key == "" {
		t.Fatal("no pack stored")
	}
	if err := client.RemoveObject(ctx, bucket, victim.Key, minio.RemoveObjectOptions{VersionID: victim.VersionID}); err == nil {
		t.Fatal("the root user deleted a locked object")
	}
	if err := client.RemoveObject(ctx, bucket, victim.Key, minio.RemoveObjectOptions{VersionID: victim.VersionID, GovernanceBypass: true}); err == nil {
		t.Fatal("a governance bypass deleted an object locked in compliance mode")
	}

	var res struct {
		Result struct {
			DeletedPacks  int      `json:"deleted_packs"`
			StillLocked   []string `json:"still_locked_packs"`
			LocksExtended int      `json:"locks_extended"`
		} `json:"result"`
	}
	prune := func(args ...string) {
		t.Helper()
		res.Result.DeletedPacks, res.Result.StillLocked, res.Result.LocksExtended = 0, nil, 0
		out := e.ok(append([]string{"prune", "--json"}, args...)...)
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("prune output %q: %v", out, err)
		}
	}
	start := time.Now()
	// A locked snapshot cannot be forgotten yet: it stays, and so does its data.
	if out := e.ok("forget", first); !strings.Contains(out, "is locked until") {
		t.Errorf("forget of a locked snapshot: %q", out)
	}
	if n := len(e.snapshots()); n != 2 {
		t.Fatalf("%d snapshots after forgetting a locked one, want 2", n)
	}
	prune("--max-unused", "0")
	if res.Result.DeletedPacks != 0 {
		t.Fatalf("prune deleted %d packs that snapshots use", res.Result.DeletedPacks)
	}

	// Past half the lock period prune extends the locks of what is used.
	time.Sleep(time.Until(start.Add(lockDay * 6 / 10)))
	prune()
	extended := time.Now() // the extended locks run out by extended+lockDay
	if res.Result.LocksExtended == 0 {
		t.Error("prune extended no lock past half the period")
	}
	// Once the first snapshot's own lock has expired, forget removes it;
	// its data was locked again by the extension, so prune deletes nothing.
	time.Sleep(time.Until(start.Add(lockDay + time.Second)))
	e.ok("forget", first)
	if n := len(e.snapshots()); n != 1 {
		t.Fatalf("%d snapshots after the lock expired, want 1", n)
	}
	prune("--max-unused", "0", "--unindexed-grace", "1s")
	if res.Result.DeletedPacks != 0 || len(res.Result.StillLocked) == 0 {
		t.Errorf("prune of locked data: deleted %d, still locked %v", res.Result.DeletedPacks, res.Result.StillLocked)
	}
	e.ok("check", "--read-data")
	// After that lock expires too, prune deletes the unused data. The wait
	// counts from the end of the prune that extended it, not from the time
	// that prune was due: on a loaded machine it took seconds, and the
	// extension then outlasted a wait counted from start.
	time.Sleep(time.Until(extended.Add(lockDay + 2*time.Second)))
	prune("--max-unused", "0", "--unindexed-grace", "1s")
	if res.Result.DeletedPacks == 0 {
		t.Errorf("expired, unused packs were not deleted")
	}
	// The retention run (forget, then prune) keeps the kept snapshot locked.
	e.ok("forget", "--keep-last", "1")
	prune()
	e.ok("check", "--read-data")
	target := t.TempDir()
	e.ok("restore", kept, "--target", target)
	compareTrees(t, "kept snapshot", want, inTarget(target, src), fstest.CompareOptions{})

	// --object-lock on a bucket without Object Lock is refused.
	plain := s3Env(t, srv)
	plain.ok("init")
	again := *plain
	again.repo = strings.Replace(plain.repo, "/repo", "/other", 1)
	if r := again.with(t).fails(1, "init", "--object-lock", "compliance", "--lock-days", "1"); !strings.Contains(r.stderr, "Object Lock") {
		t.Errorf("init --object-lock on a bucket without it: %q", r.stderr)
	}
}

// bucketOf splits an s3: URL into bucket and prefix.
func bucketOf(url string) (string, string) {
	path := url[strings.Index(url, "//")+2:]
	path = path[strings.Index(path, "/")+1:]
	bucket, prefix, _ := strings.Cut(path, "/")
	return bucket, prefix
}

// TestS3AppendOnly is RELIABILITY G1 against S3 with a restricted user (the
// bucket policy of s3test.AppendOnlyPolicy): backups and restores work;
// forget, prune, repair, config set and key changes are refused (exit 13)
// and the bucket is unchanged.
func TestS3AppendOnly(t *testing.T) {
	t.Parallel()
	srv := s3test.StartIAM(t)
	srv.CreateUser(t, "agentak", "agent-secret-0123456789")
	admin := s3Env(t, srv)
	admin.ok("init")
	bucket, prefix := bucketOf(admin.repo)
	ctx := context.Background()
	root, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	if err := root.SetBucketPolicy(ctx, bucket, s3test.AppendOnlyPolicy(bucket, prefix, "agentak")); err != nil {
		t.Fatal(err)
	}
	agent := *admin
	agent.t = t
	agent.extraEnv = map[string]string{"AWS_ACCESS_KEY_ID": "agentak", "AWS_SECRET_ACCESS_KEY": "agent-secret-0123456789"}
	src := filepath.Join(t.TempDir(), "src")
	for i := 0; i < 2; i++ {
		writeFile(t, filepath.Join(src, "f"), string(randomData(uint64(i), 200<<10)))
		agent.ok("backup", src)
	}
	want := fstest.Manifest(t, src)
	target := t.TempDir()
	agent.ok("restore", "latest", "--target", target)
	compareTrees(t, "restore by the append-only user", want, inTarget(target, src), fstest.CompareOptions{})

	listing := func() []string {
		var out []string
		for oi := range root.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
			if !strings.Contains(oi.Key, "/locks/") {
				out = append(out, fmt.Sprintf("%s %d", oi.Key, oi.Size))
			}
		}
		return out
	}
	before := listing()
	newPW := filepath.Join(agent.dir, "new-key")
	writeFile(t, newPW, "another password\n")
	for _, args := range [][]string{
		{"forget", "--keep-last", "1"},
		{"forget", "--keep-last", "1", "--prune"},
		{"prune"},
		{"repair", "index"},
		{"repair", "snapshots", "--forget"},
		{"config", "set", "min-retention", "1d"},
		{"key", "add", "--new-password-file", newPW},
		{"key", "passwd", "--new-password-file", newPW},
	} {
		if r := agent.run(args...); r.code != 13 {
			t.Errorf("append-only S3 user: bunker %s: exit %d, want 13: %s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	if after := listing(); !slices.Equal(before, after) {
		t.Errorf("refused commands changed the bucket:\nbefore %v\nafter  %v", before, after)
	}
	admin.ok("check", "--read-data")
}
