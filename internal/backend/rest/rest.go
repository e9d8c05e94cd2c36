// Package rest is the client of Bunker's repository server (`bunker serve`,
// internal/server): rest:https://[user@]host:port/<repository>.
package rest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"bunker/internal/backend"
)

// Config says where the repository is and how to authenticate.
type Config struct {
	URL      *url.URL // https://host:port/name (no credentials)
	User     string
	Password string
	// CACert is a PEM file of CAs to trust for the server's certificate.
	CACert string
	// ClientCert is a PEM file holding a client certificate and its key
	// (mutual TLS).
	ClientCert  string
	Connections int // default 8
	Timeout     time.Duration
	// Retries of a request that failed in a way that may pass (default 5).
	Retries int
}

// ParseURL parses "rest:https://[user@]host:port/name". A password in the
// URL is refused: it would show in process listings.
func ParseURL(s string) (Config, error) {
	rest, ok := strings.CutPrefix(s, "rest:")
	if !ok {
		return Config{}, fmt.Errorf("not a rest: URL: %q", backend.RedactURL(s))
	}
	s = "rest:" + backend.RedactURL(rest) // for messages
	u, err := url.Parse(rest)
	if err != nil {
		return Config{}, fmt.Errorf("rest URL %q: %w", s, backend.URLParseError(err))
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return Config{}, fmt.Errorf("rest URL %q: scheme must be https (or http for tests)", s)
	}
	cfg := Config{}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			return Config{}, errors.New("rest URL: a password does not belong in the URL; use BUNKER_REST_PASSWORD_FILE or BUNKER_REST_PASSWORD")
		}
		cfg.User = u.User.Username()
		u.User = nil
	}
	name := strings.Trim(u.Path, "/")
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return Config{}, fmt.Errorf("rest URL %q: want https://host:port/<repository>", s)
	}
	u.Path = "/" + name + "/"
	cfg.URL = u
	return cfg, nil
}

// Backend talks to a repository server. It is safe for concurrent use.
type Backend struct {
	cfg    Config
	client *http.Client
}

var _ backend.Backend = (*Backend)(nil)

// Open returns a backend for an existing repository (it checks the config
// can be read).
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	b, err := newBackend(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := b.Stat(ctx, backend.Handle{Type: backend.ConfigFile}); err != nil {
		return nil, fmt.Errorf("open %s: %w", b.Location(), err)
	}
	return b, nil
}

// Create asks the server to make the repository's directories.
func Create(ctx context.Context, cfg Config) (*Backend, error) {
	b, err := newBackend(cfg)
	if err != nil {
		return nil, err
	}
	resp, err := b.do(ctx, http.MethodPost, "", nil, nil)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", b.Location(), err)
	}
	resp.Body.Close()
	return b, nil
}

// NewForTest returns a backend without touching the server.
func NewForTest(cfg Config) (*Backend, error) { return newBackend(cfg) }

func newBackend(cfg Config) (*Backend, error) {
	if cfg.Connections <= 0 {
		cfg.Connections = 8
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA certificate %s: no PEM certificate in it", cfg.CACert)
		}
		tlsCfg.RootCAs = pool
	}
	if cfg.ClientCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.ClientCert, cfg.ClientCert)
		if err != nil {
			return nil, fmt.Errorf("client certificate %s: %w", cfg.ClientCert, err)
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   cfg.Connections,
		MaxConnsPerHost:       cfg.Connections,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: cfg.Timeout,
		TLSClientConfig:       tlsCfg,
		ForceAttemptHTTP2:     true,
	}
	return &Backend{cfg: cfg, client: &http.Client{Transport: tr}}, nil
}

// Location returns the URL, without credentials.
func (b *Backend) Location() string { return "rest:" + strings.TrimSuffix(b.cfg.URL.String(), "/") }

// Properties reports the backend's capabilities.
func (b *Backend) Properties() backend.Properties {
	return backend.Properties{Connections: b.cfg.Connections}
}

// Close releases idle connections.
func (b *Backend) Close() error {
	b.client.CloseIdleConnections()
	return nil
}

var typeNames = map[backend.FileType]string{
	backend.ConfigFile: "config", backend.KeyFile: "keys", backend.PackFile: "data", backend.IndexFile: "index",
	backend.SnapshotFile: "snapshots", backend.LockFile: "locks", backend.SettingsFile: "settings",
}

func (b *Backend) path(h backend.Handle) string {
	if h.Type == backend.ConfigFile {
		return "config"
	}
	return typeNames[h.Type] + "/" + h.Name
}

// statusError is an HTTP error answer.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.msg) }

// mapStatus turns answers into the backend's sentinel errors.
func mapStatus(err error) error {
	var se *statusError
	if !errors.As(err, &se) {
		return err
	}
	switch se.code {
	case http.StatusNotFound:
		return fmt.Errorf("%w (%s)", backend.ErrNotExist, se.msg)
	case http.StatusConflict:
		return fmt.Errorf("%w (%s)", backend.ErrExists, se.msg)
	case http.StatusUnauthorized:
		return fmt.Errorf("%w: wrong or missing credentials for the repository server", backend.ErrPermission)
	case http.StatusForbidden:
		return fmt.Errorf("%w: %s", backend.ErrPermission, se.msg)
	case http.StatusInsufficientStorage:
		return fmt.Errorf("%w: %s", backend.ErrNoSpace, se.msg)
	case http.StatusRequestedRangeNotSatisfiable:
		return fmt.Errorf("%w: %s", io.ErrUnexpectedEOF, se.msg)
	}
	return err
}

// retryable reports whether a failed request may pass if repeated.
func retryable(err error) bool {
	var se *statusError
	if errors.As(err, &se) {
		return se.code >= 500 && se.code != http.StatusInsufficientStorage || se.code == http.StatusTooManyRequests
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// do sends one request, retrying with exponential backoff and jitter. body
// is resent from the start on each attempt. The caller closes the body of
// the returned response, whose status is 2xx.
func (b *Backend) do(ctx context.Context, method, p string, body []byte, hdr http.Header) (*http.Response, error) {
	u := b.cfg.URL.JoinPath(p)
	var lastErr error
	for attempt := 0; attempt <= b.cfg.Retries; attempt++ {
		if attempt > 0 {
			d := time.Duration(1<<min(attempt, 6)) * 100 * time.Millisecond
			d = d/2 + rand.N(d/2+1)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(d):
			}
		}
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
		if err != nil {
			return nil, err
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		if body != nil {
			req.ContentLength = int64(len(body))
		}
		if b.cfg.User != "" {
			req.SetBasicAuth(b.cfg.User, b.cfg.Password)
		}
		resp, err := b.client.Do(req)
		if err == nil && resp.StatusCode >= 300 {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			err = &statusError{code: resp.StatusCode, msg: strings.TrimSpace(string(msg))}
		}
		if err == nil {
			return resp, nil
		}
		// A POST that failed after the server stored the object comes back
		// 409 on the next attempt: the same name is the same content.
		var se *statusError
		if attempt > 0 && method == http.MethodPost && errors.As(err, &se) && se.code == http.StatusConflict && p != "" && p != "config" {
			return &http.Response{StatusCode: http.StatusCreated, Body: http.NoBody}, nil
		}
		lastErr = err
		if !retryable(err) {
			break
		}
	}
	return nil, mapStatus(lastErr)
}

// Save stores data under h; the server refuses to replace.
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if err := backend.CheckHandle(h); err != nil {
		return fmt.Errorf("save %v: %w", h, err)
	}
	if data == nil {
		data = []byte{}
	}
	resp, err := b.do(ctx, http.MethodPost, b.path(h), data, http.Header{"Content-Type": {"application/octet-stream"}})
	if err != nil {
		return fmt.Errorf("save %v: %w", h, err)
	}
	resp.Body.Close()
	return nil
}

// Load calls fn with a reader of length bytes at offset of h.
func (b *Backend) Load(ctx context.Context, h backend.Handle, length int, offset int64, fn func(rd io.Reader) error) error {
	if err := backend.CheckHandle(h); err != nil {
		return fmt.Errorf("load %v: %w", h, err)
	}
	if length < 0 || offset < 0 {
		return fmt.Errorf("load %v: negative length %d or offset %d", h, length, offset)
	}
	hdr := http.Header{}
	if length > 0 {
		hdr.Set("Range", fmt.Sprintf("bytes=%d-%d", offset, offset+int64(length)-1))
	} else if offset > 0 {
		hdr.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := b.do(ctx, http.MethodGet, b.path(h), nil, hdr)
	if err != nil {
		return fmt.Errorf("load %v: %w", h, err)
	}
	defer resp.Body.Close()
	want := int64(length)
	if length == 0 {
		// A whole read (or to the end): the server says the object's size.
		size, err := strconv.ParseInt(resp.Header.Get("X-Bunker-Size"), 10, 64)
		if err != nil || size < offset {
			return fmt.Errorf("load %v: the server did not say the object's size: %w", h, io.ErrUnexpectedEOF)
		}
		want = size - offset
	}
	if hdr.Get("Range") != "" && resp.StatusCode != http.StatusPartialContent && !(want == 0 && resp.StatusCode == http.StatusOK) {
		return fmt.Errorf("load %v: asked for a range, the server answered %d", h, resp.StatusCode)
	}
	if resp.ContentLength != want {
		return fmt.Errorf("load %v: %d bytes at offset %d, the server sends %d: %w", h, want, offset, resp.ContentLength, io.ErrUnexpectedEOF)
	}
	return fn(backend.ExactReader(resp.Body, want))
}

// Stat returns the size and time of h.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if err := backend.CheckHandle(h); err != nil {
		return backend.FileInfo{}, fmt.Errorf("stat %v: %w", h, err)
	}
	resp, err := b.do(ctx, http.MethodHead, b.path(h), nil, nil)
	if err != nil {
		return backend.FileInfo{}, fmt.Errorf("stat %v: %w", h, err)
	}
	resp.Body.Close()
	ns, _ := strconv.ParseInt(resp.Header.Get("X-Bunker-Mtime"), 10, 64)
	return backend.FileInfo{Name: h.Name, Size: resp.ContentLength, ModTime: time.Unix(0, ns)}, nil
}

// Remove deletes h.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if err := backend.CheckHandle(h); err != nil {
		return fmt.Errorf("remove %v: %w", h, err)
	}
	resp, err := b.do(ctx, http.MethodDelete, b.path(h), nil, nil)
	if err != nil {
		return fmt.Errorf("remove %v: %w", h, err)
	}
	resp.Body.Close()
	return nil
}

// List calls fn for each file of type t.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	if t == backend.ConfigFile {
		return backend.ListConfig(ctx, b, fn)
	}
	name, ok := typeNames[t]
	if !ok {
		return fmt.Errorf("list %v: %w: unknown file type %d", t, backend.ErrInvalidHandle, int(t))
	}
	resp, err := b.do(ctx, http.MethodGet, name+"/", nil, nil)
	if err != nil {
		return fmt.Errorf("list %v: %w", t, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e struct {
			Name  string `json:"name"`
			Size  int64  `json:"size"`
			MTime int64  `json:"mtime"`
			Error string `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("list %v: bad answer from the server: %w", t, err)
		}
		if e.Error != "" {
			return fmt.Errorf("list %v: the server failed: %s", t, e.Error)
		}
		if err := backend.CheckHandle(backend.Handle{Type: t, Name: e.Name}); err != nil {
			return fmt.Errorf("list %v: bad answer from the server: %w", t, err)
		}
		if err := fn(backend.FileInfo{Name: e.Name, Size: e.Size, ModTime: time.Unix(0, e.MTime)}); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("list %v: %w", t, err)
	}
	return nil
}
