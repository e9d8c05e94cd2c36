package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"bunker/internal/backend"
	"bunker/internal/backend/backendtest"
	"bunker/internal/backend/rest"
	"bunker/internal/repo/crypto"
	"bunker/internal/server"
	"bunker/internal/server/servertest"
)

// testServer is a repository server on 127.0.0.1 with TLS.
type testServer struct {
	url     string
	ca      *servertest.CA
	root    string
	log     *syncBuffer
	srv     *server.Server
	clients *servertest.CA // issues client certificates
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const (
	adminPW  = "admin-secret-pw"
	appendPW = "append-secret-pw"
	readPW   = "read-secret-pw"
)

func startServer(t *testing.T, noNameCheck, requireCert bool) *testServer {
	t.Helper()
	ca := servertest.NewCA(t, "server-ca")
	clients := servertest.NewCA(t, "client-ca")
	nb, na := servertest.Valid()
	certFile := ca.Issue(t, "127.0.0.1", true, nb, na)
	users, err := server.LoadUsers(servertest.WriteUsers(t,
		servertest.UserSpec{Name: "admin", Role: "admin", Password: adminPW},
		servertest.UserSpec{Name: "agent", Role: "append", Password: appendPW},
		servertest.UserSpec{Name: "auditor", Role: "read", Password: readPW},
		servertest.UserSpec{Name: "node1", Role: "append"},
		servertest.UserSpec{Name: "other", Role: "admin", Password: "x", Repos: "elsewhere"},
	))
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{ca: ca, clients: clients, root: t.TempDir(), log: &syncBuffer{}}
	ts.srv = server.New(server.Options{Root: ts.root, Users: users, Log: slog.New(slog.NewTextHandler(ts.log, nil)), NoNameCheck: noNameCheck})
	tlsCfg, err := server.TLSConfig(server.TLSOptions{CertFile: certFile, ClientCA: clients.File, RequireClientCert: requireCert})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ts.srv.Serve(ctx, l, tlsCfg) }()
	t.Cleanup(func() { cancel(); <-done })
	ts.url = "https://" + l.Addr().String()
	return ts
}

var repoSeq int

func (ts *testServer) config(t *testing.T, repoName, user, pw string) rest.Config {
	t.Helper()
	u, _ := url.Parse(ts.url + "/" + repoName + "/")
	return rest.Config{URL: u, User: user, Password: pw, CACert: ts.ca.File, Retries: 1}
}

func (ts *testServer) newRepo(t *testing.T) string {
	t.Helper()
	repoSeq++
	name := fmt.Sprintf("repo%d", repoSeq)
	be, err := rest.Create(context.Background(), ts.config(t, name, "admin", adminPW))
	if err != nil {
		t.Fatal(err)
	}
	be.Close()
	return name
}

// TestConformance runs the backend suite through the server and the rest
// client (the server's content-name check is off: the suite stores
// arbitrary bytes under arbitrary names).
func TestConformance(t *testing.T) {
	ts := startServer(t, true, false)
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		name := ts.newRepo(t)
		be, err := rest.NewForTest(ts.config(t, name, "admin", adminPW))
		if err != nil {
			t.Fatal(err)
		}
		return be
	})
}

func named(data []byte) backend.Handle {
	return backend.Handle{Type: backend.PackFile, Name: crypto.FileID(data).String()}
}

// TestRoles (RELIABILITY G1 at the protocol level): an append credential
// can read and add, and every delete, overwrite, or write of a key, the
// config or the settings is refused, with nothing changed; the read role
// only reads; users limited to other repositories see nothing.
func TestRoles(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, false, false)
	name := ts.newRepo(t)
	admin, _ := rest.NewForTest(ts.config(t, name, "admin", adminPW))
	agent, _ := rest.NewForTest(ts.config(t, name, "agent", appendPW))
	auditor, _ := rest.NewForTest(ts.config(t, name, "auditor", readPW))
	stranger, _ := rest.NewForTest(ts.config(t, name, "other", "x"))

	data := []byte("pack content")
	h := named(data)
	if err := agent.Save(ctx, h, data); err != nil {
		t.Fatalf("append role cannot add: %v", err)
	}
	lockData := []byte("lock content")
	lock := backend.Handle{Type: backend.LockFile, Name: crypto.FileID(lockData).String()}
	if err := agent.Save(ctx, lock, lockData); err != nil {
		t.Fatal(err)
	}
	adminLockData := []byte("admin lock")
	adminLock := backend.Handle{Type: backend.LockFile, Name: crypto.FileID(adminLockData).String()}
	if err := admin.Save(ctx, adminLock, adminLockData); err != nil {
		t.Fatal(err)
	}
	snap := []byte("snapshot")
	sh := backend.Handle{Type: backend.SnapshotFile, Name: crypto.FileID(snap).String()}
	if err := agent.Save(ctx, sh, snap); err != nil {
		t.Fatal(err)
	}

	keyData := []byte("key slot")
	for _, tc := range []struct {
		what string
		err  error
	}{
		{"append deletes a pack", agent.Remove(ctx, h)},
		{"append deletes a snapshot", agent.Remove(ctx, sh)},
		{"append deletes another's lock", agent.Remove(ctx, adminLock)},
		{"append overwrites a pack", agent.Save(ctx, h, []byte("other content"))},
		{"append stores a key", agent.Save(ctx, backend.Handle{Type: backend.KeyFile, Name: crypto.FileID(keyData).String()}, keyData)},
		{"append stores the config", agent.Save(ctx, backend.Handle{Type: backend.ConfigFile}, []byte("cfg"))},
		{"append stores settings", agent.Save(ctx, backend.Handle{Type: backend.SettingsFile, Name: crypto.FileID(keyData).String()}, keyData)},
		{"read stores", auditor.Save(ctx, named([]byte("x")), []byte("x"))},
		{"read deletes", auditor.Remove(ctx, h)},
	} {
		if tc.err == nil || errors.Is(tc.err, backend.ErrNotExist) {
			t.Errorf("%s: %v, want a refusal", tc.what, tc.err)
		}
	}
	// Same name, other content: refused whoever asks (B8).
	if err := admin.Save(ctx, h, []byte("other content")); err == nil {
		t.Error("admin replaced a stored object")
	}
	if err := agent.Save(ctx, backend.Handle{Type: backend.PackFile, Name: crypto.FileID([]byte("a")).String()}, []byte("b")); !errors.Is(err, backend.ErrPermission) && err == nil {
		t.Error("content that does not match its name was stored")
	}
	for _, be := range []backend.Backend{agent, auditor} {
		if err := be.Load(ctx, h, 0, 0, func(rd io.Reader) error {
			b, _ := io.ReadAll(rd)
			if !bytes.Equal(b, data) {
				t.Errorf("read back %q", b)
			}
			return nil
		}); err != nil {
			t.Errorf("read: %v", err)
		}
	}
	if _, err := stranger.Stat(ctx, h); !errors.Is(err, backend.ErrPermission) {
		t.Errorf("a user of other repositories: %v, want refused", err)
	}
	// Nothing changed.
	for _, hh := range []backend.Handle{h, sh, adminLock} {
		if _, err := admin.Stat(ctx, hh); err != nil {
			t.Errorf("%v is gone: %v", hh, err)
		}
	}
	// The append user removes its own lock.
	if err := agent.Remove(ctx, lock); err != nil {
		t.Errorf("append cannot remove its own lock: %v", err)
	}
	if err := admin.Remove(ctx, h); err != nil {
		t.Errorf("admin cannot delete: %v", err)
	}
	log := ts.log.String()
	for _, want := range []string{"reason=forbidden", "user=agent", "reason=name-mismatch"} {
		if !strings.Contains(log, want) {
			t.Errorf("refusal log lacks %q:\n%s", want, log)
		}
	}
	for _, secret := range []string{adminPW, appendPW, readPW} {
		if strings.Contains(log, secret) {
			t.Errorf("a password is in the log")
		}
	}
}

// TestMTLS (RELIABILITY G4 for the server): with client certificates
// required, a wrong CA, an expired certificate, no certificate and
// plaintext are refused during the handshake; a certificate names its user,
// whatever basic-auth credentials come with it.
func TestMTLS(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, false, true)
	nb, na := servertest.Valid()
	good := ts.clients.Issue(t, "node1", false, nb, na)
	expired := ts.clients.Issue(t, "node1", false, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	rogueCA := servertest.NewCA(t, "rogue")
	rogue := rogueCA.Issue(t, "node1", false, nb, na)
	unknownUser := ts.clients.Issue(t, "nobody", false, nb, na)

	// The repository is made over a connection with the admin's... no
	// admin certificate exists: make it on disk.
	name := "mtls"
	if err := makeRepoDir(filepath.Join(ts.root, name)); err != nil {
		t.Fatal(err)
	}
	cfg := func(cert string) rest.Config {
		c := ts.config(t, name, "", "")
		c.ClientCert = cert
		return c
	}
	data := []byte("hello")
	h := named(data)
	be, err := rest.NewForTest(cfg(good))
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Save(ctx, h, data); err != nil {
		t.Fatalf("a valid client certificate is refused: %v", err)
	}
	// The certificate decides the user: append, even with admin's password.
	c := cfg(good)
	c.User, c.Password = "admin", adminPW
	asAdmin, _ := rest.NewForTest(c)
	if err := asAdmin.Remove(ctx, h); !errors.Is(err, backend.ErrPermission) {
		t.Errorf("node1's certificate with admin's password could delete: %v", err)
	}
	for what, cert := range map[string]string{"expired": expired, "wrong CA": rogue, "no certificate": ""} {
		be, err := rest.NewForTest(cfg(cert))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := be.Stat(ctx, h); err == nil || errors.Is(err, backend.ErrNotExist) {
			t.Errorf("%s: %v, want a TLS refusal", what, err)
		}
	}
	if be, _ := rest.NewForTest(cfg(unknownUser)); be != nil {
		if _, err := be.Stat(ctx, h); !errors.Is(err, backend.ErrPermission) {
			t.Errorf("a certificate of no user: %v, want 401", err)
		}
	}
	// Plaintext HTTP to the TLS port.
	resp, err := http.Get(strings.Replace(ts.url, "https://", "http://", 1) + "/" + name + "/data/" + h.Name)
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 400 || bytes.Equal(body, data) {
			t.Errorf("plaintext request answered %d", resp.StatusCode)
		}
	}
	// TLS without a client certificate, raw.
	conn, err := tls.Dial("tcp", strings.TrimPrefix(ts.url, "https://"), &tls.Config{InsecureSkipVerify: true})
	if err == nil {
		_, werr := conn.Write([]byte("GET /" + name + "/data/" + h.Name + " HTTP/1.1\r\nHost: x\r\n\r\n"))
		buf := make([]byte, 64)
		_, rerr := conn.Read(buf)
		conn.Close()
		if werr == nil && rerr == nil && strings.Contains(string(buf), "200") {
			t.Error("a connection without a certificate was served")
		}
	}
}

// TestMetrics: /metrics counts requests and refusals.
func TestMetrics(t *testing.T) {
	ts := startServer(t, false, false)
	name := ts.newRepo(t)
	agent, _ := rest.NewForTest(ts.config(t, name, "agent", appendPW))
	_ = agent.Remove(context.Background(), named([]byte("x")))
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
	resp, err := client.Get(ts.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("the server spoke %s, want HTTP/2", resp.Proto)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"bunker_server_requests_total", `bunker_server_refused_total{reason="forbidden"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
}

func TestBadUsersFile(t *testing.T) {
	for _, content := range []string{"alice\n", "alice:root:\n", "alice:read:plaintext\n", "a:read:\na:admin:\n", "../x:read:\n"} {
		f := filepath.Join(t.TempDir(), "users")
		writeFile(t, f, content)
		if _, err := server.LoadUsers(f); err == nil {
			t.Errorf("users file %q accepted", content)
		}
	}
}
