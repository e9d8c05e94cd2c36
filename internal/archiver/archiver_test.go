package archiver

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"bunker/internal/snapshot"
)

// TestSaveFileReplacedByFIFO gives a file worker a job whose regular file
// has become a FIFO (same inode, as if found by the walk just before): it
// must fail the entry at once, not wait in open for a writer.
func TestSaveFileReplacedByFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	ino := st.Ino
	a := New(nil, Options{})
	a.ctx = context.Background()
	job := &fileJob{path: path, node: &snapshot.Node{Name: "f", Type: snapshot.TypeFile, Inode: ino}}
	done := make(chan error, 1)
	go func() {
		_, err := a.saveFile(job)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a FIFO was saved as a file")
		}
	case <-time.After(10 * time.Second):
		// Unblock the open so the goroutine ends with the test binary.
		if w, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			w.Close()
		}
		t.Fatal("saving a file replaced by a FIFO waits in open")
	}
}
