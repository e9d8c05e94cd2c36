package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
)

// etcdSnapshot takes a snapshot of one member of an etcd cluster through
// the v3 maintenance API (the first endpoint that answers) into the new
// file dst, and verifies it: etcd appends the SHA-256 of the database to
// the stream, and a snapshot whose digest does not match is refused. It
// needs network access to a member and, on a secured cluster, a client
// certificate allowed to call Maintenance.Snapshot (root, with RBAC).
func etcdSnapshot(ctx context.Context, e *Etcd, dst string) (int64, error) {
	tlsCfg, err := etcdTLS(e)
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, ep := range e.Endpoints {
		n, err := etcdSnapshotFrom(ctx, ep, tlsCfg, dst)
		if err == nil {
			return n, nil
		}
		os.Remove(dst)
		errs = append(errs, fmt.Errorf("%s: %w", ep, err))
		if ctx.Err() != nil {
			break
		}
	}
	return 0, fmt.Errorf("etcd snapshot: %w", errors.Join(errs...))
}

func etcdSnapshotFrom(ctx context.Context, endpoint string, tlsCfg *tls.Config, dst string) (int64, error) {
	rc, err := etcdSnapshotStream(ctx, endpoint, tlsCfg)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// Hash everything but the last 32 bytes (the digest), holding those
	// back as the stream goes.
	h := sha256.New()
	tail := make([]byte, 0, sha256.Size)
	buf := make([]byte, 1<<20)
	var n int64
	for {
		k, rerr := rc.Read(buf)
		if k > 0 {
			if _, err := f.Write(buf[:k]); err != nil {
				return 0, err
			}
			n += int64(k)
			all := append(tail, buf[:k]...)
			if len(all) > sha256.Size {
				h.Write(all[:len(all)-sha256.Size])
				all = all[len(all)-sha256.Size:]
			}
			tail = append(tail[:0], all...)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return 0, rerr
		}
	}
	if n%512 != sha256.Size || !bytes.Equal(h.Sum(nil), tail) {
		return 0, fmt.Errorf("the snapshot (%d bytes) fails its SHA-256 check", n)
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return n, f.Close()
}

func etcdTLS(e *Etcd) (*tls.Config, error) {
	if e.CACert == "" && e.Cert == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if e.CACert != "" {
		pem, err := os.ReadFile(e.CACert)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no CA certificate", e.CACert)
		}
	}
	if e.Cert != "" {
		c, err := tls.LoadX509KeyPair(e.Cert, e.Key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}
