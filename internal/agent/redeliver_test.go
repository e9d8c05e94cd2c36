package agent

import (
	"context"
	"encoding/json"
	"fmt"
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

// runAgent runs an agent with one plan ("files"; its bunker is /bin/false,
// so an upload of a job it never prepared is refused) against the fake
// director h, until the returned stop (or the test's end) stops both.
func runAgent(t *testing.T, h http.HandlerFunc) (stop func()) {
	t.Helper()
	srv := httptest.NewServer(h)
	a := newAgent(&Config{Name: "node1", Plans: map[string]Plan{"files": {Paths: []string{"/srv"}}}},
		Options{StateDir: t.TempDir(), Bunker: "/bin/false", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, srv.Client(), srv.URL)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done; srv.Close() }) }
	t.Cleanup(stop)
	return stop
}

// waitUntil waits, up to 15 s, for cond to hold, evaluated under mu.
func waitUntil(t *testing.T, mu *sync.Mutex, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		ok := cond()
		mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// runScript runs an agent against a fake director that sends the commands
// of script one at a time, each once every one before it is reported, and
// returns the reports once there is one per command. Asked again while it
// is still handling a command, the agent reports it once, when done: a fake
// that asked before the report came made these tests fail under load. The
// fake asks for the list of taken commands if listsTaken; refuse, if set,
// sees each poll first and refuses it (with a 400) by returning true.
func runScript(t *testing.T, script []api.Command, listsTaken bool, refuse func(api.Poll) bool) []api.Report {
	t.Helper()
	var mu sync.Mutex
	var reports []api.Report
	sent := 0
	stop := runAgent(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case api.PathPoll:
			var p api.Poll
			_ = json.NewDecoder(r.Body).Decode(&p)
			if refuse != nil && refuse(p) {
				http.Error(w, `{"error":"refused"}`, http.StatusBadRequest)
				return
			}
			resp := api.PollResponse{Commands: []api.Command{}, ListsTaken: listsTaken}
			if sent < len(script) && len(reports) == sent {
				resp.Commands = append(resp.Commands, script[sent])
				sent++
			} else {
				time.Sleep(20 * time.Millisecond)
			}
			_ = json.NewEncoder(w).Encode(resp)
		case api.PathReport:
			reports = append(reports, decodeReport(w, r))
		}
	})
	waitUntil(t, &mu, "a report for every command sent", func() bool { return len(reports) >= len(script) })
	stop()
	return reports
}

// decodeReport reads a report posted to the fake director and answers it.
func decodeReport(w http.ResponseWriter, r *http.Request) api.Report {
	var rep api.Report
	_ = json.NewDecoder(r.Body).Decode(&rep)
	_, _ = io.WriteString(w, "{}")
	return rep
}

// A director that lost a report (it restarted after taking it, before
// storing it) asks again for the same command: the agent sends the same
// report again rather than run the command twice. Here the command is an
// upload of a job this node never prepared, refused both times.
func TestCommandAskedAgainIsReportedAgain(t *testing.T) {
	cmd := api.Command{ID: "20261205T000000-000000c1", Job: "20261205T000000-0000000a", Kind: api.KindUpload, Plans: []string{"files"}}
	// The director asks again once the previous answer has come (and been
	// lost), three times in all.
	for _, r := range runScript(t, []api.Command{cmd, cmd, cmd}, false, nil) {
		if r.Command != cmd.ID || r.OK || !strings.Contains(r.Error, "did not prepare job") {
			t.Errorf("report %+v", r)
		}
	}
}

// Once the director asks for it, each poll lists the commands the agent has
// taken and whose report the director has not acknowledged, so that the
// director can tell a lost answer from a command being handled. Here the
// first report fails: the command stays listed until the second one is
// delivered, and only then leaves the list.
func TestPollListsOpenCommands(t *testing.T) {
	cmd := api.Command{ID: "20261205T000000-000000c2", Job: "20261205T000000-0000000b", Kind: api.KindUpload, Plans: []string{"files"}}
	var mu sync.Mutex
	var polls [][]string // the Taken of each poll
	sent, reports := false, 0
	after := -1 // the number of polls before the report was delivered
	stop := runAgent(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case api.PathPoll:
			var p api.Poll
			_ = json.NewDecoder(r.Body).Decode(&p)
			if (p.Taken == nil) != (len(polls) == 0) {
				t.Errorf("poll %d: list of taken commands %v (only the first poll, before the director asked, has none)", len(polls), p.Taken)
			}
			var taken []string
			if p.Taken != nil {
				taken = *p.Taken
			}
			polls = append(polls, taken)
			resp := api.PollResponse{Commands: []api.Command{}, ListsTaken: true}
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
			decodeReport(w, r)
		}
	})
	waitUntil(t, &mu, "the report and three polls after it", func() bool { return after >= 0 && len(polls) > after+3 })
	stop()
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

// A command the agent handled and reported so long ago that its report is
// no longer kept (StateTTL), asked for again (a director restarted from an
// old state), is refused with a report, not ignored: ignored, it was never
// listed as taken nor reported, and the director would ask forever. A
// director that refuses the list (one that does not know the field) is
// polled without it.
func TestForgottenCommandIsRefused(t *testing.T) {
	defer func(d time.Duration) { StateTTL = d }(StateTTL)
	StateTTL = time.Millisecond
	mk := func(n int) api.Command {
		return api.Command{ID: fmt.Sprintf("20261205T000000-000000d%d", n), Job: "20261205T000000-0000000c", Kind: api.KindUpload, Plans: []string{"files"}}
	}
	// The director sends c0, then c1 once c0 is reported (c1's report
	// drops c0's, StateTTL being over), then c0 again once c1 is reported.
	script := []api.Command{mk(0), mk(1), mk(0)}
	refusedList := false // the fake's poll handler runs under its lock
	reports := runScript(t, script, true, func(p api.Poll) bool {
		// Once, as a director that does not know the field.
		if p.Taken != nil && !refusedList {
			refusedList = true
			return true
		}
		return false
	})
	if r := reports[2]; r.Command != mk(0).ID || r.OK || !strings.Contains(r.Error, "no longer kept") {
		t.Errorf("report for the command asked again: %+v", r)
	}
	if !refusedList {
		t.Error("the agent never listed its taken commands")
	}
}
