package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"bunker/internal/snapshot"
)

// GroupBy says which snapshot fields split snapshots into groups. The zero
// value puts all snapshots in one group.
type GroupBy struct{ Host, Paths, Tags bool }

// ParseGroupBy parses a comma-separated list of the keys host, paths and tags
// (spaces around keys are ignored). The empty string means no grouping.
func ParseGroupBy(s string) (GroupBy, error) {
	var g GroupBy
	if s == "" {
		return g, nil
	}
	for _, k := range strings.Split(s, ",") {
		switch strings.TrimSpace(k) {
		case "host":
			g.Host = true
		case "paths":
			g.Paths = true
		case "tags":
			g.Tags = true
		default:
			return GroupBy{}, fmt.Errorf("invalid group-by %q: unknown key %q (allowed: host, paths, tags)", s, strings.TrimSpace(k))
		}
	}
	return g, nil
}

// String returns the keys as ParseGroupBy reads them, "" for no grouping.
func (g GroupBy) String() string {
	var keys []string
	if g.Host {
		keys = append(keys, "host")
	}
	if g.Paths {
		keys = append(keys, "paths")
	}
	if g.Tags {
		keys = append(keys, "tags")
	}
	return strings.Join(keys, ",")
}

// GroupKey is what the snapshots of a group share. Only the fields named by
// By are set; Paths and Tags are sorted, without duplicates.
type GroupKey struct {
	Host  string
	Paths []string
	Tags  []string
	By    GroupBy // the fields the key was built from
}

// String returns the grouped fields only, such as
// "host=a paths=[/x /y] tags=[t]"; it is "" when nothing is grouped.
func (k GroupKey) String() string {
	var parts []string
	if k.By.Host {
		parts = append(parts, "host="+k.Host)
	}
	if k.By.Paths {
		parts = append(parts, "paths=["+strings.Join(k.Paths, " ")+"]")
	}
	if k.By.Tags {
		parts = append(parts, "tags=["+strings.Join(k.Tags, " ")+"]")
	}
	return strings.Join(parts, " ")
}

// id returns an unambiguous encoding of the key (String is not: a path may
// contain a space).
func (k GroupKey) id() string {
	var b strings.Builder
	b.WriteString(strconv.Quote(k.Host))
	for _, list := range [][]string{k.Paths, k.Tags} {
		b.WriteByte('|')
		for _, s := range list {
			b.WriteString(strconv.Quote(s))
		}
	}
	return b.String()
}

// Group is a set of snapshots that share a key.
type Group struct {
	Key       GroupKey
	Snapshots []*snapshot.Snapshot // in the order they were given
}

// sortedSet returns a sorted copy of s without duplicates, never nil.
func sortedSet(s []string) []string {
	out := slices.Clone(s)
	if out == nil {
		out = []string{}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// GroupSnapshots splits snaps into groups by the fields in by: the hostname
// (compared exactly), the set of paths and the set of tags. Groups are sorted
// by the string form of their key (ties, which String can produce for unusual
// names, broken by an exact encoding); each keeps the input order of its
// snapshots. Nil snapshots are skipped; no snapshots give no groups.
func GroupSnapshots(snaps []*snapshot.Snapshot, by GroupBy) []Group {
	var groups []Group
	index := map[string]int{}
	for _, sn := range snaps {
		if sn == nil {
			continue
		}
		key := GroupKey{By: by}
		if by.Host {
			key.Host = sn.Hostname
		}
		if by.Paths {
			key.Paths = sortedSet(sn.Paths)
		}
		if by.Tags {
			key.Tags = sortedSet(sn.Tags)
		}
		id := key.id()
		i, ok := index[id]
		if !ok {
			i = len(groups)
			index[id] = i
			groups = append(groups, Group{Key: key})
		}
		groups[i].Snapshots = append(groups[i].Snapshots, sn)
	}
	slices.SortFunc(groups, func(a, b Group) int {
		return cmp.Or(strings.Compare(a.Key.String(), b.Key.String()), strings.Compare(a.Key.id(), b.Key.id()))
	})
	return groups
}

// Filter selects snapshots, as the --host, --tag and --path options do. A
// snapshot matches when it passes every non-empty field; the zero Filter
// matches all snapshots. Strings are compared exactly.
type Filter struct {
	Hosts []string // the snapshot's hostname is one of these
	Tags  []TagSet // the snapshot has all tags of at least one set
	Paths []string // the snapshot's paths include every one of these
}

// Match reports whether sn passes the filter. A nil snapshot never matches.
func (f Filter) Match(sn *snapshot.Snapshot) bool {
	if sn == nil {
		return false
	}
	if len(f.Hosts) > 0 && !slices.Contains(f.Hosts, sn.Hostname) {
		return false
	}
	if len(f.Tags) > 0 && !slices.ContainsFunc(f.Tags, func(ts TagSet) bool { return ts.Match(sn.Tags) }) {
		return false
	}
	for _, p := range f.Paths {
		if !slices.Contains(sn.Paths, p) {
			return false
		}
	}
	return true
}
