package policy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"bunker/internal/snapshot"
)

func TestISOWeekBuckets(t *testing.T) {
	// The calendar facts the weekly scenarios rely on.
	for _, c := range []struct {
		date string
		want bucket
	}{
		{"2020-12-28", bucket{year: 2020, day: 53}},
		{"2020-12-31", bucket{year: 2020, day: 53}},
		{"2021-01-03", bucket{year: 2020, day: 53}},
		{"2021-01-04", bucket{year: 2021, day: 1}},
		{"2021-01-10", bucket{year: 2021, day: 1}},
		{"2024-12-29", bucket{year: 2024, day: 52}},
		{"2024-12-30", bucket{year: 2025, day: 1}},
		{"2025-01-05", bucket{year: 2025, day: 1}},
		{"2025-01-06", bucket{year: 2025, day: 2}},
	} {
		if got := weekBucket(at(t, time.UTC, c.date+" 12:00")); got != c.want {
			t.Errorf("%s: week %d-W%02d, want %d-W%02d", c.date, got.year, got.day, c.want.year, c.want.day)
		}
	}
}

func TestWeeklyAcrossISOYear(t *testing.T) {
	loc := zone(t, "Europe/Berlin")
	snaps := build(plain(daily(t, loc, "2020-12-28", "2021-01-10", "12:00")...))
	ds, err := Apply(snaps, Policy{Weekly: 10}, loc, time.Time{}, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	// Only two ISO weeks hold snapshots: 2021-W01 and 2020-W53.
	diffLines(t, "kept", keptLines(ds, loc), []string{
		"2021-01-10 12:00 CET weekly",
		"2021-01-03 12:00 CET weekly",
	})

	snaps = build(plain(daily(t, loc, "2024-12-28", "2025-01-01", "12:00")...))
	ds, err = Apply(snaps, Policy{Weekly: 10, Yearly: 10}, loc, time.Time{}, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	// 2024-12-30 and 12-31 are in 2025-W01 with 2025-01-01, but in year 2024.
	diffLines(t, "kept", keptLines(ds, loc), []string{
		"2025-01-01 12:00 CET weekly, yearly",
		"2024-12-31 12:00 CET yearly",
		"2024-12-29 12:00 CET weekly",
	})
}

func TestBucketsUseGivenZone(t *testing.T) {
	// The same instants seen from UTC and from New York fall in different
	// days, months and years.
	ny := zone(t, "America/New_York")
	snaps := build(plain(at(t, ny, "2023-12-31 18:00"), at(t, ny, "2023-12-31 20:00"), at(t, ny, "2023-12-31 23:30")))
	for _, c := range []struct {
		loc  *time.Location
		want []string
	}{
		{ny, []string{"2023-12-31 23:30 EST daily, monthly, yearly"}},
		// In UTC they are 2023-12-31 23:00, 2024-01-01 01:00 and 04:30.
		{time.UTC, []string{"2024-01-01 04:30 UTC daily, monthly, yearly", "2023-12-31 23:00 UTC daily, monthly, yearly"}},
	} {
		ds, err := Apply(snaps, Policy{Daily: 5, Monthly: 5, Yearly: 5}, c.loc, time.Time{}, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		diffLines(t, c.loc.String(), keptLines(ds, c.loc), c.want)
	}
	// nil means UTC.
	ds, err := Apply(snaps, Policy{Daily: 5}, nil, time.Time{}, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	diffLines(t, "nil zone", keptLines(ds, time.UTC), []string{"2024-01-01 04:30 UTC daily", "2023-12-31 23:00 UTC daily"})
}

func TestHourlyFallBackRepeatedHour(t *testing.T) {
	// Four snapshots in the two real hours that New York calls 01:xx on
	// 2024-11-03 keep two hourly buckets.
	ny := zone(t, "America/New_York")
	start := time.Date(2024, 11, 3, 5, 0, 0, 0, time.UTC) // 01:00 EDT
	snaps := build(plain(every(start, 30*time.Minute, 4)...))
	ds, err := Apply(snaps, Policy{Hourly: 10}, ny, time.Time{}, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	diffLines(t, "kept", keptLines(ds, ny), []string{
		"2024-11-03 01:30 EST hourly",
		"2024-11-03 01:30 EDT hourly",
	})
	// Two bucket keys, although date and hour are equal.
	a, b := hourBucket(start.In(ny)), hourBucket(start.Add(time.Hour).In(ny))
	if a == b || a.hour != 1 || b.hour != 1 || a.day != b.day {
		t.Errorf("hour buckets %+v and %+v", a, b)
	}
}

func TestDSTDayLengths(t *testing.T) {
	// The daily scenarios rely on these day lengths: count hourly
	// snapshots per local date.
	for _, c := range []struct {
		zone, start string
		n           int
		want        []int
	}{
		{"America/New_York", "2024-03-09 00:00", 71, []int{24, 23, 24}},
		{"America/New_York", "2024-11-02 00:00", 73, []int{24, 25, 24}},
		{"Europe/Berlin", "2024-03-30 00:00", 71, []int{24, 23, 24}},
		{"Europe/Berlin", "2024-10-26 00:00", 73, []int{24, 25, 24}},
	} {
		loc := zone(t, c.zone)
		var counts []int
		last := bucket{}
		for i, tm := range every(at(t, loc, c.start), time.Hour, c.n) {
			if b := dayBucket(tm.In(loc)); i == 0 || b != last {
				counts = append(counts, 0)
				last = b
			}
			counts[len(counts)-1]++
		}
		if !slices.Equal(counts, c.want) {
			t.Errorf("%s from %s: hours per day %v, want %v", c.zone, c.start, counts, c.want)
		}
		// And Daily keeps the 23:00 snapshot of each of the three days.
		ds, err := Apply(build(plain(every(at(t, loc, c.start), time.Hour, c.n)...)), Policy{Daily: 5}, loc, time.Time{}, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		kept := keptLines(ds, loc)
		if len(kept) != 3 {
			t.Errorf("%s: kept %v", c.zone, kept)
		}
		for _, k := range kept {
			if !strings.Contains(k, " 23:00 ") {
				t.Errorf("%s: kept %s, want the 23:00 snapshot of each day", c.zone, k)
			}
		}
	}
}

func TestWithin(t *testing.T) {
	ny := zone(t, "America/New_York")
	berlin := zone(t, "Europe/Berlin")
	for _, c := range []struct {
		name       string
		loc        *time.Location
		newest     string
		within     Duration
		wantCutoff string // in loc
	}{
		{"1y from 2025-02-28", berlin, "2025-02-28 12:00", Duration{Years: 1}, "2024-02-28 12:00 CET"},
		{"1y from 2024-02-29", berlin, "2024-02-29 12:00", Duration{Years: 1}, "2023-03-01 12:00 CET"},
		{"4y from 2024-02-29", berlin, "2024-02-29 12:00", Duration{Years: 4}, "2020-02-29 12:00 CET"},
		{"1m from 2024-03-31", berlin, "2024-03-31 12:00", Duration{Months: 1}, "2024-03-02 12:00 CET"},
		{"1m from 2023-03-31", berlin, "2023-03-31 12:00", Duration{Months: 1}, "2023-03-03 12:00 CET"},
		{"1d across spring-forward", ny, "2024-03-10 12:00", Duration{Days: 1}, "2024-03-09 12:00 EST"},
		{"24h across spring-forward", ny, "2024-03-10 12:00", Duration{Hours: 24}, "2024-03-09 11:00 EST"},
		{"1d across fall-back", ny, "2024-11-03 12:00", Duration{Days: 1}, "2024-11-02 12:00 EDT"},
		{"24h across fall-back", ny, "2024-11-03 12:00", Duration{Hours: 24}, "2024-11-02 13:00 EDT"},
		{"1y2m3d4h", time.UTC, "2024-05-10 12:00", Duration{1, 2, 3, 4}, "2023-03-07 08:00 UTC"},
	} {
		t.Run(c.name, func(t *testing.T) {
			newest := at(t, c.loc, c.newest)
			cutoff := c.within.before(newest.UTC(), c.loc)
			if got := cutoff.In(c.loc).Format("2006-01-02 15:04 MST"); got != c.wantCutoff {
				t.Fatalf("cutoff %s, want %s", got, c.wantCutoff)
			}
			// A snapshot at the cutoff is kept, one a minute before is not.
			snaps := build(plain(cutoff.Add(-time.Minute), cutoff, newest))
			ds, err := Apply(snaps, Policy{Within: c.within}, c.loc, time.Time{}, 0, "")
			if err != nil {
				t.Fatal(err)
			}
			if !ds[0].Keep || !ds[1].Keep || ds[2].Keep {
				t.Errorf("keep = %v %v %v, want true true false", ds[0].Keep, ds[1].Keep, ds[2].Keep)
			}
			if want := "within " + c.within.String(); !slices.Equal(ds[1].Reasons, []string{want}) {
				t.Errorf("reasons %q, want [%q]", ds[1].Reasons, want)
			}
		})
	}
}

func TestWithinIsRelativeToNewest(t *testing.T) {
	// A host that stopped backing up two years ago keeps its last week.
	snaps := build(plain(daily(t, time.UTC, "2022-01-01", "2022-01-10", "12:00")...))
	now := time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)
	ds, err := Apply(snaps, Policy{Within: Duration{Days: 7}}, time.UTC, now, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := len(keptLines(ds, time.UTC)); got != 8 { // Jan 3 to Jan 10
		t.Errorf("kept %d snapshots, want 8", got)
	}
}

func TestMinRetention(t *testing.T) {
	now := time.Date(2024, 1, 10, 12, 0, 0, 0, time.UTC)
	snaps := build(plain(
		now.Add(-30*24*time.Hour),
		now.Add(-14*24*time.Hour),               // exactly 14 days: not younger
		now.Add(-14*24*time.Hour+time.Second),   // younger by a second
		now.Add(-24*time.Hour),                  // young
		now.Add(time.Hour),                      // in the future: young too
		now.Add(-20*24*time.Hour-3*time.Second), // old
	))
	ds, err := Apply(snaps, Policy{Yearly: 1}, time.UTC, now, 14*24*time.Hour, "14d")
	if err != nil {
		t.Fatal(err)
	}
	got := keptLines(ds, time.UTC)
	want := []string{
		"2024-01-10 13:00 UTC yearly, min-retention 14d",
		"2024-01-09 12:00 UTC min-retention 14d",
		"2023-12-27 12:00 UTC min-retention 14d",
	}
	// The 14d-minus-a-second one renders at minute precision as 12:00.
	diffLines(t, "kept", got, want)
	if n := len(ds); n != 6 {
		t.Fatalf("%d decisions", n)
	}

	// An empty text falls back to the time.Duration form.
	ds, err = Apply(snaps, Policy{Yearly: 1}, time.UTC, now, 48*time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	if r := ds[1].Reasons; !slices.Equal(r, []string{"min-retention 48h0m0s"}) {
		t.Errorf("reasons %q", r)
	}
	// Zero min-retention keeps nothing extra.
	ds, err = Apply(snaps, Policy{Yearly: 1}, time.UTC, now, 0, "0")
	if err != nil {
		t.Fatal(err)
	}
	if got := keptLines(ds, time.UTC); len(got) != 1 {
		t.Errorf("kept %v", got)
	}
}

func TestKeepsNothing(t *testing.T) {
	now := time.Date(2024, 1, 10, 12, 0, 0, 0, time.UTC)
	snaps := build([]snap{
		{t: now.Add(-48 * time.Hour), tags: []string{"daily"}},
		{t: now.Add(-time.Hour), tags: []string{"daily", "db"}},
	})
	p := Policy{Tags: []TagSet{{"important"}, {"db", "weekly"}}}
	ds, err := Apply(snaps, p, time.UTC, now, 0, "")
	if !errors.Is(err, ErrKeepsNothing) || ds != nil {
		t.Fatalf("got %v, %v; want ErrKeepsNothing and no decisions", ds, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "group would be emptied") || strings.Contains(msg, "\n") {
		t.Errorf("message %q", msg)
	}
	// Min-retention would keep the young one for now, but the policy
	// itself still empties the group: refuse.
	ds, err = Apply(snaps, p, time.UTC, now, 24*time.Hour, "1d")
	if !errors.Is(err, ErrKeepsNothing) || ds != nil {
		t.Fatalf("with min-retention: got %v, %v; want ErrKeepsNothing", ds, err)
	}
	// The same policy on a group where a tag set matches keeps just that.
	p.Tags = append(p.Tags, TagSet{"db"})
	ds, err = Apply(snaps, p, time.UTC, now, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	diffLines(t, "kept", keptLines(ds, time.UTC), []string{"2024-01-10 11:00 UTC tag db"})
	if ds[1].Keep || ds[1].Reasons != nil {
		t.Errorf("removed snapshot: %+v", ds[1])
	}
}

func TestApplyErrorsAndEdges(t *testing.T) {
	snaps := build(plain(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)))
	if _, err := Apply(snaps, Policy{}, time.UTC, time.Time{}, 0, ""); !errors.Is(err, ErrEmptyPolicy) {
		t.Errorf("empty policy: %v", err)
	}
	if _, err := Apply(snaps, Policy{Daily: -1}, time.UTC, time.Time{}, 0, ""); err == nil {
		t.Error("negative count accepted")
	}
	if ds, err := Apply(nil, Policy{Last: 1}, time.UTC, time.Time{}, 0, ""); ds != nil || err != nil {
		t.Errorf("empty group: %v, %v", ds, err)
	}
	if _, err := Apply([]*snapshot.Snapshot{nil}, Policy{Last: 1}, time.UTC, time.Time{}, 0, ""); err == nil {
		t.Error("nil snapshot accepted")
	}
	// Counts larger than the group keep everything, once each.
	many := build(plain(every(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), 36*time.Hour, 5)...))
	ds, err := Apply(many, Policy{Last: 100, Daily: 100}, time.UTC, time.Time{}, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if !slices.Equal(d.Reasons, []string{"last", "daily"}) {
			t.Errorf("%v: %q", d.Snapshot.Time, d.Reasons)
		}
	}
}

func TestApplyOrderAndTies(t *testing.T) {
	base := time.Date(2024, 1, 1, 12, 0, 0, 0, time.UTC)
	// IDs 1..4; IDs 2 and 3 share the newest time, 1 and 4 the oldest.
	snaps := build(plain(base, base.Add(time.Hour), base.Add(time.Hour), base))
	orig := slices.Clone(snaps)
	ds, err := Apply(shuffled(snaps), Policy{Last: 1, Daily: 1}, time.UTC, time.Time{}, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(snaps, orig) {
		t.Error("Apply reordered its input")
	}
	var got []string
	for _, d := range ds {
		got = append(got, fmt.Sprintf("%s %v %q", d.Snapshot.ID.Short(), d.Keep, d.Reasons))
	}
	// Newest first, equal times by ID: the smaller ID of the newest pair
	// is the one kept.
	diffLines(t, "order", got, []string{
		`00000002 true ["last" "daily"]`,
		`00000003 false []`,
		`00000001 false []`,
		`00000004 false []`,
	})
	// Time zones of the stored times do not change the order.
	snaps[2].Time = snaps[2].Time.In(zone(t, "Asia/Kolkata"))
	ds2, err := Apply(snaps, Policy{Last: 1}, time.UTC, time.Time{}, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if ds2[0].Snapshot.ID != snapID(2) || ds2[1].Snapshot.ID != snapID(3) {
		t.Errorf("order changed with a stored zone: %s %s", ds2[0].Snapshot.ID.Short(), ds2[1].Snapshot.ID.Short())
	}
}

// referenceKeep is a second, independent statement of the bucket rules: for
// each rule, group the snapshots by a formatted bucket name, order the
// buckets by their newest snapshot, and keep the newest snapshot of each of
// the n most recent buckets.
func referenceKeep(sorted []*snapshot.Snapshot, p Policy, loc *time.Location) [][]string {
	reasons := make([][]string, len(sorted))
	for i := range sorted {
		if i < p.Last {
			reasons[i] = append(reasons[i], "last")
		}
	}
	names := []struct {
		name string
		n    int
		key  func(t time.Time) string
	}{
		{"hourly", p.Hourly, func(t time.Time) string { return t.Format("2006-01-02 15 -0700") }},
		{"daily", p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"weekly", p.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprint(y, "-", w) }},
		{"monthly", p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
		{"yearly", p.Yearly, func(t time.Time) string { return t.Format("2006") }},
	}
	for _, r := range names {
		if r.n == 0 {
			continue
		}
		newestOf := map[string]int{} // bucket -> index of its newest snapshot
		var order []string
		for i, sn := range sorted {
			k := r.key(sn.Time.In(loc))
			if _, ok := newestOf[k]; !ok {
				newestOf[k] = i
				order = append(order, k)
			}
		}
		sort.SliceStable(order, func(a, b int) bool { return newestOf[order[a]] < newestOf[order[b]] })
		for _, k := range order[:min(r.n, len(order))] {
			reasons[newestOf[k]] = append(reasons[newestOf[k]], r.name)
		}
	}
	return reasons
}

func TestBucketRulesAgainstReference(t *testing.T) {
	zones := []*time.Location{time.UTC, zone(t, "America/New_York"), zone(t, "Europe/Berlin"), zone(t, "Australia/Lord_Howe")}
	rng := rand.New(rand.NewPCG(7, 11))
	// Start points near DST changes and year ends.
	starts := []time.Time{
		time.Date(2024, 3, 9, 0, 0, 0, 0, time.UTC),
		time.Date(2024, 10, 26, 0, 0, 0, 0, time.UTC),
		time.Date(2024, 11, 2, 0, 0, 0, 0, time.UTC),
		time.Date(2020, 12, 20, 0, 0, 0, 0, time.UTC),
		time.Date(2024, 4, 5, 0, 0, 0, 0, time.UTC),
	}
	for iter := range 400 {
		loc := zones[rng.IntN(len(zones))]
		start := starts[rng.IntN(len(starts))]
		// Steps from a minute to a few weeks, sometimes repeating a time.
		maxStep := []time.Duration{20 * time.Minute, 3 * time.Hour, 2 * 24 * time.Hour, 20 * 24 * time.Hour}[rng.IntN(4)]
		n := 1 + rng.IntN(60)
		var specs []snap
		tm := start
		for range n {
			specs = append(specs, snap{t: tm})
			if rng.IntN(10) > 0 {
				tm = tm.Add(time.Duration(1 + rng.Int64N(int64(maxStep))))
			}
		}
		p := Policy{
			Last: rng.IntN(3), Hourly: rng.IntN(6), Daily: rng.IntN(6),
			Weekly: rng.IntN(4), Monthly: rng.IntN(4), Yearly: rng.IntN(3),
		}
		if p.IsEmpty() {
			p.Daily = 1
		}
		snaps := build(specs)
		ds, err := Apply(shuffled(snaps), p, loc, time.Time{}, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		sorted := slices.Clone(snaps)
		SortNewestFirst(sorted)
		want := referenceKeep(sorted, p, loc)
		for i, d := range ds {
			if d.Snapshot != sorted[i] {
				t.Fatalf("iter %d: decision %d is for the wrong snapshot", iter, i)
			}
			if !slices.Equal(d.Reasons, want[i]) || d.Keep != (len(want[i]) > 0) {
				t.Fatalf("iter %d (%s, %s): snapshot %s: reasons %q, reference %q",
					iter, loc, p, d.Snapshot.Time.In(loc).Format(time.RFC3339), d.Reasons, want[i])
			}
		}
	}
}
