package policy

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // zones load the same on every machine

	"bunker/internal/repo"
	"bunker/internal/snapshot"
)

// zone loads a time zone or fails the test.
func zone(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("load zone %s: %v", name, err)
	}
	return loc
}

// snapID returns a distinct ID for i; its Short form is i in hex, zero-padded
// to 8 digits, and IDs sort in the order of i.
func snapID(i int) repo.ID {
	var id repo.ID
	id[0], id[1], id[2], id[3] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
	id[31] = 0x5a // never the null ID
	return id
}

// snap is one snapshot to build: a time and its tags.
type snap struct {
	t    time.Time
	tags []string
}

// build makes snapshots numbered from 1 in the given order, with their times
// stored in UTC so that Apply must convert them to its zone itself.
func build(specs []snap) []*snapshot.Snapshot {
	out := make([]*snapshot.Snapshot, len(specs))
	for i, s := range specs {
		out[i] = &snapshot.Snapshot{
			Time:     s.t.UTC(),
			Hostname: "host",
			Paths:    []string{"/data"},
			Tags:     s.tags,
			ID:       snapID(i + 1),
		}
	}
	return out
}

// at parses "2006-01-02 15:04" as a wall-clock time in loc. It fails for a
// wall-clock time that does not exist there (in a spring-forward gap); use
// absolute steps (every) for the repeated hour of a fall-back.
func at(t testing.TB, loc *time.Location, s string) time.Time {
	t.Helper()
	const layout = "2006-01-02 15:04"
	tm, err := time.ParseInLocation(layout, s, loc)
	if err != nil {
		t.Fatal(err)
	}
	if got := tm.Format(layout); got != s {
		t.Fatalf("%s does not exist in %s (normalised to %s)", s, loc, got)
	}
	return tm
}

// plain returns untagged snapshot specs at the given times.
func plain(times ...time.Time) []snap {
	out := make([]snap, len(times))
	for i, tm := range times {
		out[i] = snap{t: tm}
	}
	return out
}

// every returns n instants, step apart in real time, from start.
func every(start time.Time, step time.Duration, n int) []time.Time {
	out := make([]time.Time, n)
	for i := range out {
		out[i] = start.Add(time.Duration(i) * step)
	}
	return out
}

// daily returns one instant per calendar day from first to last (dates
// "2006-01-02", inclusive), each at wall-clock time hhmm ("15:04") in loc.
func daily(t testing.TB, loc *time.Location, first, last, hhmm string) []time.Time {
	t.Helper()
	start := at(t, loc, first+" "+hhmm)
	end := at(t, loc, last+" "+hhmm)
	var out []time.Time
	for d := start; !d.After(end); d = d.AddDate(0, 0, 1) {
		out = append(out, d)
	}
	return out
}

// shuffled returns a copy of snaps in a fixed pseudo-random order.
func shuffled(snaps []*snapshot.Snapshot) []*snapshot.Snapshot {
	out := append([]*snapshot.Snapshot(nil), snaps...)
	r := rand.New(rand.NewPCG(1, 2))
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// keptLines renders the kept decisions as "2006-01-02 15:04 MST reasons".
func keptLines(ds []Decision, loc *time.Location) []string {
	var out []string
	for _, d := range ds {
		if d.Keep {
			out = append(out, d.Snapshot.Time.In(loc).Format("2006-01-02 15:04 MST")+" "+strings.Join(d.Reasons, ", "))
		}
	}
	return out
}

// diffLines fails t with a readable listing when got and want differ.
func diffLines(t testing.TB, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") == strings.Join(want, "\n") {
		return
	}
	t.Errorf("%s:\n got:\n\t%s\nwant:\n\t%s", what, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
}
