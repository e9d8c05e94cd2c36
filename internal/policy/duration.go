package policy

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// maxDurationPart is the largest number ParseDuration accepts for one unit.
const maxDurationPart = 100000

// Duration is a calendar duration, as given to --keep-within: a number of
// years, months, days and hours. Unlike time.Duration its length in real time
// depends on where it is applied; see the package documentation.
type Duration struct{ Years, Months, Days, Hours int }

// durationUnits are the unit letters in the order they must appear.
const durationUnits = "ymdh"

// ParseDuration parses a duration such as "1y2m3d4h", "7d", "36h" or "2y".
// Each unit (y, m, d, h) may appear at most once, in that order, after a
// decimal number from 0 to 100000. The total must not be zero.
func ParseDuration(s string) (Duration, error) {
	bad := func(format string, args ...any) (Duration, error) {
		return Duration{}, fmt.Errorf("invalid duration %q: %s", s, fmt.Sprintf(format, args...))
	}
	if s == "" {
		return bad("empty")
	}
	var parts [len(durationUnits)]int
	var seen [len(durationUnits)]bool
	next := 0 // index in durationUnits of the first unit still allowed
	for rest := s; rest != ""; {
		i := 0
		n := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			n = n*10 + int(rest[i]-'0')
			if n > maxDurationPart {
				return bad("%s is too large (at most %d per unit)", strings.TrimLeft(digitPrefix(rest), "0"), maxDurationPart)
			}
			i++
		}
		if i == 0 {
			if rest[0] == '-' {
				return bad("negative numbers are not allowed")
			}
			return bad("expected a number at %q", rest)
		}
		if i == len(rest) {
			return bad("missing unit after %s (units are y, m, d, h)", rest)
		}
		r, size := utf8.DecodeRuneInString(rest[i:])
		u := strings.IndexRune(durationUnits, r)
		switch {
		case u < 0:
			return bad("unknown unit %q (units are y, m, d, h)", string(r))
		case seen[u]:
			return bad("unit %q given twice", string(r))
		case u < next:
			return bad("units must come in the order y, m, d, h")
		}
		parts[u], seen[u] = n, true
		next = u + 1
		rest = rest[i+size:]
	}
	d := Duration{Years: parts[0], Months: parts[1], Days: parts[2], Hours: parts[3]}
	if d.IsZero() {
		return bad("zero duration")
	}
	return d, nil
}

// digitPrefix returns the leading decimal digits of s.
func digitPrefix(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

// String returns the canonical form, such as "1y2m3d4h" or "7d", leaving out
// zero parts. The zero Duration is "0h".
func (d Duration) String() string {
	var b strings.Builder
	for i, n := range [...]int{d.Years, d.Months, d.Days, d.Hours} {
		if n != 0 {
			b.WriteString(strconv.Itoa(n))
			b.WriteByte(durationUnits[i])
		}
	}
	if b.Len() == 0 {
		return "0h"
	}
	return b.String()
}

// IsZero reports whether every part of d is zero.
func (d Duration) IsZero() bool { return d == Duration{} }

// before returns the instant d before t: years, months and days are
// subtracted on the wall clock of loc with AddDate, hours as real time.
func (d Duration) before(t time.Time, loc *time.Location) time.Time {
	return t.In(loc).AddDate(-d.Years, -d.Months, -d.Days).Add(-time.Duration(d.Hours) * time.Hour)
}
