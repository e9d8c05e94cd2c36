package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"bunker/internal/snapshot"
)

func TestParseGroupBy(t *testing.T) {
	for _, c := range []struct {
		in   string
		want GroupBy
		err  string
	}{
		{in: "", want: GroupBy{}},
		{in: "host", want: GroupBy{Host: true}},
		{in: "paths", want: GroupBy{Paths: true}},
		{in: "tags", want: GroupBy{Tags: true}},
		{in: "host,paths", want: GroupBy{Host: true, Paths: true}},
		{in: "tags,host", want: GroupBy{Host: true, Tags: true}},
		{in: "host, paths ,tags", want: GroupBy{true, true, true}},
		{in: "host,host", want: GroupBy{Host: true}},
		{in: "hosts", err: `unknown key "hosts" (allowed: host, paths, tags)`},
		{in: "host,path", err: `unknown key "path"`},
		{in: "Host", err: `unknown key "Host"`},
		{in: "host,", err: `unknown key ""`},
		{in: ",", err: `unknown key ""`},
	} {
		got, err := ParseGroupBy(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), fmt.Sprintf("%q", c.in)) {
				t.Errorf("ParseGroupBy(%q) = %+v, %v; want error with %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseGroupBy(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		// String round-trips.
		if back, err := ParseGroupBy(got.String()); err != nil || back != got {
			t.Errorf("ParseGroupBy(%q.String() = %q) = %+v, %v", c.in, got.String(), back, err)
		}
	}
}

func mkSnap(id int, host string, paths, tags []string) *snapshot.Snapshot {
	return &snapshot.Snapshot{
		Time:     time.Date(2024, 1, 1, 0, 0, id, 0, time.UTC),
		Hostname: host,
		Paths:    paths,
		Tags:     tags,
		ID:       snapID(id),
	}
}

func TestGroupSnapshots(t *testing.T) {
	snaps := []*snapshot.Snapshot{
		mkSnap(1, "b", []string{"/y", "/x"}, []string{"t"}),
		mkSnap(2, "a", []string{"/x", "/y"}, []string{"u", "t"}),
		mkSnap(3, "b", []string{"/x", "/y", "/x"}, []string{"t", "t"}),
		mkSnap(4, "a", []string{"/z"}, nil),
		nil,
		mkSnap(5, "", nil, nil),
		mkSnap(6, "b", []string{"/x y"}, []string{"t"}),
		mkSnap(7, "b", []string{"/x", "y"}, []string{"t"}),
	}
	// render lists the groups as "key: ids".
	render := func(groups []Group) []string {
		var out []string
		for _, g := range groups {
			var ids []string
			for _, sn := range g.Snapshots {
				ids = append(ids, strings.TrimLeft(sn.ID.Short(), "0"))
			}
			out = append(out, g.Key.String()+": "+strings.Join(ids, " "))
		}
		return out
	}
	for _, c := range []struct {
		by   string
		want []string
	}{
		{"", []string{": 1 2 3 4 5 6 7"}},
		{"host", []string{"host=: 5", "host=a: 2 4", "host=b: 1 3 6 7"}},
		{"paths", []string{
			"paths=[/x /y]: 1 2 3",
			// "/x y" and "/x","y" print alike but are different sets.
			"paths=[/x y]: 6",
			"paths=[/x y]: 7",
			"paths=[/z]: 4",
			"paths=[]: 5",
		}},
		{"tags", []string{"tags=[]: 4 5", "tags=[t u]: 2", "tags=[t]: 1 3 6 7"}},
		{"host,paths,tags", []string{
			"host= paths=[] tags=[]: 5",
			"host=a paths=[/x /y] tags=[t u]: 2",
			"host=a paths=[/z] tags=[]: 4",
			"host=b paths=[/x /y] tags=[t]: 1 3",
			"host=b paths=[/x y] tags=[t]: 6",
			"host=b paths=[/x y] tags=[t]: 7",
		}},
	} {
		by, err := ParseGroupBy(c.by)
		if err != nil {
			t.Fatal(err)
		}
		groups := GroupSnapshots(snaps, by)
		diffLines(t, "group by "+c.by, render(groups), c.want)
		for _, g := range groups {
			if g.Key.By != by {
				t.Errorf("key %q has By %+v", g.Key, g.Key.By)
			}
		}
	}
	// The key holds sorted, de-duplicated sets, and only grouped fields.
	g := GroupSnapshots(snaps[:1], GroupBy{Paths: true})
	if k := g[0].Key; k.Host != "" || k.Tags != nil || strings.Join(k.Paths, ",") != "/x,/y" {
		t.Errorf("key %+v", k)
	}
	g = GroupSnapshots(snaps[2:3], GroupBy{Paths: true, Tags: true})
	if k := g[0].Key; strings.Join(k.Paths, ",") != "/x,/y" || strings.Join(k.Tags, ",") != "t" {
		t.Errorf("key %+v", k)
	}
	// Grouping does not touch the snapshots.
	if strings.Join(snaps[0].Paths, ",") != "/y,/x" {
		t.Errorf("snapshot paths changed: %q", snaps[0].Paths)
	}
	if g := GroupSnapshots(nil, GroupBy{Host: true}); g != nil {
		t.Errorf("no snapshots: %v", g)
	}
}

func TestFilterMatch(t *testing.T) {
	sn := mkSnap(1, "box", []string{"/home", "/etc"}, []string{"daily", "db"})
	for _, c := range []struct {
		name string
		f    Filter
		want bool
	}{
		{"empty", Filter{}, true},
		{"host", Filter{Hosts: []string{"box"}}, true},
		{"host any", Filter{Hosts: []string{"other", "box"}}, true},
		{"host no", Filter{Hosts: []string{"other"}}, false},
		{"host exact", Filter{Hosts: []string{"Box"}}, false},
		{"tag", Filter{Tags: []TagSet{{"db"}}}, true},
		{"tag set all", Filter{Tags: []TagSet{{"db", "daily"}}}, true},
		{"tag set missing one", Filter{Tags: []TagSet{{"db", "weekly"}}}, false},
		{"tag any set", Filter{Tags: []TagSet{{"weekly"}, {"daily"}}}, true},
		{"tag no set", Filter{Tags: []TagSet{{"weekly"}, {"monthly"}}}, false},
		{"path", Filter{Paths: []string{"/etc"}}, true},
		{"paths all", Filter{Paths: []string{"/etc", "/home"}}, true},
		{"paths missing one", Filter{Paths: []string{"/etc", "/var"}}, false},
		{"path exact", Filter{Paths: []string{"/etc/"}}, false},
		{"all fields", Filter{Hosts: []string{"box"}, Tags: []TagSet{{"db"}}, Paths: []string{"/home"}}, true},
		{"all fields, host wrong", Filter{Hosts: []string{"x"}, Tags: []TagSet{{"db"}}, Paths: []string{"/home"}}, false},
		{"all fields, path wrong", Filter{Hosts: []string{"box"}, Tags: []TagSet{{"db"}}, Paths: []string{"/x"}}, false},
	} {
		if got := c.f.Match(sn); got != c.want {
			t.Errorf("%s: Match = %v, want %v", c.name, got, c.want)
		}
	}
	untagged := mkSnap(2, "box", nil, nil)
	if (Filter{Tags: []TagSet{{"db"}}}).Match(untagged) || (Filter{Paths: []string{"/"}}).Match(untagged) {
		t.Error("untagged snapshot without paths matched a tag or path filter")
	}
	if !(Filter{}).Match(untagged) || (Filter{}).Match(nil) {
		t.Error("empty filter: wrong result")
	}
}
