package policy

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	"bunker/internal/snapshot"
)

// ErrKeepsNothing is returned (wrapped) by Apply when the policy would keep
// no snapshot of a non-empty group.
var ErrKeepsNothing = errors.New("the policy keeps no snapshot")

// Decision is the outcome for one snapshot.
type Decision struct {
	Snapshot *snapshot.Snapshot
	Keep     bool
	// Reasons names every rule that kept the snapshot, in this order:
	// "last", "hourly", "daily", "weekly", "monthly", "yearly",
	// "within <duration>", "tag <a,b>" (one per matching TagSet, in policy
	// order) and "min-retention <text>". It is nil when the snapshot is
	// removed.
	Reasons []string
}

// bucket identifies a calendar bucket; fields a rule does not use are zero.
type bucket struct{ year, month, day, hour, offset int }

// bucketRule is one of the counted calendar rules.
type bucketRule struct {
	name string
	n    int
	key  func(t time.Time) bucket // t is already in the caller's zone

	kept int
	last bucket
}

func hourBucket(t time.Time) bucket {
	y, m, d := t.Date()
	_, off := t.Zone()
	return bucket{y, int(m), d, t.Hour(), off}
}

func dayBucket(t time.Time) bucket {
	y, m, d := t.Date()
	return bucket{year: y, month: int(m), day: d}
}

func weekBucket(t time.Time) bucket {
	y, w := t.ISOWeek()
	return bucket{year: y, day: w}
}

func monthBucket(t time.Time) bucket { return bucket{year: t.Year(), month: int(t.Month())} }

func yearBucket(t time.Time) bucket { return bucket{year: t.Year()} }

// SortNewestFirst sorts snapshots newest first, equal times by ID ascending
// (the order of their hex strings), the order Apply reports them in.
func SortNewestFirst(snaps []*snapshot.Snapshot) {
	slices.SortStableFunc(snaps, func(a, b *snapshot.Snapshot) int {
		if c := b.Time.Compare(a.Time); c != 0 {
			return c
		}
		return bytes.Compare(a.ID[:], b.ID[:])
	})
}

// Apply decides which snapshots of ONE group to keep under policy p.
//
// snaps may be in any order and is not modified; the decisions come back
// newest first, equal times ordered by ID. Calendar buckets and the Within
// cutoff are computed in loc (callers pass time.Local; nil means UTC).
//
// When minRetention is positive, every snapshot younger than it at now
// (now.Sub(t) < minRetention, which includes snapshots dated after now) is
// kept too, with the reason "min-retention " + minRetentionText
// (minRetention.String() if the text is empty).
//
// Apply returns the error of p.Validate for an invalid policy, and an error
// wrapping ErrKeepsNothing, with no decisions, when the policy would keep no
// snapshot of a non-empty group; min-retention does not count for this test.
// An empty group gives no decisions and no error. snaps must not contain nil.
func Apply(snaps []*snapshot.Snapshot, p Policy, loc *time.Location, now time.Time, minRetention time.Duration, minRetentionText string) ([]Decision, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if len(snaps) == 0 {
		return nil, nil
	}
	if slices.Contains(snaps, nil) {
		return nil, errors.New("policy: nil snapshot")
	}
	if loc == nil {
		loc = time.UTC
	}
	if minRetentionText == "" {
		minRetentionText = minRetention.String()
	}
	sorted := slices.Clone(snaps)
	SortNewestFirst(sorted)

	rules := []*bucketRule{
		{name: "hourly", n: p.Hourly, key: hourBucket},
		{name: "daily", n: p.Daily, key: dayBucket},
		{name: "weekly", n: p.Weekly, key: weekBucket},
		{name: "monthly", n: p.Monthly, key: monthBucket},
		{name: "yearly", n: p.Yearly, key: yearBucket},
	}
	var cutoff time.Time
	if !p.Within.IsZero() {
		cutoff = p.Within.before(sorted[0].Time, loc)
	}

	decisions := make([]Decision, len(sorted))
	policyKeeps := false
	for i, sn := range sorted {
		t := sn.Time.In(loc)
		var reasons []string
		if i < p.Last {
			reasons = append(reasons, "last")
		}
		for _, r := range rules {
			if r.n == 0 || r.kept >= r.n {
				continue
			}
			if b := r.key(t); r.kept == 0 || b != r.last {
				reasons = append(reasons, r.name)
				r.kept++
				r.last = b
			}
		}
		if !p.Within.IsZero() && !t.Before(cutoff) {
			reasons = append(reasons, "within "+p.Within.String())
		}
		for _, ts := range p.Tags {
			if ts.Match(sn.Tags) {
				reasons = append(reasons, "tag "+ts.String())
			}
		}
		if len(reasons) > 0 {
			policyKeeps = true
		}
		if minRetention > 0 && now.Sub(sn.Time) < minRetention {
			reasons = append(reasons, "min-retention "+minRetentionText)
		}
		decisions[i] = Decision{Snapshot: sn, Keep: len(reasons) > 0, Reasons: reasons}
	}
	if !policyKeeps {
		return nil, fmt.Errorf("%w (%s): the group would be emptied, removing all %d snapshots", ErrKeepsNothing, p, len(sorted))
	}
	return decisions, nil
}
