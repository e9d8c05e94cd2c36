// Package reliability holds the end-to-end reliability scenarios of
// /work/shared/RELIABILITY.md: crash, integrity, storage-fault and
// restore-safety tests. Where a process must die the real binary is used
// (built once in TestMain); elsewhere the packages are driven directly.
//
// Every test is seeded and fast; longer variants run with BUNKER_SOAK=1.
package reliability

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// bunkerBin is the CLI binary built by TestMain.
var bunkerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bunker-reliability-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bunkerBin = filepath.Join(dir, "bunker")
	build := exec.Command("go", "build", "-o", bunkerBin, "bunker/cmd/bunker")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build bunker:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// soak reports whether the long variants were asked for.
func soak() bool { return os.Getenv("BUNKER_SOAK") != "" }
