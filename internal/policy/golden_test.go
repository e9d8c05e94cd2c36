package policy

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// scenario is one series of snapshots, a policy, and the kept set expected,
// written out by hand. The full output is also compared with
// testdata/<name>.golden.
type scenario struct {
	name   string
	zone   string
	snaps  func(t testing.TB, loc *time.Location) []snap
	policy Policy
	// now ("2006-01-02 15:04" in zone), minRet and minRetText are passed
	// to Apply; now is unused when minRet is zero.
	now        string
	minRet     time.Duration
	minRetText string
	// want lists the kept snapshots, newest first, as
	// "2006-01-02 15:04 MST reason, reason".
	want []string
}

var scenarios = []scenario{
	{
		// 2020-12-28 (Monday) to 2021-01-03 (Sunday) is 2020-W53;
		// 2021-01-04 starts 2021-W01. Month and year follow the calendar.
		name: "isoweek-2020-w53",
		zone: "Europe/Berlin",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(daily(t, loc, "2020-12-28", "2021-01-10", "12:00")...)
		},
		policy: Policy{Weekly: 3, Monthly: 2, Yearly: 3},
		want: []string{
			"2021-01-10 12:00 CET weekly, monthly, yearly",
			"2021-01-03 12:00 CET weekly",
			"2020-12-31 12:00 CET monthly, yearly",
		},
	},
	{
		// 2024-12-30 (Monday) starts 2025-W01, yet is in year 2024;
		// 2024-12-29 (Sunday) ends 2024-W52; 2025-01-06 starts 2025-W02.
		name: "isoweek-2025-w01",
		zone: "America/New_York",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(daily(t, loc, "2024-12-23", "2025-01-06", "12:00")...)
		},
		policy: Policy{Weekly: 3, Yearly: 2},
		want: []string{
			"2025-01-06 12:00 EST weekly, yearly",
			"2025-01-05 12:00 EST weekly",
			"2024-12-31 12:00 EST yearly",
			"2024-12-29 12:00 EST weekly",
		},
	},
	{
		// 23:30 EST on Dec 31 is already Jan 1 in UTC: buckets must use
		// the local calendar.
		name: "year-boundary",
		zone: "America/New_York",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(
				at(t, loc, "2022-06-15 10:00"),
				at(t, loc, "2022-12-31 23:30"),
				at(t, loc, "2023-01-01 00:30"),
				at(t, loc, "2023-06-15 10:00"),
				at(t, loc, "2023-12-31 23:30"),
				at(t, loc, "2024-01-01 00:15"),
				at(t, loc, "2024-01-15 10:00"),
				at(t, loc, "2024-02-01 09:00"),
			)
		},
		policy: Policy{Monthly: 4, Yearly: 3},
		want: []string{
			"2024-02-01 09:00 EST monthly, yearly",
			"2024-01-15 10:00 EST monthly",
			"2023-12-31 23:30 EST monthly, yearly",
			"2023-06-15 10:00 EDT monthly",
			"2022-12-31 23:30 EST yearly",
		},
	},
	{
		// 2024-03-10 02:00 EST jumps to 03:00 EDT: there is no 02 hour,
		// so the 4 newest hours with snapshots are 05, 04, 03 and 01.
		name: "dst-newyork-spring-hourly",
		zone: "America/New_York",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(every(at(t, loc, "2024-03-10 00:00"), 30*time.Minute, 10)...)
		},
		policy: Policy{Hourly: 4},
		want: []string{
			"2024-03-10 05:30 EDT hourly",
			"2024-03-10 04:30 EDT hourly",
			"2024-03-10 03:30 EDT hourly",
			"2024-03-10 01:30 EST hourly",
		},
	},
	{
		// 2024-11-03 02:00 EDT falls back to 01:00 EST: 01:xx happens
		// twice and is two hourly buckets.
		name: "dst-newyork-fall-hourly",
		zone: "America/New_York",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(every(at(t, loc, "2024-11-03 00:00"), 30*time.Minute, 10)...)
		},
		policy: Policy{Hourly: 4},
		want: []string{
			"2024-11-03 03:30 EST hourly",
			"2024-11-03 02:30 EST hourly",
			"2024-11-03 01:30 EST hourly",
			"2024-11-03 01:30 EDT hourly",
		},
	},
	{
		// Hourly snapshots over 24 + 23 + 24 hours: one daily bucket per
		// local date, the 23-hour 2024-03-10 included.
		name: "dst-newyork-spring-daily",
		zone: "America/New_York",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(every(at(t, loc, "2024-03-09 00:00"), time.Hour, 24+23+24)...)
		},
		policy: Policy{Daily: 3},
		want: []string{
			"2024-03-11 23:00 EDT daily",
			"2024-03-10 23:00 EDT daily",
			"2024-03-09 23:00 EST daily",
		},
	},
	{
		// Hourly snapshots over 24 + 25 + 24 hours: the 25-hour
		// 2024-11-03 is one day.
		name: "dst-newyork-fall-daily",
		zone: "America/New_York",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(every(at(t, loc, "2024-11-02 00:00"), time.Hour, 24+25+24)...)
		},
		policy: Policy{Daily: 3},
		want: []string{
			"2024-11-04 23:00 EST daily",
			"2024-11-03 23:00 EST daily",
			"2024-11-02 23:00 EDT daily",
		},
	},
	{
		// 2024-03-31 02:00 CET jumps to 03:00 CEST.
		name: "dst-berlin-spring-hourly",
		zone: "Europe/Berlin",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(every(at(t, loc, "2024-03-31 00:00"), 30*time.Minute, 8)...)
		},
		policy: Policy{Hourly: 3},
		want: []string{
			"2024-03-31 04:30 CEST hourly",
			"2024-03-31 03:30 CEST hourly",
			"2024-03-31 01:30 CET hourly",
		},
	},
	{
		// 2024-10-27 03:00 CEST falls back to 02:00 CET: 02:xx twice.
		name: "dst-berlin-fall-hourly",
		zone: "Europe/Berlin",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(every(at(t, loc, "2024-10-27 01:00"), 30*time.Minute, 8)...)
		},
		policy: Policy{Hourly: 4},
		want: []string{
			"2024-10-27 03:30 CET hourly",
			"2024-10-27 02:30 CET hourly",
			"2024-10-27 02:30 CEST hourly",
			"2024-10-27 01:30 CEST hourly",
		},
	},
	{
		// Every 3 real hours: the 23-hour day shifts the wall clock by one
		// hour, and still holds 8 snapshots in one daily bucket.
		name: "dst-berlin-spring-daily",
		zone: "Europe/Berlin",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(every(at(t, loc, "2024-03-30 00:00"), 3*time.Hour, 24)...)
		},
		policy: Policy{Daily: 3},
		want: []string{
			"2024-04-01 22:00 CEST daily",
			"2024-03-31 22:00 CEST daily",
			"2024-03-30 21:00 CET daily",
		},
	},
	{
		// Every 3 real hours: the 25-hour day holds 9 snapshots.
		name: "dst-berlin-fall-daily",
		zone: "Europe/Berlin",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(every(at(t, loc, "2024-10-26 00:00"), 3*time.Hour, 25)...)
		},
		policy: Policy{Daily: 3},
		want: []string{
			"2024-10-28 23:00 CET daily",
			"2024-10-27 23:00 CET daily",
			"2024-10-26 21:00 CEST daily",
		},
	},
	{
		// 00:30 in Berlin is the previous day in UTC: Feb 29 must be its
		// own local day, and the last of February.
		name: "leapday-daily",
		zone: "Europe/Berlin",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(daily(t, loc, "2024-02-26", "2024-03-03", "00:30")...)
		},
		policy: Policy{Daily: 4, Monthly: 2},
		want: []string{
			"2024-03-03 00:30 CET daily, monthly",
			"2024-03-02 00:30 CET daily",
			"2024-03-01 00:30 CET daily",
			"2024-02-29 00:30 CET daily, monthly",
		},
	},
	{
		name: "leapday-monthly",
		zone: "America/New_York",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(
				at(t, loc, "2024-01-31 12:00"),
				at(t, loc, "2024-02-28 12:00"),
				at(t, loc, "2024-02-29 12:00"),
				at(t, loc, "2024-03-01 00:30"),
				at(t, loc, "2024-03-31 12:00"),
				at(t, loc, "2024-04-01 12:00"),
			)
		},
		policy: Policy{Monthly: 3},
		want: []string{
			"2024-04-01 12:00 EDT monthly",
			"2024-03-31 12:00 EDT monthly",
			"2024-02-29 12:00 EST monthly",
		},
	},
	{
		// 1y before 2025-02-28 12:00 is 2024-02-28 12:00 (kept: the
		// cutoff is inclusive).
		name: "within-1y-from-2025-02-28",
		zone: "Europe/Berlin",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(
				at(t, loc, "2024-02-27 12:00"),
				at(t, loc, "2024-02-28 11:59"),
				at(t, loc, "2024-02-28 12:00"),
				at(t, loc, "2024-02-29 12:00"),
				at(t, loc, "2024-06-01 12:00"),
				at(t, loc, "2025-02-28 12:00"),
			)
		},
		policy: Policy{Within: Duration{Years: 1}},
		want: []string{
			"2025-02-28 12:00 CET within 1y",
			"2024-06-01 12:00 CEST within 1y",
			"2024-02-29 12:00 CET within 1y",
			"2024-02-28 12:00 CET within 1y",
		},
	},
	{
		// 1y before 2024-02-29 is "2023-02-29", which AddDate normalises
		// to 2023-03-01: Feb 28 is out.
		name: "within-1y-from-2024-02-29",
		zone: "Europe/Berlin",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(
				at(t, loc, "2023-02-28 12:00"),
				at(t, loc, "2023-03-01 11:59"),
				at(t, loc, "2023-03-01 12:00"),
				at(t, loc, "2024-02-29 12:00"),
			)
		},
		policy: Policy{Within: Duration{Years: 1}},
		want: []string{
			"2024-02-29 12:00 CET within 1y",
			"2023-03-01 12:00 CET within 1y",
		},
	},
	{
		// 1m before 2024-03-31 12:00 (CEST) is "2024-02-31", normalised
		// to 2024-03-02 12:00 (CET): wall clock, not 24-hour days.
		name: "within-1m-from-2024-03-31",
		zone: "Europe/Berlin",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(
				at(t, loc, "2024-02-29 12:00"),
				at(t, loc, "2024-03-01 12:00"),
				at(t, loc, "2024-03-02 11:59"),
				at(t, loc, "2024-03-02 12:00"),
				at(t, loc, "2024-03-15 12:00"),
				at(t, loc, "2024-03-31 12:00"),
			)
		},
		policy: Policy{Within: Duration{Months: 1}},
		want: []string{
			"2024-03-31 12:00 CEST within 1m",
			"2024-03-15 12:00 CET within 1m",
			"2024-03-02 12:00 CET within 1m",
		},
	},
	{
		// Last 2 keeps Jan 10 and 9; min-retention 72h at now = Jan 10
		// 12:00 also keeps Jan 8 (48h) and Jan 7 12:01 (71h59m) but not
		// Jan 7 12:00 (exactly 72h).
		name: "min-retention",
		zone: "UTC",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(append(daily(t, loc, "2024-01-01", "2024-01-10", "12:00"), at(t, loc, "2024-01-07 12:01"))...)
		},
		policy:     Policy{Last: 2},
		now:        "2024-01-10 12:00",
		minRet:     72 * time.Hour,
		minRetText: "3d",
		want: []string{
			"2024-01-10 12:00 UTC last, min-retention 3d",
			"2024-01-09 12:00 UTC last, min-retention 3d",
			"2024-01-08 12:00 UTC min-retention 3d",
			"2024-01-07 12:01 UTC min-retention 3d",
		},
	},
	{
		// Daily dumps, 2024-01-01 to 2024-02-29 (60 days), rotated with
		// 7 dailies and 4 weeklies: Feb 23-29, and the Sundays ending
		// 2024-W08 (Feb 25, also a daily), W07 (Feb 18) and W06 (Feb 11);
		// Feb 29 is the newest of W09.
		name: "rolling-daily-7-weekly-4",
		zone: "Europe/Berlin",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(daily(t, loc, "2024-01-01", "2024-02-29", "03:00")...)
		},
		policy: Policy{Daily: 7, Weekly: 4},
		want: []string{
			"2024-02-29 03:00 CET daily, weekly",
			"2024-02-28 03:00 CET daily",
			"2024-02-27 03:00 CET daily",
			"2024-02-26 03:00 CET daily",
			"2024-02-25 03:00 CET daily, weekly",
			"2024-02-24 03:00 CET daily",
			"2024-02-23 03:00 CET daily",
			"2024-02-18 03:00 CET weekly",
			"2024-02-11 03:00 CET weekly",
		},
	},
	{
		// Every kind of rule at once. Within 2d of May 10 18:00 is
		// May 8 18:00.
		name: "mixed",
		zone: "UTC",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return []snap{
				{t: at(t, loc, "2024-03-01 12:00")},
				{t: at(t, loc, "2024-03-31 12:00"), tags: []string{"db", "weekly", "important"}},
				{t: at(t, loc, "2024-04-02 12:00")},
				{t: at(t, loc, "2024-04-20 12:00"), tags: []string{"important"}},
				{t: at(t, loc, "2024-05-07 18:00")},
				{t: at(t, loc, "2024-05-08 06:00"), tags: []string{"weekly", "db"}},
				{t: at(t, loc, "2024-05-09 18:00"), tags: []string{"db"}},
				{t: at(t, loc, "2024-05-10 06:00")},
				{t: at(t, loc, "2024-05-10 18:00")},
			}
		},
		policy: Policy{Last: 2, Daily: 3, Monthly: 2, Within: Duration{Days: 2}, Tags: []TagSet{{"important"}, {"db", "weekly"}}},
		want: []string{
			"2024-05-10 18:00 UTC last, daily, monthly, within 2d",
			"2024-05-10 06:00 UTC last, within 2d",
			"2024-05-09 18:00 UTC daily, within 2d",
			"2024-05-08 06:00 UTC daily, tag db,weekly",
			"2024-04-20 12:00 UTC monthly, tag important",
			"2024-03-31 12:00 UTC tag important, tag db,weekly",
		},
	},
	{
		// Within 1d across the spring-forward night is 23 real hours:
		// 12:00 EST the day before is in, 11:59 is out.
		name: "within-1d-dst",
		zone: "America/New_York",
		snaps: func(t testing.TB, loc *time.Location) []snap {
			return plain(
				at(t, loc, "2024-03-09 11:00"),
				at(t, loc, "2024-03-09 11:59"),
				at(t, loc, "2024-03-09 12:00"),
				at(t, loc, "2024-03-10 12:00"),
			)
		},
		policy: Policy{Within: Duration{Days: 1}},
		want: []string{
			"2024-03-10 12:00 EDT within 1d",
			"2024-03-09 12:00 EST within 1d",
		},
	},
}

// run applies the scenario's policy to its snapshots, given in a shuffled
// order.
func (sc scenario) run(t *testing.T) ([]Decision, *time.Location) {
	t.Helper()
	loc := zone(t, sc.zone)
	var now time.Time
	if sc.now != "" {
		now = at(t, loc, sc.now)
	}
	ds, err := Apply(shuffled(build(sc.snaps(t, loc))), sc.policy, loc, now, sc.minRet, sc.minRetText)
	if err != nil {
		t.Fatal(err)
	}
	return ds, loc
}

// TestScenarios checks every scenario's kept set against the hand-written
// list.
func TestScenarios(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			ds, loc := sc.run(t)
			diffLines(t, "kept", keptLines(ds, loc), sc.want)
		})
	}
}

// render writes a scenario's decisions, one line per snapshot: local time
// with zone abbreviation, offset and weekday, ISO week, short ID, tags,
// keep/remove and reasons.
func render(sc scenario, ds []Decision, loc *time.Location) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# zone: %s\n# policy: %s\n", sc.zone, sc.policy)
	if sc.minRet > 0 {
		now, _ := time.ParseInLocation("2006-01-02 15:04", sc.now, loc) // checked by run
		fmt.Fprintf(&b, "# now: %s, min-retention: %s (%q)\n", now.Format("2006-01-02 15:04 MST"), sc.minRet, sc.minRetText)
	}
	kept := 0
	tagWidth := 0
	for _, d := range ds {
		if d.Keep {
			kept++
		}
		tagWidth = max(tagWidth, len(TagSet(d.Snapshot.Tags).String()))
	}
	fmt.Fprintf(&b, "# %d snapshots, %d kept\n", len(ds), kept)
	for _, d := range ds {
		lt := d.Snapshot.Time.In(loc)
		y, w := lt.ISOWeek()
		verdict := "remove"
		if d.Keep {
			verdict = "keep"
		}
		line := fmt.Sprintf("%s  %d-W%02d  %s  ", lt.Format("2006-01-02 15:04 MST -0700 Mon"), y, w, d.Snapshot.ID.Short())
		if tagWidth > 0 {
			line += fmt.Sprintf("%-*s  ", tagWidth, TagSet(d.Snapshot.Tags).String())
		}
		line += fmt.Sprintf("%-6s  %s", verdict, strings.Join(d.Reasons, ", "))
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	return b.String()
}

// TestGolden compares the full rendered output of each scenario with
// testdata/<name>.golden; run with -update to rewrite the files (then read
// them: they must be right, not only stable).
func TestGolden(t *testing.T) {
	seen := map[string]bool{}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			ds, loc := sc.run(t)
			got := render(sc, ds, loc)
			path := filepath.Join("testdata", sc.name+".golden")
			seen[sc.name+".golden"] = true
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("%s differs from the output (run with -update to rewrite it):\n--- got\n%s--- want\n%s", path, got, want)
			}
		})
	}
	// No stale golden files.
	files, err := filepath.Glob(filepath.Join("testdata", "*.golden"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !seen[filepath.Base(f)] && !*update {
			t.Errorf("%s belongs to no scenario", f)
		}
	}
}
