package repository

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/backend/mem"
	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/pack"
)

// fixedKeyRepo returns a test repository whose keys are fixed: seeds are
// made in the coordinating fuzz process and run in its workers, which make
// repositories of their own.
func fixedKeyRepo(tb testing.TB) (*mem.Backend, *Repository) {
	tb.Helper()
	be, r := newTestRepo(tb)
	var master crypto.MasterKey
	for i := range master.Encrypt {
		master.Encrypt[i], master.MAC[i] = byte(i), byte(255-i)
	}
	k, err := crypto.NewKey(&master)
	if err != nil {
		tb.Fatal(err)
	}
	r.key, r.master = k, &master
	return be, r
}

// saveForOneInput stores plain sealed as a file of type t, removed again
// when the fuzz input's run ends.
func saveForOneInput(t *testing.T, be *mem.Backend, r *Repository, typ backend.FileType, plain []byte) repo.ID {
	t.Helper()
	ctx := context.Background()
	id, err := r.SaveUnpacked(ctx, typ, plain)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Remove(ctx, backend.Handle{Type: typ, Name: id.String()}) })
	return id
}

// FuzzLockFile: a lock file's plaintext is whatever its writer sealed. Any of
// it is either a lock (listed with its holder) or damage (listed with an
// ErrCorrupt error, and judged by its age: a fresh one keeps others out); a
// lock check never fails otherwise.
func FuzzLockFile(f *testing.F) {
	ctx := context.Background()
	be, r := fixedKeyRepo(f)
	now := time.Now().UTC()
	for _, li := range []LockInfo{
		{Time: now, Created: now, Hostname: "h", PID: 7, Exclusive: true},
		{Time: now.Add(-2 * LockStale), Created: now.Add(-2 * LockStale), Hostname: "h", PID: 7},
		{},
	} {
		b, _ := json.Marshal(li)
		f.Add(b)
	}
	f.Add([]byte(`{"time":"not a time"}`))
	f.Add([]byte(`{"pid":-1,"exclusive":"yes"}`))
	f.Add([]byte(`null`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, plain []byte) {
		id := saveForOneInput(t, be, r, backend.LockFile, plain)
		var li LockInfo
		decodes := json.Unmarshal(plain, &li) == nil
		locks, err := r.Locks(ctx)
		if err != nil || len(locks) != 1 || locks[0].ID != id {
			t.Fatalf("Locks = %+v, %v", locks, err)
		}
		if e := locks[0]; decodes != (e.Err == nil) || (e.Err != nil && (!errors.Is(e.Err, ErrCorrupt) || e.Stale)) {
			t.Fatalf("lock entry %+v for plaintext that decodes=%v", e, decodes)
		}
		err = r.checkLocksOnce(ctx, true, repo.ID{})
		switch {
		case err == nil:
			if !decodes || !li.Stale(time.Now()) {
				t.Fatalf("an exclusive check passed over a live or damaged lock (decodes=%v)", decodes)
			}
		case !errors.Is(err, ErrLocked):
			t.Fatalf("lock check = %v, want nil or ErrLocked", err)
		}
	})
}

// FuzzSettingsFile: a settings file's plaintext either decodes or is
// reported as damage (ErrCorrupt); nothing else.
func FuzzSettingsFile(f *testing.F) {
	ctx := context.Background()
	be, r := fixedKeyRepo(f)
	b, _ := json.Marshal(settingsFile{Time: time.Unix(1e9, 0).UTC(), Supersedes: []repo.ID{{1}}, Settings: Settings{MinRetention: "30d"}})
	f.Add(b)
	f.Add([]byte(`{"supersedes":["zz"]}`))
	f.Add([]byte(`{"settings":{"min_retention":7}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, plain []byte) {
		id := saveForOneInput(t, be, r, backend.SettingsFile, plain)
		var sf settingsFile
		decodes := json.Unmarshal(plain, &sf) == nil
		s, files, err := r.LoadSettings(ctx)
		if decodes != (err == nil) || (err != nil && !errors.Is(err, ErrCorrupt)) {
			t.Fatalf("LoadSettings = %v for plaintext that decodes=%v", err, decodes)
		}
		if err == nil && (len(files) != 1 || files[0] != id || s != sf.Settings) {
			t.Fatalf("LoadSettings = %+v, %v; stored %+v", s, files, sf.Settings)
		}
	})
}

// packLayoutEntry is one blob of FuzzReadPack's layout: where the index says
// it lies, not necessarily where it does.
const packLayoutEntry = 1 + 4 + 4 + 4 + repo.IDSize

func encodeLayout(blobs []pack.Blob) []byte {
	var out []byte
	for _, b := range blobs {
		var e [packLayoutEntry]byte
		if b.Compressed {
			e[0] = 1
		}
		binary.LittleEndian.PutUint32(e[1:], b.Offset)
		binary.LittleEndian.PutUint32(e[5:], b.Length)
		binary.LittleEndian.PutUint32(e[9:], b.RawLength)
		copy(e[13:], b.ID[:])
		out = append(out, e[:]...)
	}
	return out
}

// FuzzReadPack: a pack file is untrusted bytes under a name, read with the
// index's idea of its blobs (offsets and lengths that may be wrong) and a
// size the storage reported. ReadPack and ReadPackHeader must never panic
// nor allocate by a size the file does not have; every blob is reported
// once, decoded only if it really is that blob, and a header is returned
// only if it describes blobs inside the pack.
func FuzzReadPack(f *testing.F) {
	ctx := context.Background()
	be, r := fixedKeyRepo(f)
	w := pack.NewWriter(0)
	for i, text := range [][]byte{bytes.Repeat([]byte("pack fuzz "), 50), []byte("second blob")} {
		payload, compressed := text, false
		if i == 0 {
			payload, compressed = r.enc.EncodeAll(text, nil), true
		}
		w.Add(repo.DataBlob, r.BlobID(text), r.key.Seal(nil, payload), len(text), compressed, nil)
	}
	blobs := append([]pack.Blob(nil), w.Blobs()...)
	valid := w.Finish(r.key)
	layout := encodeLayout(blobs)
	// The seed pack reads back whole: the fuzzer starts from success.
	vid := crypto.FileID(valid)
	if err := be.Save(ctx, backend.Handle{Type: backend.PackFile, Name: vid.String()}, valid); err != nil {
		f.Fatal(err)
	}
	res, err := r.ReadPack(ctx, vid, int64(len(valid)), blobs, func(b pack.Blob, _ []byte, err error) error { return err })
	if err != nil || res.HeaderErr != nil || len(res.Header) != len(blobs) {
		f.Fatalf("the seed pack does not read back: %v, %+v", err, res)
	}
	if err := be.Remove(ctx, backend.Handle{Type: backend.PackFile, Name: vid.String()}); err != nil {
		f.Fatal(err)
	}
	f.Add(valid, layout, int16(0))
	f.Add(valid, layout[:packLayoutEntry], int16(-1))
	f.Add(valid, encodeLayout([]pack.Blob{blobs[1], blobs[0]}), int16(0))
	f.Add(valid[:len(valid)-7], layout, int16(7))
	f.Add(valid, layout, int16(-4000))
	f.Add([]byte{0xff, 0xff, 0xff, 0x7f}, []byte{}, int16(0))
	f.Add([]byte{}, layout, int16(4))
	f.Fuzz(func(t *testing.T, data, lay []byte, sizeDelta int16) {
		if len(lay) > 16*packLayoutEntry {
			lay = lay[:16*packLayoutEntry]
		}
		var want []pack.Blob
		for ; len(lay) >= packLayoutEntry; lay = lay[packLayoutEntry:] {
			b := pack.Blob{Type: repo.DataBlob, Compressed: lay[0]&1 != 0,
				Offset: binary.LittleEndian.Uint32(lay[1:]), Length: binary.LittleEndian.Uint32(lay[5:]) % (pack.MaxChunkSealed + 1),
				RawLength: binary.LittleEndian.Uint32(lay[9:])}
			copy(b.ID[:], lay[13:])
			want = append(want, b)
		}
		id := crypto.FileID(data)
		h := backend.Handle{Type: backend.PackFile, Name: id.String()}
		if err := be.Save(ctx, h, data); err != nil && !errors.Is(err, backend.ErrExists) {
			t.Fatal(err)
		}
		defer be.Remove(ctx, h)

		seen := 0
		res, err := r.ReadPack(ctx, id, int64(len(data)), want, func(b pack.Blob, plain []byte, err error) error {
			if b != want[seen] {
				t.Fatalf("blob %d reported as %+v, want %+v", seen, b, want[seen])
			}
			seen++
			if err == nil && (len(plain) != int(b.RawLength) || r.BlobID(plain) != b.ID) {
				t.Fatalf("blob %s decoded to %d bytes that are not it", b.ID.Short(), len(plain))
			}
			if err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("blob %s: %v, want ErrCorrupt", b.ID.Short(), err)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("ReadPack: %v", err)
		}
		if seen != len(want) || res.Size != int64(len(data)) || res.Hash != id {
			t.Fatalf("ReadPack reported %d of %d blobs, size %d of %d", seen, len(want), res.Size, len(data))
		}
		checkHeader := func(hdr []pack.Blob, size int64) {
			for _, b := range hdr {
				if int64(b.Offset)+int64(b.Length) > size {
					t.Fatalf("header blob %+v lies past the %d-byte pack", b, size)
				}
			}
		}
		if res.HeaderErr == nil {
			checkHeader(res.Header, res.Size)
		}
		size := int64(len(data)) + int64(sizeDelta)
		hdr, err := r.ReadPackHeader(ctx, id, size)
		if err == nil {
			checkHeader(hdr, size)
		}
	})
}
