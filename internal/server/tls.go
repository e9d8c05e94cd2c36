package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"
)

// TLSOptions configure the server's TLS.
type TLSOptions struct {
	CertFile, KeyFile string // the server's certificate and key (PEM; may be one file)
	// ClientCA, if set, is a PEM file of the CA that issues client
	// certificates: clients may then authenticate with a certificate whose
	// common name is a user of the users file.
	ClientCA string
	// RequireClientCert refuses every connection without a valid client
	// certificate, during the handshake, before any handler runs.
	RequireClientCert bool
}

// TLSConfig builds the server's TLS configuration (TLS 1.2 or later, HTTP/2).
func TLSConfig(o TLSOptions) (*tls.Config, error) {
	if o.CertFile == "" {
		return nil, errors.New("the server needs a certificate (--tls-cert, --tls-key)")
	}
	keyFile := o.KeyFile
	if keyFile == "" {
		keyFile = o.CertFile
	}
	cert, err := tls.LoadX509KeyPair(o.CertFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
	if o.ClientCA != "" {
		pem, err := os.ReadFile(o.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA %s: no PEM certificate in it", o.ClientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if o.RequireClientCert {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	} else if o.RequireClientCert {
		return nil, errors.New("--require-client-cert needs --client-ca")
	}
	return cfg, nil
}

// Serve serves HTTPS on l until ctx ends, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context, l net.Listener, tlsCfg *tls.Config) error {
	hs := &http.Server{
		Handler:           s,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// TLS handshake failures (no, expired or foreign client
		// certificates, plaintext) are refusals too: they go to our log.
		ErrorLog: slog.NewLogLogger(s.opts.Log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(tls.NewListener(l, tlsCfg)) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return hs.Shutdown(sctx)
	}
}
