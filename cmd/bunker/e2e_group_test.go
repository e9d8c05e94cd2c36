package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestGroupEtcdPostgresFiles is issue 6's scenario: a director and three
// agents on 127.0.0.1, a real (embedded) etcd and a real PostgreSQL; one
// plan freezes all three nodes at once, the group commits; then the etcd
// data and the database are destroyed and restored from the group, and
// hold exactly the data of the freeze: what was written after the barrier
// is absent, what was written before is present.
func TestGroupEtcdPostgresFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	endpoint := startEtcd(t, "m1", filepath.Join(t.TempDir(), "etcd"))
	cli := etcdClient(t, endpoint)
	pg := startPostgres(t)
	pg.sql(t, "postgres", "CREATE DATABASE app")
	pg.sql(t, "app", "CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, 'before' FROM generate_series(1, 200) g")
	for i := range 50 {
		if _, err := cli.Put(ctx, fmt.Sprintf("config/%02d", i), "before"); err != nil {
			t.Fatal(err)
		}
	}
	nodes := []string{"etcd1", "db1", "app1"}
	etcdRestored := filepath.Join(t.TempDir(), "restored")
	peer := "http://" + freePort(t)
	etcdutl := etcdutl(t)
	dp := newDeployment(t, nodes, `  cluster:
    nodes: {etcd1: [etcd], db1: [db], app1: [files]}
    schedule: "0 0 1 1 *"
    repository: main
    freeze_timeout: 20s
`, func(dp *deployment, n string) string {
		repo := fmt.Sprintf("    repository: {location: %s, password_file: %s}\n", dp.repo.repo, dp.repo.pwFile)
		post := fmt.Sprintf("    post: [{exec: [/bin/sh, -c, \"date +%%s.%%N > %s/thawed-%s\"]}]\n", dp.dir, n)
		pre := fmt.Sprintf("    pre: [{exec: [/bin/sh, -c, \"date +%%s.%%N > %s/frozen-%s\"]}]\n", dp.dir, n)
		switch n {
		case "etcd1":
			return "  etcd:\n" + repo + fmt.Sprintf("    etcd: {endpoints: [%s], restore: {name: m2, data_dir: %s, peer_urls: [%s], initial_cluster: m2=%s, etcdutl: %s}}\n",
				endpoint, etcdRestored, peer, peer, etcdutl) + pre + post
		case "db1":
			return "  db:\n" + repo + fmt.Sprintf("    postgres: {host: 127.0.0.1, port: %d, user: postgres, database: app, bin_dir: %s}\n", pg.port, pg.bin) + pre + post
		}
		return dp.filesPlan(n, "files", "")
	})
	dp.startDirector()
	dp.startAgents()
	job := dp.runPlan(0, "cluster", false)
	// As soon as any node thaws, the services take writes again.
	dp.waitFor("a node to thaw", func() bool {
		for _, n := range nodes {
			if _, err := os.Stat(filepath.Join(dp.dir, "thawed-"+n)); err == nil {
				return true
			}
		}
		return false
	})
	pg.sql(t, "app", "INSERT INTO orders SELECT g, 'after' FROM generate_series(201, 260) g; UPDATE orders SET note = 'changed' WHERE id <= 10")
	if _, err := cli.Put(ctx, "config/after", "after"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, "config/00"); err != nil {
		t.Fatal(err)
	}
	done := dp.waitJob(job.ID)
	if done.State != "succeeded" {
		t.Fatalf("job: %+v", done)
	}
	// One instant: every node froze before any thawed.
	var lastFreeze, firstThaw float64
	for i, n := range nodes {
		f, th := dp.stamp("frozen", n), dp.stamp("thawed", n)
		if i == 0 || f > lastFreeze {
			lastFreeze = f
		}
		if i == 0 || th < firstThaw {
			firstThaw = th
		}
	}
	if lastFreeze >= firstThaw {
		t.Errorf("not one instant: last freeze %f, first thaw %f", lastFreeze, firstThaw)
	}
	if n := len(dp.repo.snapshots("--tag", "group:"+job.ID)); n != 3 {
		t.Fatalf("%d snapshots in the group, want 3", n)
	}

	// Destroy the database (and lose etcd's data: the member is rebuilt
	// elsewhere), then restore the whole group through the agents.
	pg.sql(t, "postgres", "DROP DATABASE app")
	pg.sql(t, "postgres", "CREATE DATABASE app")
	var rj jobJSON
	r := dp.operator(0, "restore", "--plan", "cluster", "--group", job.ID, "--wait", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &rj); err != nil || rj.State != "succeeded" {
		t.Fatalf("restore: %v %s\n%s", err, r.stdout, dp.logs["etcd1"])
	}
	if got := pg.sql(t, "app", "SELECT count(*), count(*) FILTER (WHERE note = 'before'), max(id) FROM orders"); got != "200|200|200" {
		t.Errorf("restored database (rows|unchanged|max id): %s, want 200|200|200", got)
	}
	cli2 := etcdClient(t, startEtcd(t, "m2", etcdRestored))
	all, err := cli2.Get(ctx, "config/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Kvs) != 50 {
		t.Errorf("restored etcd: %d keys, want the 50 of the freeze", len(all.Kvs))
	}
	for _, kv := range all.Kvs {
		if string(kv.Value) != "before" {
			t.Errorf("restored etcd: %s = %s, written after the barrier", kv.Key, kv.Value)
		}
	}
	got, err := os.ReadFile(filepath.Join(dp.dir, "restored-app1", dp.dir, "data", "app1", "file"))
	if err != nil || string(got) != "data of app1\n" {
		t.Errorf("restored files of app1: %q %v", got, err)
	}

	// Bad input: an unknown group, a node outside it, a --map to an
	// unknown node.
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--group", "20200101T000000-00000000"}, "no group"},
		{[]string{"--group", job.ID, "--node", "nosuch"}, "not in group"},
		{[]string{"--group", job.ID, "--map", "app1=nosuch"}, "unknown node"},
		{[]string{"--group", rj.ID}, "not a committed group"},
	} {
		r := dp.operator(2, append([]string{"restore", "--plan", "cluster"}, tc.args...)...)
		if !strings.Contains(r.stderr, tc.msg) {
			t.Errorf("restore %v: %q lacks %q", tc.args, r.stderr, tc.msg)
		}
	}
}
