package fs

import (
	"errors"
	"strings"
	"testing"
)

// FuzzValidName: ValidName accepts exactly the names that are non-empty, not
// "." or "..", at most MaxNameLen bytes and free of '/' and NUL.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"", ".", "..", "...", "a", "a/b", "/", "a\x00", "\xff\xfe", ".hidden",
		strings.Repeat("x", MaxNameLen), strings.Repeat("x", MaxNameLen+1)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidName(name)
		bad := name == "" || name == "." || name == ".." || len(name) > MaxNameLen ||
			strings.ContainsRune(name, '/') || strings.ContainsRune(name, 0)
		if bad && err == nil {
			t.Fatalf("ValidName(%q) accepted an invalid name", name)
		}
		if !bad && err != nil {
			t.Fatalf("ValidName(%q) = %v, want nil", name, err)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Fatalf("error %v does not wrap ErrInvalidName", err)
		}
	})
}
