// Package agenttest helps the tests of the agent's providers that need
// real filesystems: root, tools, and a filesystem on a loop device.
package agenttest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// NeedTools skips a test whose tools are missing, and fails it in CI
// (make test installs them).
func NeedTools(t *testing.T, why string, tools ...string) {
	t.Helper()
	missing := os.Geteuid() != 0
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = true
		}
	}
	if !missing {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s: needs root and %s (make test installs them)", why, strings.Join(tools, ", "))
	}
	t.Skipf("%s: needs root and %s", why, strings.Join(tools, ", "))
}

// LoopFS makes a filesystem of type fstype on a loop device and mounts it
// on a new directory, for the test only.
func LoopFS(t *testing.T, fstype string, size int64) string {
	t.Helper()
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	if out, err := exec.Command("mkfs."+fstype, "-q", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() {
		_ = exec.Command("fsfreeze", "-u", mnt).Run()
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	return mnt
}
