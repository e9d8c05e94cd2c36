package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigGood(t *testing.T) {
	c, err := LoadConfig("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "db1" || c.ThawAfter() != 30*time.Second || c.Plans["db"].Pre[0].User != "app" || c.Plans["config"].Paths[0] != "/etc/app" {
		t.Errorf("config: %+v", c)
	}
}

func TestConfigMistakes(t *testing.T) {
	good, err := os.ReadFile("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, from, to string
		want           string
	}{
		{"unknown field", "    paths: [/srv", "    path: [/srv", ":20: field path not found (unknown field)"},
		{"relative path", "paths: [/srv/uploads]", "paths: [srv/uploads]", `:20: plans.db.paths: path 1 ("srv/uploads") must be absolute`},
		{"relative hook", "[/usr/local/bin/app-resume]", "[app-resume]", ":26: plans.db.post: hook 1: exec must start with an absolute program path"},
		{"plain http director", "director: https://", "director: http://", ":3: director: want https://host:port"},
		{"no repository", "      location: rest:https://db1@backup.example:8443/db1\n      password_file: /etc/bunker/repo-password\n    paths", "    paths", "plans.db.repository.location: required"},
		{"nothing to back up", "    paths: [/etc/app]\n", "", ":10: plans.config: nothing to back up: give paths, etcd or postgres"},
		{"etcd and paths", "    paths: [/etc/app]", "    paths: [/etc/app]\n    etcd: {endpoints: [http://127.0.0.1:2379]}", ":10: plans.config: a plan backs up one of paths, etcd or postgres"},
		{"etcd without endpoints", "    paths: [/etc/app]", "    etcd: {filename: e.db}", ":15: plans.config.etcd.endpoints: at least one endpoint"},
		{"etcd http with certificates", "    paths: [/etc/app]", "    etcd: {endpoints: [http://127.0.0.1:2379], cacert: /etc/etcd/ca.pem}", "plans.config.etcd.endpoints: etcd endpoint \"http://127.0.0.1:2379\" is http:// but certificates are set: use https://"},
		{"postgres and paths", "    paths: [/etc/app]", "    paths: [/etc/app]\n    postgres: {database: app}", ":10: plans.config: a plan backs up one of paths, etcd or postgres"},
		{"postgres option injection", "    paths: [/etc/app]", "    postgres: {database: --help}", ":15: plans.config.postgres.database: required, and not starting with '-'"},
		{"unknown provider", "    paths: [/etc/app]", "    paths: [/etc/app]\n    mysql: {database: app}", ":16: field mysql not found (unknown field)"},
		{"hook timeout", "timeout: 10s", "timeout: 2h", ":22: plans.db.pre: hook 1: timeout between 100ms and 1h"},
		{"bad name", "name: db1", "name: DB1", `:2: name: "DB1": invalid name`},
		{"thaw too long", "thaw_deadline: 30s", "thaw_deadline: 1h", ":8: thaw_deadline: between 1s and 10m"},
		{"snapshot type", "    paths: [/etc/app]", "    paths: [/etc/app]\n    snapshot: {type: xfs, source: /etc}", ":16: plans.config.snapshot.type: want btrfs, lvm or zfs"},
		{"path outside the snapshot", "    paths: [/etc/app]", "    paths: [/etc/app]\n    snapshot: {type: btrfs, source: /srv}", `:15: plans.config.paths: "/etc/app" is not within the snapshot's /srv`},
		{"lvm volume", "    paths: [/etc/app]", "    paths: [/etc/app]\n    snapshot: {type: lvm, source: \"--help\", mount_point: /etc}", "plans.config.snapshot.source: want a logical volume as vg/lv"},
		{"lvm mount point", "    paths: [/etc/app]", "    paths: [/etc/app]\n    snapshot: {type: lvm, source: vg0/etc}", "plans.config.snapshot.mount_point: the absolute directory where vg0/etc is mounted"},
		{"zfs size", "    paths: [/etc/app]", "    paths: [/etc/app]\n    snapshot: {type: zfs, source: tank/etc, mount_point: /etc, size: 1G}", "plans.config.snapshot.size: only for an lvm snapshot"},
		{"fsfreeze alone", "    paths: [/etc/app]", "    paths: [/etc/app]\n    fsfreeze: [/etc]", ":16: plans.config.fsfreeze: goes with a snapshot"},
		{"fsfreeze of /", "    paths: [/etc/app]", "    paths: [/etc/app]\n    fsfreeze: [/]", "want the absolute mount point of a filesystem other than /"},
		{"snapshot of etcd", "    paths: [/etc/app]", "    etcd: {endpoints: [http://127.0.0.1:2379]}\n    snapshot: {type: btrfs, source: /var/lib/etcd}", "plans.config.snapshot: a snapshot is for a paths plan"},
		{"docker selects nothing", "    paths: [/etc/app]", "    paths: [/etc/app]\n    docker: {socket: /run/docker.sock}", "plans.config.docker: name containers, labels, or both"},
		{"docker container name", "    paths: [/etc/app]", "    paths: [/etc/app]\n    docker: {containers: [\"-x\"]}", `plans.config.docker.containers: "-x" is not a container name or ID`},
		{"fsfreeze twice", "    paths: [/srv/uploads]", "    paths: [/srv/uploads]\n    fsfreeze: [/srv/media]\n    snapshot: {type: btrfs, source: /srv}", "plans.media.fsfreeze: /srv/media is already frozen by plan db"},
		{"btrfs root", "    paths: [/etc/app]", "    paths: [/etc/app]\n    snapshot: {type: btrfs, source: /}", "the absolute path of a btrfs subvolume other than /"},
		{"docker socket", "    paths: [/etc/app]", "    paths: [/etc/app]\n    docker: {socket: docker.sock, labels: [a]}", "plans.config.docker.socket: an absolute path"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			text := string(good)
			if !strings.Contains(text, tc.from) {
				t.Fatalf("fixture lacks %q", tc.from)
			}
			path := filepath.Join(t.TempDir(), "agent.yaml")
			if err := os.WriteFile(path, []byte(strings.Replace(text, tc.from, tc.to, 1)), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// A director may narrow a restore of paths, never widen it (E6).
func TestRestoreIncludes(t *testing.T) {
	p := Plan{Paths: []string{"/srv/app", "/etc/app/"}}
	for _, tc := range []struct {
		inc string
		ok  bool
	}{
		{"/srv/app", true}, {"/srv/app/uploads", true}, {"/etc/app/x.conf", true},
		{"/srv/application", false}, {"/etc/shadow", false}, {"/srv/app/../../etc", false}, {"srv/app", false}, {"/", false},
	} {
		if err := checkIncludes(p, []string{tc.inc}); (err == nil) != tc.ok {
			t.Errorf("include %q: %v", tc.inc, err)
		}
	}
}
