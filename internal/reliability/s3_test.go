package reliability

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"bunker/internal/backend/s3/s3test"
)

// faultProxy sits between Bunker and the real S3 server and breaks a share
// of the requests: 500 and 503 SlowDown answers, connection resets, bodies
// cut short, and (C5) uploads acknowledged without being stored.
type faultProxy struct {
	srv      *httptest.Server
	mu       sync.Mutex
	rng      *rand.Rand
	rate     float64      // share of requests broken
	dropPuts bool         // acknowledge some PUTs without storing them
	delay    atomic.Int64 // nanoseconds added to every request
	faults   atomic.Int64
}

func newFaultProxy(t *testing.T, upstream string, seed uint64) *faultProxy {
	t.Helper()
	target, _ := url.Parse("http://" + upstream)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = nil
	p := &faultProxy{rng: rand.New(rand.NewPCG(seed, 0xc1))}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d := time.Duration(p.delay.Load()); d > 0 {
			time.Sleep(d)
		}
		p.mu.Lock()
		broken := p.rng.Float64() < p.rate
		kind := p.rng.IntN(5)
		p.mu.Unlock()
		if !broken {
			rp.ServeHTTP(w, r)
			return
		}
		p.faults.Add(1)
		switch {
		case kind == 0:
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
		case kind == 1:
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected</Message></Error>`)
		case kind == 2:
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					if tc, ok := conn.(*net.TCPConn); ok {
						_ = tc.SetLinger(0) // a reset, not a clean close
					}
					conn.Close()
					return
				}
			}
			rp.ServeHTTP(w, r)
		case kind == 3 && r.Method == http.MethodGet:
			// Forward, then cut the body in half.
			rec := httptest.NewRecorder()
			rp.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			body := rec.Body.Bytes()
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.WriteHeader(rec.Code)
			_, _ = w.Write(body[:len(body)/2])
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					conn.Close()
				}
			}
		case kind == 4 && p.dropPuts && r.Method == http.MethodPut && !strings.Contains(r.URL.RawQuery, "uploadId"):
			// C5: acknowledged, never stored.
			body, _ := io.ReadAll(r.Body)
			sum := md5.Sum(body)
			w.Header().Set("ETag", `"`+hex.EncodeToString(sum[:])+`"`)
			w.WriteHeader(http.StatusOK)
		default:
			rp.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *faultProxy) set(rate float64, dropPuts bool) {
	p.mu.Lock()
	p.rate, p.dropPuts = rate, dropPuts
	p.mu.Unlock()
}

// s3Run runs the CLI against an s3: repository through endpoint.
func s3Run(t *testing.T, srv *s3test.Server, endpoint, bucket, pwFile string, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(bunkerBin, args...)
	cmd.Env = append(filteredEnv(), "BUNKER_REPOSITORY=s3:http://"+endpoint+"/"+bucket+"/repo", "BUNKER_PASSWORD_FILE="+pwFile)
	cmd.Env = append(cmd.Env, srv.Env()...)
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	if err := waitResult(err, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

// RELIABILITY C1 and C5: the real S3 server behind a proxy that breaks 1%,
// 10% and 50% of the requests (500, 503 SlowDown, resets, cut bodies, and
// uploads acknowledged but not stored). Every run either succeeds, and then
// the repository checks clean and the snapshot restores identical, or fails
// with an error; never exit 0 with a broken repository.
func TestC1S3Faults(t *testing.T) {
	srv := s3test.Start(t)
	proxy := newFaultProxy(t, srv.Endpoint, 1)
	endpoint := strings.TrimPrefix(proxy.srv.URL, "http://")
	pwFile := filepath.Join(t.TempDir(), "password")
	writeFile(t, pwFile, []byte(testPassword+"\n"))
	cfg := srv.Config(t)
	direct := func(args ...string) cliResult {
		return s3Run(t, srv, srv.Endpoint, cfg.Bucket, pwFile, nil, args...)
	}
	if res := direct("init"); res.code != 0 {
		t.Fatalf("init: %v", res)
	}
	src := filepath.Join(t.TempDir(), "src")
	rng := rand.New(rand.NewPCG(0xc1, 2))
	makeSource(t, src, 11, 2<<20)
	runs := 3
	if soak() {
		runs = 10
	}
	for _, rate := range []float64{0.01, 0.10, 0.50} {
		succeeded, failed := 0, 0
		for i := 0; i < runs; i++ {
			writeFile(t, filepath.Join(src, "changing"), randomBytes(rng, 256<<10+rng.IntN(1<<20)))
			want := manifest(t, src)
			proxy.set(rate, true)
			res := s3Run(t, srv, endpoint, cfg.Bucket, pwFile, nil, "backup", "--json", "--host", "reliability", src)
			proxy.set(0, false)
			if res.code != 0 {
				failed++
				if !strings.HasPrefix(res.stderr, "bunker: ") && !strings.Contains(res.stderr, "\nbunker: ") {
					t.Errorf("rate %.0f%%: failed without a clear error: %v", rate*100, res)
				}
				continue
			}
			succeeded++
			// Exit 0: the repository must be whole.
			if chk := direct("check", "--read-data"); chk.code != 0 {
				t.Fatalf("rate %.0f%%: backup exited 0 but check fails: %v", rate*100, chk)
			}
			target := t.TempDir()
			if r := direct("restore", "latest", "--host", "reliability", "--target", target); r.code != 0 {
				t.Fatalf("rate %.0f%%: restore after a successful backup: %v", rate*100, r)
			}
			compareManifests(t, fmt.Sprintf("rate %.0f%% run %d", rate*100, i), want, manifest(t, restoredAt(target, src)))
		}
		// Reads through the faults: check either passes or fails loudly.
		proxy.set(rate, false)
		chk := s3Run(t, srv, endpoint, cfg.Bucket, pwFile, nil, "check", "--read-data")
		proxy.set(0, false)
		if chk.code == 0 && strings.Contains(chk.stdout, "error:") {
			t.Errorf("rate %.0f%%: check exited 0 while reporting errors: %v", rate*100, chk)
		}
		t.Logf("rate %.0f%%: %d backups succeeded, %d failed; check through faults exit %d; %d faults injected so far",
			rate*100, succeeded, failed, chk.code, proxy.faults.Load())
	}
	// Without faults, the repository is whole and takes the next backup.
	if res := direct("backup", "--host", "reliability", src); res.code != 0 {
		t.Fatalf("backup after the faults: %v", res)
	}
	if chk := direct("check", "--read-data"); chk.code != 0 {
		t.Fatalf("check after the faults: %v", chk)
	}
}

// RELIABILITY C2: slow storage (every request delayed) with locks that go
// stale in seconds: the backup keeps its lock fresh and finishes.
func TestC2SlowS3(t *testing.T) {
	srv := s3test.Start(t)
	proxy := newFaultProxy(t, srv.Endpoint, 2)
	endpoint := strings.TrimPrefix(proxy.srv.URL, "http://")
	pwFile := filepath.Join(t.TempDir(), "password")
	writeFile(t, pwFile, []byte(testPassword+"\n"))
	cfg := srv.Config(t)
	if res := s3Run(t, srv, srv.Endpoint, cfg.Bucket, pwFile, nil, "init"); res.code != 0 {
		t.Fatalf("init: %v", res)
	}
	src := filepath.Join(t.TempDir(), "src")
	makeSource(t, src, 12, 3<<20)
	want := manifest(t, src)
	proxy.delay.Store(int64(150 * time.Millisecond))
	start := time.Now()
	// The lock is refreshed every 500 ms and counts as stale after 4 s; the
	// backup takes several seconds of 150 ms requests.
	res := s3Run(t, srv, endpoint, cfg.Bucket, pwFile, []string{"BUNKER_TEST_LOCK_TIMING=500ms/4s"}, "backup", "--host", "reliability", src)
	took := time.Since(start)
	proxy.delay.Store(0)
	if res.code != 0 {
		t.Fatalf("backup on slow storage: %v", res)
	}
	t.Logf("backup through 150 ms per request took %v", took.Round(time.Millisecond))
	target := t.TempDir()
	if r := s3Run(t, srv, srv.Endpoint, cfg.Bucket, pwFile, nil, "restore", "latest", "--target", target); r.code != 0 {
		t.Fatalf("restore: %v", r)
	}
	compareManifests(t, "slow storage", want, manifest(t, restoredAt(target, src)))
}

// filteredEnv is the environment without BUNKER_ variables.
func filteredEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BUNKER_") || strings.HasPrefix(kv, "BUNKER_VERSITYGW=") {
			out = append(out, kv)
		}
	}
	return out
}
