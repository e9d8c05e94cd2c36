package director

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigGood(t *testing.T) {
	c, err := LoadConfig("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Plans["cluster"]; len(p.Nodes) != 3 || p.Nodes["db1"][1] != "db" || p.CopyTo != "offsite" {
		t.Errorf("plan: %+v", p)
	}
}

// Each mistake is reported with the line that holds it.
func TestConfigMistakes(t *testing.T) {
	good, err := os.ReadFile("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, from, to string
		want           []string // substrings of the error, the first with its line
	}{
		{"unknown field", "    schedule:", "    schedul:", []string{":26: field schedul not found (unknown field)"}},
		{"unknown top-level field", "state:", "stat:", []string{":7: field stat not found"}},
		{"unknown node", "      db1: [etcd, db]", "      db2: [etcd, db]", []string{`:25: plans.cluster.nodes.db2: unknown node "db2"`}},
		{"unknown repository", "    repository: main", "    repository: mian", []string{`:28: plans.cluster.repository: unknown repository "mian"`}},
		{"copy to itself", "    copy_to: offsite", "    copy_to: main", []string{":30: plans.cluster.copy_to: the copy must go to another repository"}},
		{"bad cron", `"0 3 * * *"`, `"0 25 * * *"`, []string{":26: plans.cluster.schedule: not a cron expression"}},
		{"bad duration", "rpo: 24h", "rpo: a day", []string{`:27: "a day" is not a duration`}},
		{"wrong type", "freeze_timeout: 20s", "freeze_timeout: [20s]", []string{":31:"}},
		{"bad retention", "keep_daily: 7", "keep_daily: -7", []string{":29: plans.cluster.retention:"}},
		{"no password file", "    password_file: /etc/bunker/repo-password\n", "", []string{":9: repositories.main.password_file: required"}},
		{"bad listen", "listen: 127.0.0.1:8443", "listen: 8443", []string{":2: listen: want host:port"}},
		{"bad node name", "  node2: {description: etcd member}", "  Node_2: {description: etcd member}", []string{"nodes.Node_2: \"Node_2\": invalid name"}},
		{"duplicate key", "  node2: {description: etcd member}", "  node1: {description: again}", []string{`:18: mapping key "node1" already defined at line 17`}},
		{"no schedule nor rpo", "    schedule: \"0 3 * * *\"\n    rpo: 24h\n", "", []string{"plans.cluster: give a schedule, an rpo, or both"}},
		{"not yaml", "listen:", "listen: [", []string{"good.yaml:"}},
		{"enrol without a key", "state: /var/lib/bunker/director.db", "state: /var/lib/bunker/director.db\nenrol: {listen: \"127.0.0.1:8444\"}",
			[]string{":8: enrol.ca_key: the CA's key file is required"}},
		{"enrol on the API's port", "state: /var/lib/bunker/director.db", "state: /var/lib/bunker/director.db\nenrol: {listen: \"127.0.0.1:8443\", ca_key: /k}",
			[]string{"enrol.listen: a port of its own"}},
		{"enrol token ttl", "state: /var/lib/bunker/director.db", "state: /var/lib/bunker/director.db\nenrol: {listen: \"127.0.0.1:8444\", ca_key: /k, token_ttl: 30d}",
			[]string{`"30d" is not a duration`}},
		{"enrol unknown field", "state: /var/lib/bunker/director.db", "state: /var/lib/bunker/director.db\nenrol: {listen: \"127.0.0.1:8444\", ca_key: /k, tokens: 3}",
			[]string{"field tokens not found"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			text := string(good)
			if !strings.Contains(text, tc.from) {
				t.Fatalf("fixture lacks %q", tc.from)
			}
			text = strings.Replace(text, tc.from, tc.to, 1)
			path := filepath.Join(t.TempDir(), "good.yaml")
			if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(path)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
