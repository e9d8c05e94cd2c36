package snapshot

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"bunker/internal/repo"
)

func fullSnapshot() *Snapshot {
	parent := rid(7)
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 6, time.FixedZone("X", 3600))
	return &Snapshot{
		Time: t0, Tree: rid(1), Paths: []string{"/home", "/etc"}, Hostname: "host", Username: "me",
		UID: 1000, GID: 100, Tags: []string{"a", "b"}, Parent: &parent, Excludes: []string{"*.tmp"},
		ProgramVersion: "bunker 1.0",
		Summary: &Summary{Start: t0, End: t0.Add(time.Minute), FilesNew: 1, FilesChanged: 2, FilesUnchanged: 3,
			DirsNew: 4, DirsChanged: 5, DirsUnchanged: 6, BlobsAdded: 7, BytesAdded: 8, BytesAddedRaw: 9,
			BytesProcessed: 10, FilesProcessed: 11, Errors: 12, Incomplete: true},
	}
}

// sameSnapshot compares snapshots, times by instant, empty lists as nil.
func sameSnapshot(a, b *Snapshot) bool {
	ca, cb := *a, *b
	for _, l := range []*[]string{&ca.Paths, &ca.Tags, &ca.Excludes, &cb.Paths, &cb.Tags, &cb.Excludes} {
		if len(*l) == 0 {
			*l = nil
		}
	}
	if !ca.Time.Equal(cb.Time) {
		return false
	}
	ca.Time, cb.Time = time.Time{}, time.Time{}
	if (ca.Summary == nil) != (cb.Summary == nil) {
		return false
	}
	if ca.Summary != nil {
		sa, sb := *ca.Summary, *cb.Summary
		if !sa.Start.Equal(sb.Start) || !sa.End.Equal(sb.End) {
			return false
		}
		sa.Start, sa.End, sb.Start, sb.End = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		ca.Summary, cb.Summary = &sa, &sb
	}
	return reflect.DeepEqual(ca, cb)
}

func TestSnapshotRoundTrip(t *testing.T) {
	for _, sn := range []*Snapshot{fullSnapshot(), {Tree: rid(2)}} {
		got, err := Decode(sn.Encode())
		if err != nil {
			t.Fatal(err)
		}
		if !sameSnapshot(got, sn) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, sn)
		}
	}
	// ID is not stored.
	sn := fullSnapshot()
	sn.ID = rid(5)
	if got, _ := Decode(sn.Encode()); !got.ID.IsNull() {
		t.Fatal("ID was stored")
	}
}

func TestSnapshotDecodeRejects(t *testing.T) {
	for _, s := range []string{
		``, `null`, `{}`, `[]`, `"x"`, `{"tree":""}`, `{"tree":"00"}`,
		`{"tree":"0000000000000000000000000000000000000000000000000000000000000000"}`,
		`{"tree":"zz00000000000000000000000000000000000000000000000000000000000000"}`,
		`{"tree":"` + rid(1).String() + `","time":"yesterday"}`,
		`{"tree":"` + rid(1).String() + `","uid":-1}`,
		`{"tree":"` + rid(1).String() + `","uid":4294967296}`,
		`{"tree":"` + rid(1).String() + `","parent":"abc"}`,
		`{"tree":"` + rid(1).String() + `"`,
		`{"tree":"` + rid(1).String() + `"} x`,
	} {
		if sn, err := Decode([]byte(s)); err == nil {
			t.Errorf("Decode(%s) = %+v, want error", s, sn)
		}
	}
	if _, err := Decode([]byte(`{"tree":"` + rid(1).String() + `"}`)); err != nil {
		t.Fatalf("minimal snapshot: %v", err)
	}
}

// FuzzSnapshotDecode: Decode never panics, and what it accepts has a tree and
// survives Encode (which panics on failure) and decodes again to the same.
func FuzzSnapshotDecode(f *testing.F) {
	f.Add(fullSnapshot().Encode())
	f.Add((&Snapshot{Tree: rid(3)}).Encode())
	f.Add([]byte(`{"tree":"` + rid(1).String() + `","time":"0000-01-01T00:00:00-23:59"}`))
	f.Add([]byte(`{"tree":"` + rid(1).String() + `","paths":["\xff"],"summary":{"end":"9999-12-31T23:59:59.999999999+00:00"}}`))
	f.Add([]byte(`{"tree":null}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sn, err := Decode(b)
		if err != nil {
			if sn != nil {
				t.Fatal("snapshot and error")
			}
			return
		}
		if sn.Tree == (repo.ID{}) {
			t.Fatal("accepted a snapshot without a tree")
		}
		enc := sn.Encode()
		again, err := Decode(enc)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v\n%s", err, enc)
		}
		if !sameSnapshot(again, sn) {
			t.Fatalf("round trip differs:\n got %+v\nwant %+v", again, sn)
		}
		if !bytes.Equal(again.Encode(), enc) {
			t.Fatal("encoding is not stable")
		}
	})
}
