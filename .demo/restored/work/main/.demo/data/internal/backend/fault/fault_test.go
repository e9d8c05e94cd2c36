package fault_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"testing"

	"bunker/internal/backend"
	"bunker/internal/backend/backendtest"
	"bunker/internal/backend/fault"
	"bunker/internal/backend/mem"
)

// With no rules the decorator is transparent.
func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return fault.New(mem.New()) })
}

func pack(i int) backend.Handle {
	return backend.Handle{Type: backend.PackFile, Name: fmt.Sprintf("%02x-%d", i, i)}
}

// saves saves pack(1)..pack(n) and returns each Save's error.
func saves(fb *fault.Backend, n int) []error {
	errs := make([]error, n)
	for i := range errs {
		errs[i] = fb.Save(context.Background(), pack(i+1), []byte(fmt.Sprintf("data %d", i+1)))
	}
	return errs
}

func stored(t *testing.T, be backend.Backend, h backend.Handle) ([]byte, bool) {
	t.Helper()
	data, err := backend.LoadAll(context.Background(), be, h)
	if errors.Is(err, backend.ErrNotExist) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("Load(%v): %v", h, err)
	}
	return data, true
}

func TestSaveFaults(t *testing.T) {
	errQuota := fmt.Errorf("quota: %w", backend.ErrNoSpace)
	lock := backend.Handle{Type: backend.LockFile, Name: "l"}
	for _, c := range []struct {
		name      string
		rules     fault.Rules
		extra     backend.Handle // saved after packs 1..4, if set
		wantErr   []error        // for packs 1..4, then extra
		wantStore []int          // stored size of packs 1..4, then extra; -1: absent
	}{
		{
			name:      "none",
			wantErr:   []error{nil, nil, nil, nil},
			wantStore: []int{6, 6, 6, 6},
		},
		{
			name:      "fail 3rd save",
			rules:     fault.Rules{FailSave: fault.Select{Match: fault.Any, Nth: 3}, SaveErr: errQuota},
			wantErr:   []error{nil, nil, backend.ErrNoSpace, nil},
			wantStore: []int{6, 6, -1, 6},
		},
		{
			name:      "fail by type",
			rules:     fault.Rules{FailSave: fault.Select{Match: fault.OfType(backend.LockFile)}},
			extra:     lock,
			wantErr:   []error{nil, nil, nil, nil, fault.ErrInjected},
			wantStore: []int{6, 6, 6, 6, -1},
		},
		{
			name:      "fail one handle",
			rules:     fault.Rules{FailSave: fault.Select{Match: fault.Is(pack(2))}},
			wantErr:   []error{nil, fault.ErrInjected, nil, nil},
			wantStore: []int{6, -1, 6, 6},
		},
		{
			name:      "drop 2nd save",
			rules:     fault.Rules{DropSave: fault.Select{Match: fault.Any, Nth: 2}},
			wantErr:   []error{nil, nil, nil, nil},
			wantStore: []int{6, -1, 6, 6},
		},
		{
			name:      "truncate all",
			rules:     fault.Rules{TruncateSave: fault.Select{Match: fault.Any}, TruncateTo: 2},
			wantErr:   []error{nil, nil, nil, nil},
			wantStore: []int{2, 2, 2, 2},
		},
		{
			name: "fail wins over drop",
			rules: fault.Rules{
				FailSave: fault.Select{Match: fault.Any, Nth: 1},
				DropSave: fault.Select{Match: fault.Any, Nth: 1},
			},
			wantErr:   []error{fault.ErrInjected, nil, nil, nil},
			wantStore: []int{-1, 6, 6, 6},
		},
		{
			name: "before hook",
			rules: fault.Rules{BeforeSave: func(h backend.Handle, data []byte) error {
				if bytes.HasSuffix(data, []byte("4")) {
					return backend.ErrPermission
				}
				return nil
			}},
			wantErr:   []error{nil, nil, nil, backend.ErrPermission},
			wantStore: []int{6, 6, 6, -1},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			inner := mem.New()
			fb := fault.New(inner)
			fb.SetRules(c.rules)
			errs := saves(fb, 4)
			handles := []backend.Handle{pack(1), pack(2), pack(3), pack(4)}
			if c.extra != (backend.Handle{}) {
				errs = append(errs, fb.Save(context.Background(), c.extra, []byte("extra!")))
				handles = append(handles, c.extra)
			}
			for i, h := range handles {
				if want := c.wantErr[i]; (want == nil) != (errs[i] == nil) || !errors.Is(errs[i], want) {
					t.Errorf("Save(%v): err = %v, want %v", h, errs[i], want)
				}
				data, ok := stored(t, inner, h)
				switch {
				case c.wantStore[i] < 0 && ok:
					t.Errorf("%v stored (%q), want absent", h, data)
				case c.wantStore[i] >= 0 && (!ok || len(data) != c.wantStore[i]):
					t.Errorf("%v: stored %v, %d bytes; want %d bytes", h, ok, len(data), c.wantStore[i])
				}
			}
		})
	}
}

func TestLoadFaults(t *testing.T) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789"), 100)
	h := pack(1)
	for _, c := range []struct {
		name        string
		rules       fault.Rules
		wantErr     error // of the first Load
		wantFlipped int   // bits that differ in the first Load
	}{
		{"none", fault.Rules{}, nil, 0},
		{"fail", fault.Rules{FailLoad: fault.Select{Match: fault.Any}, LoadErr: io.ErrUnexpectedEOF}, io.ErrUnexpectedEOF, 0},
		{"fail other type", fault.Rules{FailLoad: fault.Select{Match: fault.OfType(backend.IndexFile)}}, nil, 0},
		{"corrupt", fault.Rules{CorruptLoad: fault.Select{Match: fault.Is(h)}}, nil, 1},
		{"fail wins over corrupt", fault.Rules{FailLoad: fault.Select{Match: fault.Any}, CorruptLoad: fault.Select{Match: fault.Any}}, fault.ErrInjected, 0},
		{"hook", fault.Rules{BeforeLoad: func(_ backend.Handle, length int, offset int64) error {
			return backend.ErrPermission
		}}, backend.ErrPermission, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			inner := mem.New()
			if err := inner.Save(ctx, h, data); err != nil {
				t.Fatal(err)
			}
			fb := fault.New(inner)
			fb.SetRules(c.rules)
			called := false
			var got []byte
			err := fb.Load(ctx, h, 0, 0, func(rd io.Reader) error {
				called = true
				var err error
				got, err = io.ReadAll(rd)
				return err
			})
			if (c.wantErr == nil) != (err == nil) || !errors.Is(err, c.wantErr) {
				t.Fatalf("Load: err = %v, want %v", err, c.wantErr)
			}
			if err != nil {
				if called {
					t.Errorf("fn called on a failed Load")
				}
				return
			}
			flipped := 0
			for i := range data {
				flipped += bits.OnesCount8(data[i] ^ got[i])
			}
			if flipped != c.wantFlipped {
				t.Errorf("%d bits flipped, want %d", flipped, c.wantFlipped)
			}
			// The stored file itself is intact.
			if s, _ := stored(t, inner, h); !bytes.Equal(s, data) {
				t.Errorf("stored file changed")
			}
		})
	}
}

// A probability is reproducible from the seed, and roughly right.
func TestProbabilityIsSeeded(t *testing.T) {
	ctx := context.Background()
	h := pack(1)
	run := func(seed uint64) []bool {
		inner := mem.New()
		if err := inner.Save(ctx, h, []byte("x")); err != nil {
			t.Fatal(err)
		}
		fb := fault.New(inner)
		fb.SetRules(fault.Rules{Seed: seed, FailLoad: fault.Select{Match: fault.Any, Prob: 0.3}})
		failed := make([]bool, 500)
		for i := range failed {
			_, err := backend.LoadAll(ctx, fb, h)
			if err != nil && !errors.Is(err, fault.ErrInjected) {
				t.Fatal(err)
			}
			failed[i] = err != nil
		}
		if n := fb.Injected(); n < 100 || n > 200 {
			t.Errorf("seed %d: %d of 500 loads failed, want about 150", seed, n)
		}
		return failed
	}
	a, b, c := run(1), run(1), run(2)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("same seed, different failures")
	}
	if fmt.Sprint(a) == fmt.Sprint(c) {
		t.Errorf("different seeds, same failures")
	}
}

func TestOtherHooks(t *testing.T) {
	ctx := context.Background()
	sentinel := errors.New("hooked")
	fb := fault.New(mem.New())
	var seen []string
	fb.SetRules(fault.Rules{
		BeforeStat:   func(h backend.Handle) error { seen = append(seen, "stat "+h.String()); return sentinel },
		BeforeRemove: func(h backend.Handle) error { seen = append(seen, "remove "+h.String()); return sentinel },
		BeforeList:   func(t backend.FileType) error { seen = append(seen, "list "+t.String()); return sentinel },
	})
	h := pack(1)
	if _, err := fb.Stat(ctx, h); !errors.Is(err, sentinel) {
		t.Errorf("Stat: %v", err)
	}
	if err := fb.Remove(ctx, h); !errors.Is(err, sentinel) {
		t.Errorf("Remove: %v", err)
	}
	if err := fb.List(ctx, backend.KeyFile, func(backend.FileInfo) error { return nil }); !errors.Is(err, sentinel) {
		t.Errorf("List: %v", err)
	}
	want := "[stat pack/01-1 remove pack/01-1 list key]"
	if got := fmt.Sprint(seen); got != want {
		t.Errorf("hooks saw %s, want %s", got, want)
	}
	// SetRules(Rules{}) turns everything off again.
	fb.SetRules(fault.Rules{})
	if _, err := fb.Stat(ctx, h); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("Stat without hooks: %v, want ErrNotExist", err)
	}
}
