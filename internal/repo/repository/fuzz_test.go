package repository

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"bunker/internal/backend"
	"bunker/internal/backend/mem"
	"bunker/internal/repo"
	"bunker/internal/repo/crypto"
	"bunker/internal/repo/pack"
)

// FuzzKeySlot: ParseKeySlot refuses every slot that Open would not derive a
// key for, and what it accepts costs a bounded time and memory to derive.
// Slots cheap enough are then really tried: a slot that ParseKeySlot refuses
// must be skipped (ErrWrongPassword), and only a slot sealed for the password
// opens.
func FuzzKeySlot(f *testing.F) {
	ctx := context.Background()
	be, r := newTestRepo(f)
	// Seeds are made in the coordinating process and run in others: the slot
	// must not depend on this process's random repository keys.
	var master crypto.MasterKey
	for i := range master.Encrypt {
		master.Encrypt[i], master.MAC[i] = byte(i), byte(255-i)
	}
	makeSlot := func(p crypto.KDFParams) []byte {
		ks := keySlot{Version: 1, KDF: "argon2id", Params: p, Salt: bytes.Repeat([]byte{7}, 32)}
		if wrap, err := crypto.DeriveKey([]byte("pw"), ks.Salt, crypto.TestKDF); err == nil {
			k, _ := crypto.NewKey(&crypto.MasterKey{Encrypt: wrap})
			mk, _ := json.Marshal(&master)
			ks.Data = k.Seal(nil, mk)
		}
		b, _ := json.Marshal(ks)
		return b
	}
	valid := makeSlot(crypto.TestKDF)
	if err := be.Save(ctx, backend.Handle{Type: backend.KeyFile, Name: "seed"}, valid); err != nil {
		f.Fatal(err)
	}
	if m, err := r.tryKey(ctx, "seed", []byte("pw")); err != nil || *m != master {
		f.Fatalf("seed slot does not open: %v", err)
	}
	f.Add(valid)
	for _, p := range []crypto.KDFParams{{Time: 2, Memory: 8, Threads: 4}, {Time: 1, Memory: 4 << 20, Threads: 1}, {Time: 1e9, Memory: 64, Threads: 1}, {}} {
		f.Add(makeSlot(p))
	}
	f.Add([]byte(`{"kdf":"argon2id","params":{"time":1,"memory":64,"threads":1},"salt":"AAAAAAAAAAAAAAAAAAAAAA==","data":""}`))
	f.Add([]byte(`{"kdf":"argon2id","params":{"time":4294967295,"memory":4294967295,"threads":255}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		perr := ParseKeySlot(data)
		var ks keySlot
		jerr := json.Unmarshal(data, &ks)
		if perr == nil {
			if jerr != nil || ks.KDF != "argon2id" || ks.Params.Validate() != nil || len(ks.Salt) < 16 {
				t.Fatalf("ParseKeySlot accepted %s", data)
			}
			p := ks.Params
			// The worst accepted slot: 1 GiB, 2 GiB of passes.
			if p.Memory > 1<<20 || uint64(p.Time)*uint64(p.Memory) > 2<<20 {
				t.Fatalf("ParseKeySlot accepted expensive parameters %+v", p)
			}
			if uint64(p.Time)*uint64(p.Memory) > 1<<12 || p.Threads > 16 {
				return // valid but too slow to derive on every fuzz input
			}
		}
		h := backend.Handle{Type: backend.KeyFile, Name: "fuzz"}
		_ = be.Remove(ctx, h)
		if err := be.Save(ctx, h, data); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		m, err := r.tryKey(ctx, h.Name, []byte("pw"))
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("tryKey took %v", d)
		}
		if perr != nil && !errors.Is(err, ErrWrongPassword) {
			t.Fatalf("ParseKeySlot refused (%v) but tryKey = %v", perr, err)
		}
		if err == nil && (m == nil || *m != master) {
			t.Fatalf("a slot opened to other keys: %s", data)
		}
		if err != nil && !errors.Is(err, ErrWrongPassword) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("tryKey = %v", err)
		}
	})
}

// FuzzConfig opens a repository whose config holds arbitrary JSON, sealed with
// the right key (or arbitrary bytes, not sealed). Open must not panic, and a
// config it accepts must be usable: supported version, valid chunker.
func FuzzConfig(f *testing.F) {
	ctx := context.Background()
	be, r := newTestRepo(f)
	var keys [][2][]byte
	err := be.List(ctx, backend.KeyFile, func(fi backend.FileInfo) error {
		data, err := backend.LoadAll(ctx, be, backend.Handle{Type: backend.KeyFile, Name: fi.Name})
		keys = append(keys, [2][]byte{[]byte(fi.Name), data})
		return err
	})
	if err != nil {
		f.Fatal(err)
	}
	good, _ := json.Marshal(r.Config())
	f.Add(good, true)
	f.Add(good, false)
	f.Add([]byte(`{"version":1,"chunker":{"Min":1,"Avg":65536,"Max":65536},"chunker_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`), true)
	f.Add([]byte(`{"version":1,"chunker":{"Min":-1,"Avg":0,"Max":-5},"chunker_key":""}`), true)
	f.Add([]byte(`{"version":2}`), true)
	f.Add([]byte(`null`), true)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, plain []byte, seal bool) {
		b := mem.New()
		for _, k := range keys {
			if err := b.Save(ctx, backend.Handle{Type: backend.KeyFile, Name: string(k[0])}, k[1]); err != nil {
				t.Fatal(err)
			}
		}
		cfg := plain
		if seal {
			cfg = r.Key().Seal(nil, plain)
		}
		if err := b.Save(ctx, backend.Handle{Type: backend.ConfigFile}, cfg); err != nil {
			t.Fatal(err)
		}
		r2, err := Open(ctx, b, []byte("pw"), testOpts)
		if err != nil {
			if !seal && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("unsealed config: %v, want ErrCorrupt", err)
			}
			return
		}
		defer r2.Close()
		if !seal {
			t.Fatal("unsealed config accepted")
		}
		c := r2.Config()
		if c.Version != FormatVersion || c.Chunker.Validate() != nil || len(c.ChunkerKey) != 32 {
			t.Fatalf("invalid config accepted: %+v", c)
		}
		if p := c.Chunker; p.Max > MaxChunk || p.Min < 1 {
			t.Fatalf("chunker params %+v", p)
		}
		_ = r2.NewChunker(bytes.NewReader(nil)) // panics on invalid parameters
	})
}

// FuzzDecodeBlob feeds DecodeBlob arbitrary sealed bytes (seal=false: they
// never authenticate) or an arbitrary payload sealed with the right key
// (seal=true: the payload then reaches the decompressor), with any flags and
// raw length. It must never panic, never return more than MaxBlobSize bytes,
// and accept only a payload that decodes to RawLength bytes with the blob's ID.
// fixID sets the ID to what an independent decoder says the payload holds.
func FuzzDecodeBlob(f *testing.F) {
	_, r := newTestRepo(f)
	ref, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(pack.MaxBlobSize), zstd.WithDecoderConcurrency(1))
	if err != nil {
		f.Fatal(err)
	}
	text := bytes.Repeat([]byte("hello, blob "), 100)
	z := r.enc.EncodeAll(text, nil)
	f.Add(z, true, uint32(len(text)), true, true)
	f.Add(z, true, uint32(len(text)), true, false)
	f.Add(z, true, uint32(len(text)-1), true, true)
	f.Add(text, false, uint32(len(text)), true, true)
	f.Add(text, true, uint32(len(text)), true, true)
	f.Add(r.Key().Seal(nil, text), false, uint32(len(text)), false, true)
	f.Add(r.Key().Seal(nil, z), true, uint32(len(text)), false, false)
	f.Add(r.enc.EncodeAll(make([]byte, 1<<20), nil), true, uint32(1<<20), true, true)
	f.Add([]byte("\x28\xb5\x2f\xfd\x00\x00"), true, uint32(0), true, true)
	f.Add([]byte{}, false, uint32(0), true, true)
	f.Fuzz(func(t *testing.T, payload []byte, compressed bool, rawLength uint32, seal, fixID bool) {
		sealed := payload
		if seal {
			sealed = r.Key().Seal(nil, payload)
		}
		b := pack.Blob{Type: repo.DataBlob, Compressed: compressed, Length: uint32(len(sealed)), RawLength: rawLength}
		var want []byte
		wantOK := false
		if seal {
			want, wantOK = payload, true
			if compressed {
				dec, err := ref.DecodeAll(payload, nil)
				want, wantOK = dec, err == nil
			}
			wantOK = wantOK && len(want) == int(rawLength)
		}
		if fixID && wantOK {
			b.ID = r.BlobID(want)
		} else {
			b.ID = r.BlobID(payload)
			wantOK = wantOK && (!compressed || bytes.Equal(want, payload))
		}
		for _, dst := range [][]byte{nil, []byte("dst")} {
			got, err := r.DecodeBlob(b, bytes.Clone(sealed), bytes.Clone(dst)) // it decrypts in place
			if err != nil {
				if !errors.Is(err, ErrCorrupt) || got != nil {
					t.Fatalf("DecodeBlob = %d bytes, %v", len(got), err)
				}
				if wantOK {
					t.Fatalf("DecodeBlob refused a valid blob: %v", err)
				}
				continue
			}
			if !seal {
				t.Fatal("unsealed bytes accepted")
			}
			plain := got[len(dst):]
			if !bytes.Equal(got[:len(dst)], dst) || len(plain) != int(rawLength) || len(plain) > pack.MaxBlobSize ||
				r.BlobID(plain) != b.ID || !wantOK || !bytes.Equal(plain, want) {
				t.Fatalf("DecodeBlob accepted %d bytes (raw length %d, reference ok=%v)", len(plain), rawLength, wantOK)
			}
		}
	})
}
