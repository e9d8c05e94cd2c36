package policy

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ErrEmptyPolicy is returned (wrapped) by Validate for a policy without rules.
var ErrEmptyPolicy = errors.New("no keep rule given")

// TagSet is a set of tags that a snapshot matches when it has every one of
// them. On the command line "--keep-tag a,b" is the single TagSet{"a", "b"}.
type TagSet []string

// ParseTagSet parses a comma-separated list of tags. Tags are taken as given
// (no spaces are trimmed); an empty tag, as in "", "a,,b" or "a,", is an
// error.
func ParseTagSet(s string) (TagSet, error) {
	tags := strings.Split(s, ",")
	for i, t := range tags {
		if t == "" {
			if s == "" {
				return nil, fmt.Errorf("invalid tag list %q: empty", s)
			}
			return nil, fmt.Errorf("invalid tag list %q: tag %d is empty", s, i+1)
		}
	}
	return TagSet(tags), nil
}

// String returns the tags joined by commas, as ParseTagSet reads them.
func (ts TagSet) String() string { return strings.Join(ts, ",") }

// Match reports whether tags contains every tag of the set. The empty set
// matches anything.
func (ts TagSet) Match(tags []string) bool {
	for _, t := range ts {
		if !slices.Contains(tags, t) {
			return false
		}
	}
	return true
}

// Policy is what forget keeps. Zero values mean that a rule is not used; see
// the package documentation for what each rule does.
type Policy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	Within                                       Duration
	Tags                                         []TagSet
}

// counts returns the count rules with their flag and reason names, in the
// order of Decision.Reasons.
func (p Policy) counts() []struct {
	name string
	n    int
} {
	return []struct {
		name string
		n    int
	}{
		{"last", p.Last}, {"hourly", p.Hourly}, {"daily", p.Daily},
		{"weekly", p.Weekly}, {"monthly", p.Monthly}, {"yearly", p.Yearly},
	}
}

// IsEmpty reports whether the policy has no rule at all.
func (p Policy) IsEmpty() bool {
	for _, c := range p.counts() {
		if c.n != 0 {
			return false
		}
	}
	return p.Within.IsZero() && len(p.Tags) == 0
}

// Validate checks the policy: counts must not be negative, Within must be a
// duration that ParseDuration could return (or zero), every TagSet must hold
// at least one non-empty tag, and at least one rule must be given; otherwise
// the error wraps ErrEmptyPolicy.
func (p Policy) Validate() error {
	for _, c := range p.counts() {
		if c.n < 0 {
			return fmt.Errorf("--keep-%s must be at least 1, got %d", c.name, c.n)
		}
	}
	w := p.Within
	for _, n := range [...]int{w.Years, w.Months, w.Days, w.Hours} {
		if n < 0 {
			return fmt.Errorf("--keep-within must not be negative, got %dy%dm%dd%dh", w.Years, w.Months, w.Days, w.Hours)
		}
		if n > maxDurationPart {
			return fmt.Errorf("--keep-within %s is too large (at most %d per unit)", w, maxDurationPart)
		}
	}
	for _, ts := range p.Tags {
		if len(ts) == 0 {
			return errors.New("--keep-tag needs at least one tag, got an empty list")
		}
		if slices.Contains(ts, "") {
			return fmt.Errorf("--keep-tag %q: empty tag", ts.String())
		}
	}
	if p.IsEmpty() {
		return fmt.Errorf("%w: this policy would remove every snapshot", ErrEmptyPolicy)
	}
	return nil
}

// String summarises the policy, for example
// "keep 2 last, 7 daily, 4 weekly, within 1y, tagged [important]".
// A policy without rules is "keep nothing".
func (p Policy) String() string {
	var parts []string
	for _, c := range p.counts() {
		if c.n != 0 {
			parts = append(parts, strconv.Itoa(c.n)+" "+c.name)
		}
	}
	if !p.Within.IsZero() {
		parts = append(parts, "within "+p.Within.String())
	}
	if len(p.Tags) > 0 {
		sets := make([]string, len(p.Tags))
		for i, ts := range p.Tags {
			sets[i] = "[" + ts.String() + "]"
		}
		parts = append(parts, "tagged "+strings.Join(sets, " or "))
	}
	if len(parts) == 0 {
		return "keep nothing"
	}
	return "keep " + strings.Join(parts, ", ")
}
