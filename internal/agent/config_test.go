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
	if c.Name != "db1" || c.ThawAfter() != 30*time.Second || c.Plans["db"].Postgres.Database != "app" || len(c.Plans["etcd"].Etcd.Endpoints) != 1 {
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
		{"unknown field", "    paths:", "    path:", ":24: field path not found (unknown field)"},
		{"relative path", "paths: [/srv/uploads]", "paths: [srv/uploads]", `:24: plans.db.paths: path 1 ("srv/uploads") must be absolute`},
		{"relative hook", "[/usr/local/bin/app-resume]", "[app-resume]", ":30: plans.db.post: hook 1: exec must start with an absolute program path"},
		{"plain http director", "director: https://", "director: http://", ":3: director: want https://host:port"},
		{"no repository", "      location: rest:https://db1@backup.example:8443/db1\n      password_file: /etc/bunker/repo-password\n    paths", "    paths", "plans.db.repository.location: required"},
		{"etcd without endpoints", "      endpoints: [https://127.0.0.1:2379]\n", "", ":15: plans.etcd.etcd.endpoints: at least one endpoint"},
		{"etcd key without cert", "      cert: /etc/etcd/client.pem\n", "", ":15: plans.etcd.etcd: cert and key go together"},
		{"dump name with slash", "      database: app", "      database: app\n      filename: ../x", ":36: plans.db.postgres.filename: a file name, not a path"},
		{"bad name", "name: db1", "name: DB1", `:2: name: "DB1": invalid name`},
		{"thaw too long", "thaw_deadline: 30s", "thaw_deadline: 1h", ":8: thaw_deadline: between 1s and 10m"},
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
