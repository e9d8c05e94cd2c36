// Package pki is a deployment's certificate authority: one CA per
// deployment, certificates for the director and for each agent, and the
// rules that tie a certificate to what it may do. A certificate names its
// holder (the common name) and its role (the organizational unit,
// "director" or "agent"); an agent's certificate can only ever act as that
// agent, because the director takes the node's name from the certificate
// and from nothing the agent says.
//
// Keys are ECDSA P-256, written as PKCS #8 PEM with mode 0600 and never
// printed.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// Roles a certificate can carry.
const (
	RoleDirector = "director"
	RoleAgent    = "agent"
	// RoleOperator is a person or tool using the director's API (the CLI).
	RoleOperator = "operator"
)

func knownRole(role string) bool {
	return role == RoleDirector || role == RoleAgent || role == RoleOperator
}

// File names inside a PKI directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca.key"
)

// Validity of what Init and Issue make, unless told otherwise.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	CertValidity = 2 * 365 * 24 * time.Hour
)

var (
	// ErrExists: the file to write is already there; nothing was changed.
	ErrExists = errors.New("already exists")
	// ErrBadName: a node name that is not a DNS label-like name.
	ErrBadName = errors.New("invalid name (want lower-case letters, digits, '.', '-'; at most 63 characters; starting with a letter or digit)")
	// ErrNotBunker: a certificate that does not carry a Bunker role.
	ErrNotBunker = errors.New("certificate carries no Bunker role")
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)

// CheckName validates a node or director name.
func CheckName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%q: %w", name, ErrBadName)
	}
	return nil
}

// CA is a loaded certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// PEM is the CA certificate as stored.
	PEM []byte
}

// Init creates a CA for a deployment in dir: ca.pem and ca.key. It refuses
// to overwrite an existing CA.
func Init(dir, deployment string, now time.Time) (*CA, error) {
	if deployment == "" {
		deployment = "bunker"
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for _, f := range []string{CACertFile, CAKeyFile} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, f), ErrExists)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: deployment + " CA", Organization: []string{"Bunker deployment " + deployment}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	if err := writeKey(filepath.Join(dir, CAKeyFile), key); err != nil {
		return nil, err
	}
	if err := writeNew(filepath.Join(dir, CACertFile), ca.PEM, 0o644); err != nil {
		return nil, err
	}
	return ca, nil
}

// Load reads the CA of dir.
func Load(dir string) (*CA, error) {
	return LoadFiles(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile))
}

// LoadFiles reads a CA from its certificate and key files.
func LoadFiles(certPath, keyPath string) (*CA, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	cert, err := ParseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s: not a CA certificate", certPath)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%s does not belong to %s", keyPath, certPath)
	}
	return &CA{Cert: cert, Key: key, PEM: certPEM}, nil
}

// Request says what to certify.
type Request struct {
	Role string
	Name string
	// Hosts are DNS names or IP addresses the holder serves under (a
	// director); agents need none.
	Hosts    []string
	Validity time.Duration // 0: CertValidity
}

// Issue signs a certificate for pub. It returns the certificate's DER.
func (ca *CA) Issue(req Request, pub any, now time.Time) ([]byte, error) {
	if !knownRole(req.Role) {
		return nil, fmt.Errorf("unknown role %q (want %s, %s or %s)", req.Role, RoleDirector, RoleAgent, RoleOperator)
	}
	if err := CheckName(req.Name); err != nil {
		return nil, err
	}
	validity := req.Validity
	if validity <= 0 {
		validity = CertValidity
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: req.Name, OrganizationalUnit: []string{req.Role}, Organization: ca.Cert.Subject.Organization},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if req.Role == RoleDirector {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.DNSNames = []string{req.Name}
	}
	for _, h := range req.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
}

// IssueFiles makes a key and a certificate for req and writes them to
// dir/<role>-<name>.pem and .key, refusing to overwrite. It returns the
// two paths.
func (ca *CA) IssueFiles(dir string, req Request, now time.Time) (certPath, keyPath string, err error) {
	if err := CheckName(req.Name); err != nil {
		return "", "", err
	}
	base := filepath.Join(dir, req.Role+"-"+req.Name)
	certPath, keyPath = base+".pem", base+".key"
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	der, err := ca.Issue(req, &key.PublicKey, now)
	if err != nil {
		return "", "", err
	}
	if err := WriteIdentity(certPath, keyPath, ca.Chain(der), key); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// Chain is a certificate followed by the CA's, as PEM: a holder presents
// its whole chain, and keeps the CA to verify its peers.
func (ca *CA) Chain(der []byte) []byte {
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ca.PEM...)
}

// WriteIdentity writes a key (mode 0600) and its certificate chain,
// refusing to overwrite either; on failure neither is left behind.
func WriteIdentity(certPath, keyPath string, chainPEM []byte, key *ecdsa.PrivateKey) error {
	for _, f := range []string{certPath, keyPath} {
		if _, err := os.Lstat(f); err == nil {
			return fmt.Errorf("%s: %w", f, ErrExists)
		}
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	if err := writeNew(certPath, chainPEM, 0o644); err != nil {
		os.Remove(keyPath)
		return err
	}
	return nil
}

// NewRequest makes a key and a certificate signing request (PKCS #10,
// DER) for an agent that enrols as name. The key never leaves the node.
func NewRequest(name string) ([]byte, *ecdsa.PrivateKey, error) {
	if err := CheckName(name); err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	return csr, key, err
}

// ErrBadRequest: a certificate signing request that cannot be certified.
var ErrBadRequest = errors.New("bad certificate request")

// SignRequest certifies the key of a signing request for req. Only the
// request's key and its proof of possession count: who the certificate is
// for comes from req, never from the request's own subject.
func (ca *CA) SignRequest(csrDER []byte, req Request, now time.Time) ([]byte, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrBadRequest, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: want an ECDSA P-256 key", ErrBadRequest)
	}
	return ca.Issue(req, pub, now)
}

// Identity is who a verified certificate speaks for.
type Identity struct {
	Role, Name string
	Serial     *big.Int
}

// IdentityOf reads the role and name of a certificate that the caller has
// verified against the CA.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	if len(cert.Subject.OrganizationalUnit) != 1 {
		return Identity{}, ErrNotBunker
	}
	role := cert.Subject.OrganizationalUnit[0]
	if !knownRole(role) {
		return Identity{}, fmt.Errorf("%w (unit %q)", ErrNotBunker, role)
	}
	if err := CheckName(cert.Subject.CommonName); err != nil {
		return Identity{}, err
	}
	return Identity{Role: role, Name: cert.Subject.CommonName, Serial: cert.SerialNumber}, nil
}

// ParseCert parses the first certificate of a PEM file.
func ParseCert(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM certificate")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

// ParseKey parses a PEM PKCS #8 ECDSA key.
func ParseKey(data []byte) (*ecdsa.PrivateKey, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM private key")
		}
		if b.Type != "PRIVATE KEY" {
			continue
		}
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, errors.New("unreadable private key")
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, errors.New("not an ECDSA private key")
		}
		return ek, nil
	}
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // the system's random source failed
	}
	return n.Add(n, big.NewInt(1))
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// writeNew writes a new file (never replacing one) and syncs it.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s: %w", path, ErrExists)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}
