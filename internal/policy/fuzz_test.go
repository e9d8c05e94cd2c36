package policy

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzParseDuration checks that ParseDuration never panics, that its errors
// are one line naming the input, and that String of a parsed value parses
// back to the same value.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{
		"1y2m3d4h", "7d", "36h", "2y", "0y1h", "007d", "100000h",
		"", "0d", "-1d", "1x", "1d1d", "1h1d", "100001d", "7", "d",
		"99999999999999999999999999d", "1y\n2d", "1é",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			msg := err.Error()
			if strings.Contains(msg, "\n") || !strings.Contains(msg, strconv.Quote(s)) {
				t.Fatalf("ParseDuration(%q): error %q is not one line naming the input", s, msg)
			}
			if d != (Duration{}) {
				t.Fatalf("ParseDuration(%q): error with a non-zero result %+v", s, d)
			}
			return
		}
		if d.IsZero() {
			t.Fatalf("ParseDuration(%q) accepted a zero duration", s)
		}
		for _, n := range []int{d.Years, d.Months, d.Days, d.Hours} {
			if n < 0 || n > maxDurationPart {
				t.Fatalf("ParseDuration(%q) = %+v: part out of range", s, d)
			}
		}
		str := d.String()
		back, err := ParseDuration(str)
		if err != nil || back != d {
			t.Fatalf("ParseDuration(%q) = %+v; its String %q parses to %+v, %v", s, d, str, back, err)
		}
		if back.String() != str {
			t.Fatalf("String not canonical: %q then %q", str, back.String())
		}
	})
}
