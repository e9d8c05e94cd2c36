package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"bunker/internal/api"
	"bunker/internal/pki"
)

// Enrol gets this node's certificate from the director's enrolment
// listener at enrolURL with a one-time token: it makes the key here (it
// never leaves the node), sends a certificate request with the token, and
// writes the key and the certificate to the files of the configuration's
// tls section. It refuses to replace either file, before using the token.
func Enrol(ctx context.Context, cfg *Config, enrolURL, token string) (time.Time, error) {
	u, err := url.Parse(enrolURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return time.Time{}, fmt.Errorf("enrolment URL %q: want https://host:port", enrolURL)
	}
	for _, f := range []string{cfg.TLS.Cert, cfg.TLS.Key} {
		if _, err := os.Lstat(f); err == nil {
			return time.Time{}, fmt.Errorf("%s: %w (this node has a certificate; remove both files to enrol again)", f, pki.ErrExists)
		}
	}
	// The token is used up by the director: check first that the files
	// can be written.
	for _, dir := range []string{filepath.Dir(cfg.TLS.Cert), filepath.Dir(cfg.TLS.Key)} {
		f, err := os.CreateTemp(dir, ".bunker-enrol-*")
		if err != nil {
			return time.Time{}, fmt.Errorf("cannot write the certificate files: %w", err)
		}
		f.Close()
		os.Remove(f.Name())
	}
	caPEM, err := pki.ReadCA(cfg.TLS.CA)
	if err != nil {
		return time.Time{}, err
	}
	tlsCfg, err := pki.EnrolClientTLS(caPEM)
	if err != nil {
		return time.Time{}, err
	}
	csr, key, err := pki.NewRequest(cfg.Name)
	if err != nil {
		return time.Time{}, err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}, Timeout: 30 * time.Second}
	var out api.EnrolResponse
	err = postJSON(ctx, client, strings.TrimSuffix(enrolURL, "/")+api.PathEnrol,
		api.EnrolRequest{Version: api.Version, Node: cfg.Name, Token: strings.TrimSpace(token), CSR: csr}, &out)
	var refused *errDirector
	switch {
	case errors.As(err, &refused):
		return time.Time{}, fmt.Errorf("director refused the enrolment: %s", refused.msg)
	case err != nil:
		return time.Time{}, fmt.Errorf("director: %w", err)
	}
	// Check what came back before keeping it: issued by our CA, for this
	// node as an agent, for the key made here.
	leaf, err := pki.ParseCert([]byte(out.Certificate))
	if err != nil {
		return time.Time{}, fmt.Errorf("director's certificate: %w", err)
	}
	ca, err := pki.ParseCert(caPEM)
	if err != nil {
		return time.Time{}, err
	}
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		return time.Time{}, fmt.Errorf("director's certificate is not from the deployment's CA: %w", err)
	}
	id, err := pki.IdentityOf(leaf)
	if err != nil || id.Role != pki.RoleAgent || id.Name != cfg.Name {
		return time.Time{}, fmt.Errorf("director's certificate is not an agent certificate for %s", cfg.Name)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return time.Time{}, fmt.Errorf("director's certificate is for another key")
	}
	if err := pki.WriteIdentity(cfg.TLS.Cert, cfg.TLS.Key, []byte(out.Certificate), key); err != nil {
		return time.Time{}, err
	}
	return leaf.NotAfter, nil
}
