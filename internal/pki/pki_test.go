package pki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"bunker/internal/pki"
)

func TestInitAndIssue(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, err := pki.Init(dir, "prod", now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Init(dir, "prod", now); !errors.Is(err, pki.ErrExists) {
		t.Errorf("second init: %v, want ErrExists", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, pki.CAKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("CA key mode: %v %v", fi.Mode(), err)
	}
	loaded, err := pki.Load(dir)
	if err != nil || !loaded.Cert.Equal(ca.Cert) {
		t.Fatalf("load: %v", err)
	}
	cases := []struct {
		req  pki.Request
		want string // error substring, "" for success
	}{
		{pki.Request{Role: pki.RoleAgent, Name: "node1"}, ""},
		{pki.Request{Role: pki.RoleDirector, Name: "director", Hosts: []string{"127.0.0.1", "dir.example"}}, ""},
		{pki.Request{Role: "admin", Name: "x"}, "unknown role"},
		{pki.Request{Role: pki.RoleAgent, Name: "Node_1"}, "invalid name"},
		{pki.Request{Role: pki.RoleAgent, Name: "../etc"}, "invalid name"},
		{pki.Request{Role: pki.RoleAgent, Name: ""}, "invalid name"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/%s", tc.req.Role, tc.req.Name), func(t *testing.T) {
			cert, key, err := ca.IssueFiles(dir, tc.req, now)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err %v, want %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			pemData, _ := os.ReadFile(cert)
			c, err := pki.ParseCert(pemData)
			if err != nil {
				t.Fatal(err)
			}
			id, err := pki.IdentityOf(c)
			if err != nil || id.Role != tc.req.Role || id.Name != tc.req.Name {
				t.Errorf("identity %+v %v", id, err)
			}
			if fi, _ := os.Stat(key); fi.Mode().Perm() != 0o600 {
				t.Errorf("key mode %v", fi.Mode())
			}
			if _, _, err := ca.IssueFiles(dir, tc.req, now); !errors.Is(err, pki.ErrExists) {
				t.Errorf("issuing again: %v, want ErrExists", err)
			}
		})
	}
}

// RELIABILITY G4: a server with ServerTLS for agents refuses, before any
// handler runs, a client with no certificate, a certificate of another CA,
// an expired one, a revoked one, one of another role, and plaintext.
func TestMutualTLSRefusals(t *testing.T) {
	now := time.Now()
	dir, otherDir := t.TempDir(), t.TempDir()
	ca, err := pki.Init(dir, "prod", now)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.Init(otherDir, "prod", now)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *pki.CA, dir string, req pki.Request, at time.Time) (string, string) {
		t.Helper()
		c, k, err := ca.IssueFiles(dir, req, at)
		if err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	srvCert, srvKey := issue(ca, dir, pki.Request{Role: pki.RoleDirector, Name: "director", Hosts: []string{"127.0.0.1"}}, now)
	goodCert, goodKey := issue(ca, dir, pki.Request{Role: pki.RoleAgent, Name: "node1"}, now)
	revCert, revKey := issue(ca, dir, pki.Request{Role: pki.RoleAgent, Name: "node2"}, now)
	expCert, expKey := issue(ca, dir, pki.Request{Role: pki.RoleAgent, Name: "node3", Validity: time.Hour}, now.Add(-48*time.Hour))
	foreignCert, foreignKey := issue(other, otherDir, pki.Request{Role: pki.RoleAgent, Name: "node1"}, now)
	dirCert, dirKey := issue(ca, dir, pki.Request{Role: pki.RoleDirector, Name: "other-director"}, now)

	revPEM, _ := os.ReadFile(revCert)
	rc, _ := pki.ParseCert(revPEM)
	revoked, _ := pki.NewRevocations()
	revoked.Revoke(rc.SerialNumber)

	srvTLS, err := pki.ServerTLS(ca.PEM, srvCert, srvKey, revoked, pki.RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handled.Add(1)
		id, ok := pki.PeerIdentity(r)
		fmt.Fprintf(w, "%s %s %v", id.Role, id.Name, ok)
	}), TLSConfig: srvTLS, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { srv.Close() })
	url := "https://" + ln.Addr().String() + "/"

	get := func(cfg *tls.Config) (string, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}
	client := func(cert, key string) *tls.Config {
		cfg, err := pki.ClientTLS(ca.PEM, cert, key)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	body, err := get(client(goodCert, goodKey))
	if err != nil || body != "agent node1 true" {
		t.Fatalf("valid agent: %q %v", body, err)
	}
	noCert := client(goodCert, goodKey)
	noCert.Certificates = nil
	refusals := map[string]*tls.Config{
		"no certificate":      noCert,
		"another CA":          client(foreignCert, foreignKey),
		"expired":             client(expCert, expKey),
		"revoked":             client(revCert, revKey),
		"a director's client": client(dirCert, dirKey),
	}
	for name, cfg := range refusals {
		t.Run(name, func(t *testing.T) {
			before := handled.Load()
			if body, err := get(cfg); err == nil {
				t.Errorf("accepted: %q", body)
			}
			if handled.Load() != before {
				t.Errorf("a handler ran")
			}
		})
	}
	t.Run("plaintext", func(t *testing.T) {
		before := handled.Load()
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Errorf("plaintext accepted")
			}
		}
		if handled.Load() != before {
			t.Errorf("a handler ran")
		}
	})
	// The agent side refuses a server that is not a director of the CA.
	t.Run("server not a director", func(t *testing.T) {
		agentSrv, err := pki.ServerTLS(ca.PEM, goodCert, goodKey, nil, pki.RoleAgent)
		if err != nil {
			t.Fatal(err)
		}
		ln2, _ := net.Listen("tcp", "127.0.0.1:0")
		s2 := &http.Server{Handler: http.NotFoundHandler(), TLSConfig: agentSrv, ErrorLog: log.New(io.Discard, "", 0)}
		go func() { _ = s2.ServeTLS(ln2, "", "") }()
		defer s2.Close()
		cfg := client(goodCert, goodKey)
		cfg.ServerName = "node1"
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
		if resp, err := c.Get("https://" + ln2.Addr().String() + "/"); err == nil {
			resp.Body.Close()
			t.Errorf("an agent's certificate was accepted as a director's")
		}
	})
}

// An enrolment certifies only the request's key: the name and role come
// from the director's Request, whatever the request's subject says; a
// request with a bad signature or another kind of key is refused.
func TestSignRequest(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, err := pki.Init(dir, "prod", now)
	if err != nil {
		t.Fatal(err)
	}
	evil := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "director", OrganizationalUnit: []string{pki.RoleDirector}}}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, evil, key)
	if err != nil {
		t.Fatal(err)
	}
	der, err := ca.SignRequest(csr, pki.Request{Role: pki.RoleAgent, Name: "node1"}, now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := pki.IdentityOf(cert); err != nil || id.Role != pki.RoleAgent || id.Name != "node1" || !key.PublicKey.Equal(cert.PublicKey) {
		t.Fatalf("identity %+v %v", id, err)
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatal(err)
	}

	tampered := append([]byte(nil), csr...)
	tampered[len(tampered)-5] ^= 1
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaCSR, err := x509.CreateCertificateRequest(rand.Reader, evil, rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	good, _, err := pki.NewRequest("node2")
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		csr []byte
		req pki.Request
	}{
		"garbage":       {[]byte("not a request"), pki.Request{Role: pki.RoleAgent, Name: "node1"}},
		"bad signature": {tampered, pki.Request{Role: pki.RoleAgent, Name: "node1"}},
		"rsa key":       {rsaCSR, pki.Request{Role: pki.RoleAgent, Name: "node1"}},
		"bad name":      {good, pki.Request{Role: pki.RoleAgent, Name: "../x"}},
		"empty":         {nil, pki.Request{Role: pki.RoleAgent, Name: "node1"}},
	} {
		if _, err := ca.SignRequest(tc.csr, tc.req, now); err == nil {
			t.Errorf("%s: certified", name)
		}
	}
	if _, err := pki.LoadFiles(filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if _, err := pki.Init(other, "other", now); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadFiles(filepath.Join(dir, pki.CACertFile), filepath.Join(other, pki.CAKeyFile)); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Fatalf("mismatched CA key: %v", err)
	}
}
