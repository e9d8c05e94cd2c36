package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"bunker/internal/api"
)

// A director that lost a report (it restarted after taking it, before
// storing it) asks again for the same command: the agent sends the same
// report again rather than run the command twice. Here the command is an
// upload of a job this node never prepared, refused both times.
func TestCommandAskedAgainIsReportedAgain(t *testing.T) {
	cmd := api.Command{ID: "20261205T000000-000000c1", Job: "20261205T000000-0000000a", Kind: api.KindUpload, Plans: []string{"files"}}
	var mu sync.Mutex
	var reports []api.Report
	asked := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case api.PathPoll:
			resp := api.PollResponse{Commands: []api.Command{}}
			// The director asks again once the previous answer has come
			// (and been lost), three times in all. Asked while the command
			// is still being handled, the agent reports it once, when done:
			// asking before the report came made this test fail under load.
			if asked < 3 && len(reports) == asked {
				asked++
				resp.Commands = append(resp.Commands, cmd)
			} else {
				time.Sleep(50 * time.Millisecond)
			}
			_ = json.NewEncoder(w).Encode(resp)
		case api.PathReport:
			var rep api.Report
			_ = json.NewDecoder(r.Body).Decode(&rep)
			reports = append(reports, rep)
			_, _ = io.WriteString(w, "{}")
		}
	}))
	defer srv.Close()
	a := newAgent(&Config{Name: "node1", Plans: map[string]Plan{"files": {Paths: []string{"/srv"}}}},
		Options{StateDir: t.TempDir(), Bunker: "/bin/false", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, srv.Client(), srv.URL)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			mu.Lock()
			n := len(reports)
			mu.Unlock()
			if n >= 3 {
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not report the command each time it was asked")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, r := range reports {
		if r.Command != cmd.ID || r.OK || !strings.Contains(r.Error, "did not prepare job") {
			t.Errorf("report %+v", r)
		}
	}
}
