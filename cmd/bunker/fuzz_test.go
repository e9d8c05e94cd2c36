package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"bunker/internal/archiver"
	"bunker/internal/repo"
	"bunker/internal/repo/repository"
	"bunker/internal/snapshot"
)

// FuzzParseSubset: --read-data-subset accepts only 1 <= n <= m; anything
// else is a usage error.
func FuzzParseSubset(f *testing.F) {
	for _, s := range []string{"1/5", "5/5", "0/5", "6/5", "10%", "100%", "0.001%", "101%", "NaN%", "1/", "/", "4294967296/1", "-1/2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, m, err := parseSubset(s)
		var ue usageError
		switch {
		case err != nil && !errors.As(err, &ue):
			t.Fatalf("parseSubset(%q) = %v, not a usage error", s, err)
		case err == nil && (n < 1 || n > m):
			t.Fatalf("parseSubset(%q) = %d/%d", s, n, m)
		}
	})
}

// FuzzByIDPrefix: a snapshot argument names at most one snapshot, readable
// or damaged, and only one whose ID starts with it.
func FuzzByIDPrefix(f *testing.F) {
	ids := []string{
		"aaaa0000000000000000000000000000000000000000000000000000000000aa",
		"aaaa1111111111111111111111111111111111111111111111111111111111bb",
		"bbbb0000000000000000000000000000000000000000000000000000000000cc",
	}
	var snaps []*snapshot.Snapshot
	for _, s := range ids[:2] {
		id, _ := repo.ParseID(s)
		snaps = append(snaps, &snapshot.Snapshot{ID: id})
	}
	bad, _ := repo.ParseID(ids[2])
	damaged := []repository.DamagedSnapshot{{ID: bad, Err: repository.ErrCorrupt}}
	for _, s := range []string{"aaaa", "aaaa0", "bbbb", "abc", "", ids[0], ids[2] + "0", "AAAA"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, prefix string) {
		sn, err := byIDPrefix(snaps, damaged, prefix)
		n := 0
		for _, s := range ids {
			if strings.HasPrefix(s, prefix) {
				n++
			}
		}
		switch {
		case err == nil && (sn == nil || !strings.HasPrefix(sn.ID.String(), prefix) || n != 1 || len(prefix) < 4):
			t.Fatalf("byIDPrefix(%q) picked %v (%d IDs match)", prefix, sn, n)
		case err != nil && len(prefix) >= 4 && n == 1 && !strings.HasPrefix(ids[2], prefix):
			t.Fatalf("byIDPrefix(%q) = %v, but exactly one readable snapshot matches", prefix, err)
		case err != nil && len(prefix) >= 4 && n == 1 && !errors.Is(err, repository.ErrCorrupt):
			t.Fatalf("byIDPrefix(%q) = %v, want the damaged snapshot's error", prefix, err)
		}
	})
}

// FuzzExcludeFile: an exclude file yields trimmed, non-empty, non-comment
// patterns, one per line, and matching any of them against any path ends.
func FuzzExcludeFile(f *testing.F) {
	f.Add([]byte("# comment\n*.tmp\n\n  /home/*/Downloads/ \n.cache\n"), "/home/u/Downloads/x")
	f.Add([]byte("[\n\\\n/\n//\n"), "/")
	f.Add([]byte("*\r\n"), "relative/path")
	f.Add([]byte(strings.Repeat("a", 70000)), "/a")
	f.Fuzz(func(t *testing.T, data []byte, path string) {
		name := filepath.Join(t.TempDir(), "excludes")
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
		pats, err := readExcludeFiles([]string{name})
		if err != nil {
			return // a line too long for the scanner: refused as a whole
		}
		for _, p := range pats {
			if p == "" || p != strings.TrimSpace(p) || strings.HasPrefix(p, "#") || strings.ContainsAny(p, "\n") {
				t.Fatalf("pattern %q from %q", p, data)
			}
		}
		got := archiver.Excluded(pats, path)
		// A plain name (no slash, no pattern syntax) excludes entries of
		// that name.
		base := filepath.Base(path)
		for _, p := range pats {
			if p == base && !strings.ContainsAny(p, `/*?[\`) && !got {
				t.Fatalf("pattern %q does not exclude %q", p, path)
			}
		}
	})
}

// TestQuote: names print as they are unless something in them is not
// printable; then every such rune is escaped.
func TestQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain name.txt", "plain name.txt"},
		{"héllo wörld", "héllo wörld"},
		{"a\nb", `a\nb`},
		{"esc\x1b[2J", `esc\x1b[2J`},
		{"csi\u009b2J", `csi\u009b2J`},
		{"abc\u202etxt.exe", `abc\u202etxt.exe`},
		{"bad\xffutf8", `bad\xffutf8`},
		{"del\x7f", `del\x7f`},
		{`a\u202e`, `a\\u202e`},
	} {
		if got := quote(tc.in); got != tc.want {
			t.Errorf("quote(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// FuzzQuote: quote's output is printable and, unless the name was, a Go
// string literal that reads back as the name.
func FuzzQuote(f *testing.F) {
	for _, s := range []string{"a", "a\nb", "\u009b", "\u202e", "\xff", `"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q := quote(s)
		if strings.ContainsFunc(q, func(r rune) bool { return !strconv.IsPrint(r) || r == utf8.RuneError }) {
			t.Fatalf("quote(%q) = %q holds unprintable runes", s, q)
		}
		if q == s {
			return
		}
		if back, err := strconv.Unquote(`"` + q + `"`); err != nil || back != s {
			t.Fatalf("quote(%q) = %q reads back as %q, %v", s, q, back, err)
		}
	})
}

// TestParseSubsetPercentage: a percentage picks one of round(100/p) shares,
// a different one from run to run, so that repeated runs read every pack
// (before, 10% was always share 1 of 10: the other 90% never read).
func TestParseSubsetPercentage(t *testing.T) {
	seen := map[uint32]bool{}
	for range 500 {
		n, m, err := parseSubset("10%")
		if err != nil || m != 10 || n < 1 || n > m {
			t.Fatalf("parseSubset(10%%) = %d/%d, %v", n, m, err)
		}
		seen[n] = true
	}
	if len(seen) != 10 {
		t.Errorf("500 runs of 10%% picked %d of the 10 shares", len(seen))
	}
}
