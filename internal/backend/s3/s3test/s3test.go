// Package s3test starts a real S3-compatible server (versitygw, installed by
// `make test` with go install at a pinned version) on 127.0.0.1 for tests.
// For tests only.
package s3test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"bunker/internal/backend/s3"
)

// Version is the versitygw release the tests run against; the Makefile
// installs the same one.
const Version = "v1.8.0"

// Server is a running versitygw.
type Server struct {
	Endpoint  string // 127.0.0.1:port
	AccessKey string
	SecretKey string
	Dir       string // its storage root
	cmd       *exec.Cmd
	bin       string
	// adminEndpoint serves the user administration API (StartIAM).
	adminEndpoint string
}

// Binary finds versitygw: $BUNKER_VERSITYGW, then PATH, then $(go env
// GOPATH)/bin.
func Binary() (string, error) {
	if p := os.Getenv("BUNKER_VERSITYGW"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	for _, dir := range filepath.SplitList(gopath) {
		p := filepath.Join(dir, "bin", "versitygw")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("versitygw not found: run `make test` (it runs go install github.com/versity/versitygw/cmd/versitygw@%s)", Version)
}

// Start starts a server for the test and stops it when the test ends. In CI
// (CI=true) a missing binary fails the test; elsewhere it skips it.
func Start(t testing.TB) *Server { return start(t, false) }

// StartIAM starts a server with its own user database, so that tests can
// add users (CreateUser) with restricted rights (SetPolicy).
func StartIAM(t testing.TB) *Server { return start(t, true) }

func start(t testing.TB, iam bool) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	dir := t.TempDir()
	root, versions := filepath.Join(dir, "root"), filepath.Join(dir, "versions")
	for _, d := range []string{root, versions} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	s := &Server{AccessKey: "bunker-test-" + randHex(4), SecretKey: randHex(20), Dir: root}
	for attempt := 0; ; attempt++ {
		s.Endpoint = freeAddr(t)
		args := []string{"--port", s.Endpoint, "--quiet"}
		if iam {
			s.adminEndpoint = freeAddr(t)
			iamDir := filepath.Join(dir, "iam")
			if err := os.MkdirAll(iamDir, 0o700); err != nil {
				t.Fatal(err)
			}
			args = append(args, "--admin-port", s.adminEndpoint, "--iam-dir", iamDir)
		}
		cmd := exec.Command(bin, append(args, "posix", "--versioning-dir", versions, root)...)
		// Credentials through the environment, never the command line.
		cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.AccessKey, "ROOT_SECRET_ACCESS_KEY="+s.SecretKey)
		logf, err := os.Create(filepath.Join(dir, "versitygw.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatalf("start versitygw: %v", err)
		}
		s.cmd, s.bin = cmd, bin
		if waitListening(s.Endpoint, 20*time.Second) {
			break
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log, _ := os.ReadFile(logf.Name())
		if attempt == 2 {
			t.Fatalf("versitygw did not start on %s:\n%s", s.Endpoint, log)
		}
	}
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	})
	return s
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func waitListening(addr string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

var bucketSeq atomic.Int64

// Config returns a backend config for a new, not yet created, bucket.
func (s *Server) Config(t testing.TB) s3.Config {
	return s3.Config{Endpoint: s.Endpoint, Insecure: true, Bucket: fmt.Sprintf("bunker-%d-%s", bucketSeq.Add(1), randHex(3)),
		Prefix: "repo", AccessKey: s.AccessKey, SecretKey: s.SecretKey, PathStyle: true}
}

// URL is the repository URL of cfg, for the CLI.
func URL(cfg s3.Config) string {
	return "s3:http://" + cfg.Endpoint + "/" + cfg.Bucket + "/" + cfg.Prefix
}

// Env returns the environment the CLI needs to reach the server.
func (s *Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey}
}

// NewBackend creates a bucket and returns a backend on it.
func (s *Server) NewBackend(t testing.TB) *s3.Backend {
	t.Helper()
	be, err := s3.Create(context.Background(), s.Config(t))
	if err != nil {
		t.Fatal(err)
	}
	return be
}

// CreateUser adds a user with the "user" role (StartIAM only).
func (s *Server) CreateUser(t testing.TB, access, secret string) {
	t.Helper()
	cmd := exec.Command(s.bin, "admin", "--endpoint-url", "http://"+s.adminEndpoint, "create-user", "--access", access, "--secret", secret, "--role", "user")
	cmd.Env = append(os.Environ(), "ADMIN_ACCESS_KEY_ID="+s.AccessKey, "ADMIN_SECRET_ACCESS_KEY="+s.SecretKey)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("create user: %v\n%s", err, out)
	}
}

// AppendOnlyPolicy is the bucket policy that makes user an append-only
// client of the repository at prefix: it may read everything, create
// objects in data/, index/, snapshots/ and locks/, and delete lock files;
// never delete anything else, nor write keys, the config or the settings.
// docs/operations.md recommends the same policy.
func AppendOnlyPolicy(bucket, prefix, user string) string {
	arn := "arn:aws:s3:::" + bucket
	p := arn + "/" + prefix
	return `{"Version":"2012-10-17","Statement":[` +
		`{"Effect":"Allow","Principal":{"AWS":["` + user + `"]},"Action":["s3:ListBucket","s3:GetBucketLocation"],"Resource":["` + arn + `"]},` +
		`{"Effect":"Allow","Principal":{"AWS":["` + user + `"]},"Action":["s3:GetObject"],"Resource":["` + arn + `/*"]},` +
		`{"Effect":"Allow","Principal":{"AWS":["` + user + `"]},"Action":["s3:PutObject"],"Resource":["` + p + `/data/*","` + p + `/index/*","` + p + `/snapshots/*","` + p + `/locks/*"]},` +
		`{"Effect":"Allow","Principal":{"AWS":["` + user + `"]},"Action":["s3:DeleteObject"],"Resource":["` + p + `/locks/*"]}]}`
}
