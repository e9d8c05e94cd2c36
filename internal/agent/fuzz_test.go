package agent

import (
	"os"
	"testing"

	"bunker/internal/conf"
)

// FuzzConfig: any bytes as agent.yaml give a config or an error, never a
// panic or a hang.
func FuzzConfig(f *testing.F) {
	good, err := os.ReadFile("testdata/good.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte("plans: {p: {etcd: {endpoints: [x]}, postgres: {database: d}}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c Config
		doc, err := conf.Parse("agent.yaml", data, &c)
		if err != nil {
			return
		}
		_ = c.check(doc)
	})
}
