package limit_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/backend/backendtest"
	"bunker/internal/backend/limit"
	"bunker/internal/backend/mem"
)

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return limit.Wrap(mem.New(), limit.Options{Upload: 64 << 20, Download: 64 << 20, Connections: 4})
	})
}

// TestRates: moving 1 MiB at 2 MiB/s (after a 256 KiB burst) takes about
// 0.375 s each way; the test only checks it is not instant and not absurdly
// slow, since timings on shared machines are noisy.
func TestRates(t *testing.T) {
	ctx := context.Background()
	be := limit.Wrap(mem.New(), limit.Options{Upload: 2 << 20, Download: 2 << 20})
	data := bytes.Repeat([]byte("x"), 1<<20)
	h := backend.Handle{Type: backend.PackFile, Name: "aa"}
	start := time.Now()
	if err := be.Save(ctx, h, data); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("1 MiB uploaded in %v at 2 MiB/s", d)
	}
	start = time.Now()
	err := be.Load(ctx, h, 0, 0, func(rd io.Reader) error {
		_, err := io.Copy(io.Discard, rd)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("1 MiB downloaded in %v at 2 MiB/s", d)
	}
}
