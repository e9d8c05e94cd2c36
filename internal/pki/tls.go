package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"slices"
	"sync"
)

// Revocations is a set of revoked certificate serial numbers, safe for
// concurrent use; a director refuses their holders at the handshake.
type Revocations struct {
	mu      sync.RWMutex
	serials map[string]bool
}

// NewRevocations returns a set holding the given serials (decimal or 0x hex).
func NewRevocations(serials ...string) (*Revocations, error) {
	r := &Revocations{serials: map[string]bool{}}
	for _, s := range serials {
		n, ok := new(big.Int).SetString(s, 0)
		if !ok {
			return nil, fmt.Errorf("revoked serial %q is not a number", s)
		}
		r.serials[n.String()] = true
	}
	return r, nil
}

// Revoke adds a serial.
func (r *Revocations) Revoke(serial *big.Int) {
	r.mu.Lock()
	r.serials[serial.String()] = true
	r.mu.Unlock()
}

// Revoked reports whether serial is revoked.
func (r *Revocations) Revoked(serial *big.Int) bool {
	if r == nil {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.serials[serial.String()]
}

// ErrRefused wraps every reason a peer certificate is refused.
var ErrRefused = errors.New("peer certificate refused")

// ServerTLS is the TLS configuration of a director: it presents certFile
// (with its chain) and requires every client to present a certificate of
// the CA, of one of the allowed roles, not revoked. All of this is checked
// during the handshake, before any handler runs.
func ServerTLS(caPEM []byte, certFile, keyFile string, revoked *Revocations, roles ...string) (*tls.Config, error) {
	pool, err := poolOf(caPEM)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		NextProtos:   []string{"h2", "http/1.1"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return checkPeer(cs, revoked, roles)
		},
	}, nil
}

// ClientTLS is the TLS configuration of an agent (or of the CLI talking to
// a director): it presents certFile and accepts only a server whose
// certificate the CA issued to a director.
func ClientTLS(caPEM []byte, certFile, keyFile string) (*tls.Config, error) {
	pool, err := poolOf(caPEM)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return checkPeer(cs, nil, []string{RoleDirector})
		},
	}, nil
}

// EnrolServerTLS serves the enrolment listener: the director presents its
// certificate and asks for none (an enrolling agent has none yet; its
// one-time token is what it proves itself with).
func EnrolServerTLS(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}, nil
}

// EnrolClientTLS is an enrolling agent's configuration: no certificate of
// its own, and only a director of the CA as the server.
func EnrolClientTLS(caPEM []byte) (*tls.Config, error) {
	pool, err := poolOf(caPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return checkPeer(cs, nil, []string{RoleDirector})
		},
	}, nil
}

func checkPeer(cs tls.ConnectionState, revoked *Revocations, roles []string) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: no certificate", ErrRefused)
	}
	leaf := cs.PeerCertificates[0]
	id, err := IdentityOf(leaf)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if !slices.Contains(roles, id.Role) {
		return fmt.Errorf("%w: %s %s may not connect here", ErrRefused, id.Role, id.Name)
	}
	if revoked.Revoked(leaf.SerialNumber) {
		return fmt.Errorf("%w: %s %s: certificate %s is revoked", ErrRefused, id.Role, id.Name, leaf.SerialNumber)
	}
	return nil
}

func poolOf(caPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no CA certificate in the CA file")
	}
	return pool, nil
}

// ReadCA reads a CA certificate file.
func ReadCA(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if _, err := poolOf(b); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// PeerIdentity returns the identity of the verified client certificate of
// a request served with ServerTLS.
func PeerIdentity(r *http.Request) (Identity, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return Identity{}, false
	}
	id, err := IdentityOf(r.TLS.VerifiedChains[0][0])
	return id, err == nil
}
