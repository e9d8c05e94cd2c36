package fs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestFile(t *testing.T) {
	dir := t.TempDir()
	root, err := OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	f, err := root.CreateFile("f")
	if err != nil {
		t.Fatal(err)
	}
	if f.Name() != filepath.Join(dir, "f") {
		t.Errorf("Name() = %q", f.Name())
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"write at 0", func() error { _, err := f.WriteAt([]byte("abc"), 0); return err }},
		{"write at 10", func() error { _, err := f.WriteAt([]byte("xyz"), 10); return err }},
		{"overwrite at 1", func() error { _, err := f.WriteAt([]byte("B"), 1); return err }},
		{"extend", func() error { return f.Truncate(16) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close: %v, want os.ErrClosed", err)
	}
	if _, err := f.WriteAt([]byte("late"), 0); err == nil {
		t.Error("WriteAt after Close succeeded")
	}
	got, err := os.ReadFile(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "aBc\x00\x00\x00\x00\x00\x00\x00xyz\x00\x00\x00"; string(got) != want {
		t.Errorf("content %q, want %q", got, want)
	}
}
