// Package s3 stores a repository in an S3-compatible bucket, through
// minio-go (a client made for S3-compatible servers, small next to the AWS
// SDK, with multipart uploads, retries and every signing style built in).
//
// Objects are named like the local layout under an optional prefix:
// config, keys/<id>, data/<id[0:2]>/<id>, index/<id>, snapshots/<id>,
// locks/<id>, settings/<id>. Only the common ground of the S3 API is used
// (PUT with Content-MD5 and If-None-Match, ranged GET, HEAD, DELETE,
// ListObjectsV2, and for Object Lock the retention calls); docs/operations.md
// says which servers were tested.
package s3

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"bunker/internal/backend"
)

// Config says where the repository is and how to reach it.
type Config struct {
	Endpoint string // host[:port]
	Insecure bool   // plain HTTP (only for tests and trusted networks)
	Bucket   string
	Prefix   string // without leading or trailing slash; may be empty
	Region   string
	// PathStyle forces path-style requests (http://host/bucket/key);
	// VirtualHost forces bucket.host; neither lets the client decide.
	PathStyle, VirtualHost bool
	// CACert is a PEM file of extra trusted CAs (for a private CA).
	CACert string
	// Credentials: from the environment (AWS_ACCESS_KEY_ID,
	// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), else the AWS credentials
	// file (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE), else MINIO_*.
	// AccessKey/SecretKey, when set, take precedence (tests).
	AccessKey, SecretKey, SessionToken string
	// Connections bounds the connections to the server (default 8).
	Connections int
	// Timeout bounds how long a request may wait for the server to start
	// answering (default 60 s).
	Timeout time.Duration
	// Lock, if set, gives every stored object an Object Lock retention.
	Lock *LockConfig
}

// LockConfig is an Object Lock retention applied to every stored object.
type LockConfig struct {
	Mode string // "compliance" or "governance"
	Days int
}

// ParseURL parses "s3:https://host[:port]/bucket[/prefix]" (or http:, or
// "s3:host/bucket/prefix", which means https).
func ParseURL(s string) (Config, error) {
	rest, ok := strings.CutPrefix(s, "s3:")
	if !ok {
		return Config{}, fmt.Errorf("not an s3: URL: %q", backend.RedactURL(s))
	}
	if !strings.Contains(rest, "://") {
		rest = "https://" + rest
	}
	s = "s3:" + backend.RedactURL(rest) // for messages
	u, err := url.Parse(rest)
	if err != nil {
		return Config{}, fmt.Errorf("s3 URL %q: %w", s, backend.URLParseError(err))
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return Config{}, fmt.Errorf("s3 URL %q: scheme must be https or http", s)
	}
	if u.User != nil {
		return Config{}, fmt.Errorf("s3 URL: credentials do not belong in the URL; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a credentials file")
	}
	if u.Host == "" {
		return Config{}, fmt.Errorf("s3 URL %q: no host", s)
	}
	bucket, prefix, _ := strings.Cut(strings.Trim(u.Path, "/"), "/")
	if bucket == "" {
		return Config{}, fmt.Errorf("s3 URL %q: no bucket", s)
	}
	return Config{Endpoint: u.Host, Insecure: u.Scheme == "http", Bucket: bucket, Prefix: strings.Trim(prefix, "/")}, nil
}

// Backend is a repository in a bucket. It is safe for concurrent use.
type Backend struct {
	cfg    Config
	client *minio.Client
	core   *minio.Core

	lockMu   sync.RWMutex
	lockMode string        // "" for no Object Lock retention on new objects
	lockFor  time.Duration // how long new objects are locked
}

var (
	_ backend.Backend  = (*Backend)(nil)
	_ backend.Retainer = (*Backend)(nil)
)

func newClient(cfg Config) (*Backend, error) {
	if cfg.Connections <= 0 {
		cfg.Connections = 8
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          cfg.Connections,
		MaxIdleConnsPerHost:   cfg.Connections,
		MaxConnsPerHost:       cfg.Connections,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: cfg.Timeout,
		ExpectContinueTimeout: time.Second,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
	}
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("CA certificate: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA certificate %s: no PEM certificate in it", cfg.CACert)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	var creds *credentials.Credentials
	if cfg.AccessKey != "" {
		creds = credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, cfg.SessionToken)
	} else {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{},
			&credentials.FileAWSCredentials{},
			&credentials.EnvMinio{},
		})
	}
	lookup := minio.BucketLookupAuto
	switch {
	case cfg.PathStyle:
		lookup = minio.BucketLookupPath
	case cfg.VirtualHost:
		lookup = minio.BucketLookupDNS
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds: creds, Secure: !cfg.Insecure, Transport: tr, Region: cfg.Region, BucketLookup: lookup,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 %s: %w", cfg.Endpoint, err)
	}
	b := &Backend{cfg: cfg, client: client, core: &minio.Core{Client: client}}
	if cfg.Lock != nil {
		b.SetRetention(cfg.Lock.Mode, time.Duration(cfg.Lock.Days)*24*time.Hour)
	}
	return b, nil
}

// SetRetention locks every object stored from now on for d in mode.
func (b *Backend) SetRetention(mode string, d time.Duration) {
	b.lockMu.Lock()
	b.lockMode, b.lockFor = mode, d
	b.lockMu.Unlock()
}

// Retention returns an object's Object Lock mode and retain-until date,
// from the headers of a HEAD request (servers differ in how they answer
// GetObjectRetention; the headers are common ground).
func (b *Backend) Retention(ctx context.Context, h backend.Handle) (string, time.Time, error) {
	if err := backend.CheckHandle(h); err != nil {
		return "", time.Time{}, err
	}
	oi, err := b.client.StatObject(ctx, b.cfg.Bucket, b.key(h), minio.StatObjectOptions{})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("retention of %v: %w", h, mapErr(err))
	}
	mode := strings.ToLower(oi.Metadata.Get("X-Amz-Object-Lock-Mode"))
	var until time.Time
	if v := oi.Metadata.Get("X-Amz-Object-Lock-Retain-Until-Date"); v != "" {
		if until, err = time.Parse(time.RFC3339, v); err != nil {
			return "", time.Time{}, fmt.Errorf("retention of %v: bad retain-until date %q", h, v)
		}
	}
	return mode, until, nil
}

// ExtendRetention moves an object's retain-until date to until (never back).
func (b *Backend) ExtendRetention(ctx context.Context, h backend.Handle, until time.Time) error {
	mode, cur, err := b.Retention(ctx, h)
	if err != nil {
		return err
	}
	if !until.After(cur) {
		return nil
	}
	if mode == "" {
		b.lockMu.RLock()
		mode = b.lockMode
		b.lockMu.RUnlock()
	}
	rm := retentionMode(mode)
	until = until.UTC().Truncate(time.Second).Add(time.Second)
	err = b.client.PutObjectRetention(ctx, b.cfg.Bucket, b.key(h), minio.PutObjectRetentionOptions{Mode: &rm, RetainUntilDate: &until})
	if err != nil {
		return fmt.Errorf("extend the lock of %v: %w", h, mapErr(err))
	}
	return nil
}

// Open opens a repository in an existing bucket.
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	b, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	ok, err := b.client.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", b.Location(), mapErr(err))
	}
	if !ok {
		return nil, fmt.Errorf("open %s: bucket %q: %w", b.Location(), cfg.Bucket, backend.ErrNotExist)
	}
	return b, nil
}

// Create prepares a bucket for a new repository: it makes the bucket if it is
// missing (with Object Lock enabled when cfg.Lock is set) and checks that an
// existing bucket has Object Lock enabled when it is asked for. It fails with
// backend.ErrExists if a repository config is already stored.
func Create(ctx context.Context, cfg Config) (*Backend, error) {
	b, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	ok, err := b.client.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", b.Location(), mapErr(err))
	}
	if !ok {
		err := b.client.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region, ObjectLocking: cfg.Lock != nil})
		if err != nil {
			return nil, fmt.Errorf("create bucket %q: %w", cfg.Bucket, mapErr(err))
		}
	} else if cfg.Lock != nil {
		enabled, _, _, _, err := b.client.GetObjectLockConfig(ctx, cfg.Bucket)
		if err != nil || enabled != "Enabled" {
			return nil, fmt.Errorf("bucket %q does not have Object Lock enabled (it can only be enabled when a bucket is created): use a new bucket", cfg.Bucket)
		}
	}
	if _, err := b.Stat(ctx, backend.Handle{Type: backend.ConfigFile}); err == nil {
		return nil, fmt.Errorf("create %s: %w", b.Location(), backend.ErrExists)
	}
	return b, nil
}

// Location returns the URL without credentials.
func (b *Backend) Location() string {
	scheme := "https"
	if b.cfg.Insecure {
		scheme = "http"
	}
	return "s3:" + scheme + "://" + b.cfg.Endpoint + "/" + path.Join(b.cfg.Bucket, b.cfg.Prefix)
}

// Properties reports the backend's capabilities.
func (b *Backend) Properties() backend.Properties {
	return backend.Properties{Connections: b.cfg.Connections}
}

// Close releases idle connections.
func (b *Backend) Close() error { return nil }

var typeDirs = map[backend.FileType]string{
	backend.KeyFile:      "keys",
	backend.PackFile:     "data",
	backend.IndexFile:    "index",
	backend.SnapshotFile: "snapshots",
	backend.LockFile:     "locks",
	backend.SettingsFile: "settings",
}

func (b *Backend) key(h backend.Handle) string {
	switch h.Type {
	case backend.ConfigFile:
		return path.Join(b.cfg.Prefix, "config")
	case backend.PackFile:
		return path.Join(b.cfg.Prefix, "data", h.Name[:2], h.Name)
	}
	return path.Join(b.cfg.Prefix, typeDirs[h.Type], h.Name)
}

func (b *Backend) dirPrefix(t backend.FileType) string {
	return path.Join(b.cfg.Prefix, typeDirs[t]) + "/"
}

// mapErr turns S3 error codes into the backend's sentinel errors.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	resp := minio.ToErrorResponse(err)
	switch resp.Code {
	case minio.NoSuchKey, "NotFound", minio.NoSuchVersion:
		return fmt.Errorf("%w (%s)", backend.ErrNotExist, resp.Code)
	case minio.NoSuchBucket:
		return fmt.Errorf("%w: the bucket does not exist", backend.ErrNotExist)
	case minio.AccessDenied, "InvalidAccessKeyId", "SignatureDoesNotMatch":
		return fmt.Errorf("%w: %s: %s", backend.ErrPermission, resp.Code, resp.Message)
	case "RequestTimeTooSkewed":
		return fmt.Errorf("the clocks of this machine and the S3 server differ too much (%s): fix the time (NTP)", resp.Message)
	case "PreconditionFailed":
		return fmt.Errorf("%w (%s)", backend.ErrExists, resp.Code)
	}
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%w (HTTP 404)", backend.ErrNotExist)
	}
	if resp.StatusCode == http.StatusForbidden {
		return fmt.Errorf("%w: HTTP 403 %s", backend.ErrPermission, resp.Code)
	}
	return err
}

// Save stores data under h, refusing to replace an existing object.
func (b *Backend) Save(ctx context.Context, h backend.Handle, data []byte) error {
	if err := backend.CheckHandle(h); err != nil {
		return fmt.Errorf("save %v: %w", h, err)
	}
	if _, err := b.Stat(ctx, h); err == nil {
		return fmt.Errorf("save %v: %w", h, backend.ErrExists)
	} else if !errors.Is(err, backend.ErrNotExist) {
		return fmt.Errorf("save %v: %w", h, err)
	}
	opts := minio.PutObjectOptions{
		ContentType:    "application/octet-stream",
		SendContentMd5: true,
		// Packs above one part go up in parts of 16 MiB; most fit in one.
		PartSize:         16 << 20,
		DisableMultipart: len(data) <= 64<<20,
	}
	opts.SetMatchETagExcept("*") // servers that know conditional writes refuse to replace
	b.lockMu.RLock()
	if b.lockMode != "" {
		opts.Mode = retentionMode(b.lockMode)
		opts.RetainUntilDate = time.Now().Add(b.lockFor).UTC().Truncate(time.Second).Add(time.Second)
	}
	b.lockMu.RUnlock()
	_, err := b.client.PutObject(ctx, b.cfg.Bucket, b.key(h), bytes.NewReader(data), int64(len(data)), opts)
	if err != nil {
		return fmt.Errorf("save %v: %w", h, mapErr(err))
	}
	return nil
}

func retentionMode(m string) minio.RetentionMode {
	if m == "governance" {
		return minio.Governance
	}
	return minio.Compliance
}

// Load calls fn with a reader of length bytes at offset of h.
func (b *Backend) Load(ctx context.Context, h backend.Handle, length int, offset int64, fn func(rd io.Reader) error) error {
	if err := backend.CheckHandle(h); err != nil {
		return fmt.Errorf("load %v: %w", h, err)
	}
	if length < 0 || offset < 0 {
		return fmt.Errorf("load %v: negative length %d or offset %d", h, length, offset)
	}
	opts := minio.GetObjectOptions{}
	if length > 0 {
		if err := opts.SetRange(offset, offset+int64(length)-1); err != nil {
			return err
		}
	} else if offset > 0 {
		if err := opts.SetRange(offset, 0); err != nil {
			return err
		}
	}
	body, info, hdr, err := b.core.GetObject(ctx, b.cfg.Bucket, b.key(h), opts)
	if err != nil {
		resp := minio.ToErrorResponse(err)
		if resp.Code == "InvalidRange" {
			// Reading to the end from exactly the end is an empty read.
			if fi, serr := b.Stat(ctx, h); serr == nil && length == 0 && offset == fi.Size {
				return fn(bytes.NewReader(nil))
			}
			return fmt.Errorf("load %v: %d bytes at offset %d: %w", h, length, offset, io.ErrUnexpectedEOF)
		}
		return fmt.Errorf("load %v: %w", h, mapErr(err))
	}
	defer body.Close()
	want := info.Size // what the server says it sends
	if want < 0 {
		return fmt.Errorf("load %v: the server did not say how many bytes it sends: %w", h, io.ErrUnexpectedEOF)
	}
	if (length > 0 || offset > 0) && !strings.HasPrefix(hdr.Get("Content-Range"), fmt.Sprintf("bytes %d-", offset)) {
		return fmt.Errorf("load %v: asked for bytes from %d, the server answered %q", h, offset, hdr.Get("Content-Range"))
	}
	if length > 0 && want != int64(length) {
		return fmt.Errorf("load %v: %d bytes at offset %d, the server has %d: %w", h, length, offset, want, io.ErrUnexpectedEOF)
	}
	// A body cut short is an error, never a short file.
	rd := backend.ExactReader(body, want)
	if err := fn(rd); err != nil {
		return err
	}
	return nil
}

// Stat returns the size and time of h.
func (b *Backend) Stat(ctx context.Context, h backend.Handle) (backend.FileInfo, error) {
	if err := backend.CheckHandle(h); err != nil {
		return backend.FileInfo{}, fmt.Errorf("stat %v: %w", h, err)
	}
	oi, err := b.client.StatObject(ctx, b.cfg.Bucket, b.key(h), minio.StatObjectOptions{})
	if err != nil {
		return backend.FileInfo{}, fmt.Errorf("stat %v: %w", h, mapErr(err))
	}
	return backend.FileInfo{Name: h.Name, Size: oi.Size, ModTime: oi.LastModified}, nil
}

// Remove deletes h. On a versioned bucket the stored version itself is
// deleted (not hidden behind a delete marker), so that Object Lock decides.
func (b *Backend) Remove(ctx context.Context, h backend.Handle) error {
	if err := backend.CheckHandle(h); err != nil {
		return fmt.Errorf("remove %v: %w", h, err)
	}
	oi, err := b.client.StatObject(ctx, b.cfg.Bucket, b.key(h), minio.StatObjectOptions{})
	if err != nil {
		return fmt.Errorf("remove %v: %w", h, mapErr(err))
	}
	if err := b.client.RemoveObject(ctx, b.cfg.Bucket, b.key(h), minio.RemoveObjectOptions{VersionID: oi.VersionID}); err != nil {
		return fmt.Errorf("remove %v: %w", h, mapErr(err))
	}
	return nil
}

// ProbeDelete sends a DELETE for h without looking first (S3 answers 204 for
// a missing object when the credential may delete, 403 when it may not).
func (b *Backend) ProbeDelete(ctx context.Context, h backend.Handle) error {
	if err := backend.CheckHandle(h); err != nil {
		return err
	}
	if err := b.client.RemoveObject(ctx, b.cfg.Bucket, b.key(h), minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("remove %v: %w", h, mapErr(err))
	}
	return nil
}

// List calls fn for each object of type t.
func (b *Backend) List(ctx context.Context, t backend.FileType, fn func(backend.FileInfo) error) error {
	if t == backend.ConfigFile {
		return backend.ListConfig(ctx, b, fn)
	}
	if _, ok := typeDirs[t]; !ok {
		return fmt.Errorf("list %v: %w: unknown file type %d", t, backend.ErrInvalidHandle, int(t))
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	prefix := b.dirPrefix(t)
	for oi := range b.client.ListObjects(lctx, b.cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if oi.Err != nil {
			return fmt.Errorf("list %v: %w", t, mapErr(oi.Err))
		}
		name := path.Base(oi.Key)
		if strings.HasSuffix(oi.Key, "/") || strings.HasPrefix(name, ".") {
			continue
		}
		if t == backend.PackFile && (len(name) < 2 || oi.Key != b.key(backend.Handle{Type: t, Name: name})) {
			continue // not where this layout puts a pack of that name
		}
		if err := fn(backend.FileInfo{Name: name, Size: oi.Size, ModTime: oi.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}
