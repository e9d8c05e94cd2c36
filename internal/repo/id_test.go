package repo

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseID: an ID is exactly 64 hex digits, and reads back as itself
// (in lower case).
func FuzzParseID(f *testing.F) {
	for _, s := range []string{strings.Repeat("ab", 32), strings.Repeat("AB", 32), strings.Repeat("a", 63), strings.Repeat("g", 64), "", strings.Repeat("0", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidID) {
				t.Fatalf("ParseID(%q) = %v, not ErrInvalidID", s, err)
			}
			return
		}
		if id.String() != strings.ToLower(s) {
			t.Fatalf("ParseID(%q) reads back as %s", s, id)
		}
		var back ID
		if err := back.UnmarshalText([]byte(s)); err != nil || back != id {
			t.Fatalf("UnmarshalText(%q) = %v, %v", s, back, err)
		}
	})
}
