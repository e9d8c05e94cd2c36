package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// startEtcd runs an embedded etcd member on 127.0.0.1 (from dataDir, which
// may hold a restored member) and returns its client URL.
func startEtcd(t *testing.T, name, dataDir string) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = name
	cfg.Dir = dataDir
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop()) // its shutdown errors are noise here
	client, _ := url.Parse("http://" + freePort(t))
	peer, _ := url.Parse("http://" + freePort(t))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = name + "=" + peer.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd did not start")
	}
	return client.String()
}

// etcdutl finds etcd's etcdutl, which the agent runs to rebuild a member:
// $BUNKER_ETCDUTL (make test builds the module's tool), then PATH. In CI a
// missing one fails the test; elsewhere it skips it.
func etcdutl(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("BUNKER_ETCDUTL"); p != "" {
		return p
	}
	if p, err := exec.LookPath("etcdutl"); err == nil {
		return p
	}
	const msg = "etcdutl not found: run make test (it builds go.mod's etcdutl tool) or set BUNKER_ETCDUTL"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func etcdClient(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestDirectorEtcd: a plan takes an etcd snapshot at the freeze (through
// the maintenance API, verified) and stores it; restored into a new member,
// it holds the keys written before the freeze and not those written after.
func TestDirectorEtcd(t *testing.T) {
	t.Parallel()
	endpoint := startEtcd(t, "m1", filepath.Join(t.TempDir(), "etcd"))
	cli := etcdClient(t, endpoint)
	ctx := context.Background()
	for i := range 100 {
		if _, err := cli.Put(ctx, fmt.Sprintf("before/%03d", i), strings.Repeat("v", 100)); err != nil {
			t.Fatal(err)
		}
	}
	dp := newDeployment(t, []string{"node1"}, `  etcd:
    nodes: {node1: [etcd]}
    schedule: "0 0 1 1 *"
    repository: main
`, func(dp *deployment, n string) string {
		return fmt.Sprintf(`  etcd:
    repository: {location: %s, password_file: %s}
    etcd: {endpoints: [%s]}
    post: [{exec: [/bin/sh, -c, "touch %s/thawed-%s"]}]
`, dp.repo.repo, dp.repo.pwFile, endpoint, dp.dir, n)
	})
	dp.startDirector()
	dp.startAgents()
	job := dp.runPlan(0, "etcd", false)
	dp.waitFor("the thaw", func() bool { _, err := os.Stat(filepath.Join(dp.dir, "thawed-node1")); return err == nil })
	if _, err := cli.Put(ctx, "after", "written after the freeze"); err != nil {
		t.Fatal(err)
	}
	done := dp.waitJob(job.ID)
	if done.State != "succeeded" {
		t.Fatalf("job: %+v\nagent log:\n%s", done, dp.logs["node1"])
	}
	id := done.Nodes["node1"].Snapshots["etcd"]
	r := dp.repo.run("dump", id, "/etcd.snapshot")
	if r.code != 0 {
		t.Fatalf("dump: %v", r.stderr)
	}
	snap := filepath.Join(t.TempDir(), "etcd.snapshot")
	writeFile(t, snap, r.stdout)
	restored := filepath.Join(t.TempDir(), "restored")
	peer := "http://" + freePort(t)
	if err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{SnapshotPath: snap, Name: "m2", OutputDataDir: restored,
		PeerURLs: []string{peer}, InitialCluster: "m2=" + peer, InitialClusterToken: "restored"}); err != nil {
		t.Fatalf("etcdutl restore: %v", err)
	}
	cli2 := etcdClient(t, startEtcd(t, "m2", restored))
	before, err := cli2.Get(ctx, "before/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || before.Count != 100 {
		t.Errorf("restored member: %d keys written before the freeze, want 100 (%v)", before.Count, err)
	}
	after, err := cli2.Get(ctx, "after")
	if err != nil || len(after.Kvs) != 0 {
		t.Errorf("restored member holds the key written after the freeze (%v)", err)
	}
}
