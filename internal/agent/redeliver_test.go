package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
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

// Each poll lists the commands the agent has taken and whose report the
// director has not acknowledged, so that the director can tell a lost
// answer from a command being handled. Here the first report fails: the
// command stays listed until the second one is delivered, and only then
// leaves the list.
func TestPollListsOpenCommands(t *testing.T) {
	cmd := api.Command{ID: "20261205T000000-000000c2", Job: "20261205T000000-0000000b", Kind: api.KindUpload, Plans: []string{"files"}}
	var mu sync.Mutex
	var polls [][]string // the Taken of each poll
	sent, reports := false, 0
	after := -1 // the number of polls before the report was delivered
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case api.PathPoll:
			var p api.Poll
			_ = json.NewDecoder(r.Body).Decode(&p)
			if p.Taken == nil {
				t.Errorf("a poll without the list of taken commands")
			}
			polls = append(polls, p.Taken)
			resp := api.PollResponse{Commands: []api.Command{}}
			if !sent {
				sent = true
				resp.Commands = append(resp.Commands, cmd)
			} else {
				time.Sleep(50 * time.Millisecond)
			}
			_ = json.NewEncoder(w).Encode(resp)
		case api.PathReport:
			reports++
			if reports == 1 {
				http.Error(w, `{"error":"busy"}`, http.StatusServiceUnavailable)
				return
			}
			after = len(polls)
			_, _ = io.WriteString(w, "{}")
		}
	}))
	defer srv.Close()
	a := newAgent(&Config{Name: "node1", Plans: map[string]Plan{"files": {Paths: []string{"/srv"}}}},
		Options{StateDir: t.TempDir(), Bunker: "/bin/false", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, srv.Client(), srv.URL)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		ok := after >= 0 && len(polls) > after+3
		mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent did not report the command")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(polls[0]) != 0 {
		t.Errorf("first poll lists %v", polls[0])
	}
	if after < 2 {
		t.Fatalf("only %d polls before the report was delivered", after)
	}
	// The poll just after the one that carried the command lists it (the
	// agent took it before polling again), and every later one until the
	// report is delivered.
	for i := 1; i < after; i++ {
		if !slices.Equal(polls[i], []string{cmd.ID}) {
			t.Errorf("poll %d (the report not yet delivered) lists %v, want [%s]", i, polls[i], cmd.ID)
		}
	}
	// The first poll after may have crossed the report's answer.
	for i := after + 1; i < len(polls); i++ {
		if len(polls[i]) != 0 {
			t.Errorf("poll %d (after the report) lists %v", i, polls[i])
		}
	}
}
