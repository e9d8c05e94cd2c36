package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"bunker/internal/backend"
	"bunker/internal/backend/limit"
	"bunker/internal/backend/local"
	"bunker/internal/backend/rest"
	"bunker/internal/backend/s3"
	"bunker/internal/repo/repository"
)

type globalOptions struct {
	repo         string
	passwordFile string
	json         bool
	quiet        bool
	compression  string
	limitUp      int
	limitDown    int
	cacert       string
	clientCert   string
	bucketLookup string
	connections  int

	// side, for a command that opens two repositories (copy, init
	// --copy-params-from), holds the environment of one of them; nil for
	// the process environment.
	side *sideEnv
}

// sideEnv is the environment of one repository of a two-repository
// command: vars replaces the process environment for the names it holds
// (an empty value is unset); creds holds storage credentials read from a
// --from-credentials-file or --to-credentials-file.
type sideEnv struct {
	vars  map[string]string
	creds map[string]string
	// isolated: S3 credentials come only from creds, never from the
	// process environment or ~/.aws (the source side of a copy).
	isolated bool
}

// getenv reads an environment variable as this side sees it.
func (g *globalOptions) getenv(name string) string {
	if g.side != nil {
		if v, ok := g.side.creds[name]; ok {
			return v
		}
		if v, ok := g.side.vars[name]; ok {
			return v
		}
	}
	return os.Getenv(name)
}

func (g *globalOptions) register(c *cobra.Command) {
	f := c.PersistentFlags()
	f.StringVarP(&g.repo, "repo", "r", "", "repository location (env BUNKER_REPOSITORY)")
	f.StringVar(&g.passwordFile, "password-file", "", "file holding the repository password (env BUNKER_PASSWORD_FILE; or set BUNKER_PASSWORD_COMMAND)")
	f.BoolVar(&g.json, "json", false, "print machine-readable JSON")
	f.BoolVarP(&g.quiet, "quiet", "q", false, "print only errors and the result")
	f.StringVar(&g.compression, "compression", "auto", "compression for new data: auto, fastest, max, off")
	f.IntVar(&g.limitUp, "limit-upload", 0, "limit uploads to this many `KiB/s` (0: unlimited)")
	f.IntVar(&g.limitDown, "limit-download", 0, "limit downloads to this many `KiB/s` (0: unlimited)")
	f.StringVar(&g.cacert, "cacert", "", "PEM `file` of CA certificates to trust for the storage server (env BUNKER_CACERT)")
	f.StringVar(&g.clientCert, "tls-client-cert", "", "PEM `file` with a client certificate and key for the repository server (env BUNKER_TLS_CLIENT_CERT)")
	f.StringVar(&g.bucketLookup, "s3-bucket-lookup", "auto", "S3 addressing: auto, path (host/bucket/key) or dns (bucket.host/key)")
	f.IntVar(&g.connections, "connections", 0, "at most this many connections to the storage (0: the backend's default)")
}

func (g *globalOptions) repoLocation() (string, error) {
	loc := g.repo
	if loc == "" {
		loc = g.getenv("BUNKER_REPOSITORY")
	}
	if loc == "" {
		return "", usagef("no repository given: use --repo or set BUNKER_REPOSITORY")
	}
	return loc, nil
}

// restConfig builds the repository-server settings: the password from
// BUNKER_REST_PASSWORD_FILE or BUNKER_REST_PASSWORD, a client certificate
// from --tls-client-cert or BUNKER_TLS_CLIENT_CERT.
func (g *globalOptions) restConfig(loc string) (rest.Config, error) {
	cfg, err := rest.ParseURL(loc)
	if err != nil {
		return cfg, usageError{err}
	}
	cfg.CACert = g.caCert()
	cfg.ClientCert = g.clientCert
	if cfg.ClientCert == "" {
		cfg.ClientCert = g.getenv("BUNKER_TLS_CLIENT_CERT")
	}
	if f := g.getenv("BUNKER_REST_PASSWORD_FILE"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return cfg, fmt.Errorf("BUNKER_REST_PASSWORD_FILE: %w", err)
		}
		cfg.Password = string(firstLine(b))
	} else {
		cfg.Password = g.getenv("BUNKER_REST_PASSWORD")
	}
	if cfg.User != "" && cfg.Password == "" {
		return cfg, usagef("rest user %q has no password: set BUNKER_REST_PASSWORD_FILE", cfg.User)
	}
	cfg.Connections = g.connections
	return cfg, nil
}

// caCert is the CA file for TLS to the storage: --cacert or BUNKER_CACERT.
func (g *globalOptions) caCert() string {
	if g.cacert != "" {
		return g.cacert
	}
	return g.getenv("BUNKER_CACERT")
}

// s3Config builds the S3 settings from the location and the flags.
func (g *globalOptions) s3Config(loc string) (s3.Config, error) {
	cfg, err := s3.ParseURL(loc)
	if err != nil {
		return cfg, usageError{err}
	}
	cfg.CACert = g.caCert()
	switch g.bucketLookup {
	case "auto", "":
	case "path":
		cfg.PathStyle = true
	case "dns":
		cfg.VirtualHost = true
	default:
		return cfg, usagef("--s3-bucket-lookup %q: want auto, path or dns", g.bucketLookup)
	}
	cfg.Connections = g.connections
	cfg.Region = g.getenv("AWS_DEFAULT_REGION")
	if g.side != nil && g.side.creds["AWS_ACCESS_KEY_ID"] != "" {
		cfg.AccessKey, cfg.SecretKey = g.side.creds["AWS_ACCESS_KEY_ID"], g.side.creds["AWS_SECRET_ACCESS_KEY"]
		cfg.SessionToken = g.side.creds["AWS_SESSION_TOKEN"]
	} else if g.side != nil && g.side.isolated {
		return cfg, usagef("no S3 credentials for %s: use --from-credentials-file or set BUNKER_FROM_AWS_ACCESS_KEY_ID and BUNKER_FROM_AWS_SECRET_ACCESS_KEY", cfg.Bucket)
	}
	return cfg, nil
}

// password reads the password from, in order: --password-file,
// BUNKER_PASSWORD_FILE, BUNKER_PASSWORD_COMMAND, the terminal. It is never
// accepted as a command-line argument.
func (g *globalOptions) password(prompt string, confirm bool) ([]byte, error) {
	file := g.passwordFile
	if file == "" {
		file = g.getenv("BUNKER_PASSWORD_FILE")
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read password file: %w", err)
		}
		return checkPassword(firstLine(b))
	}
	if cmd := g.getenv("BUNKER_PASSWORD_COMMAND"); cmd != "" {
		var out bytes.Buffer
		c := exec.Command("/bin/sh", "-c", cmd)
		c.Stdout, c.Stderr = &out, os.Stderr
		if err := c.Run(); err != nil {
			return nil, fmt.Errorf("BUNKER_PASSWORD_COMMAND failed: %w", err)
		}
		return checkPassword(firstLine(out.Bytes()))
	}
	return readTerminalPassword(prompt, confirm)
}

func firstLine(b []byte) []byte {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	return bytes.TrimSuffix(b, []byte("\r"))
}

func checkPassword(p []byte) ([]byte, error) {
	if len(p) == 0 {
		return nil, errors.New("the password is empty")
	}
	return p, nil
}

// readTerminalPassword prompts on /dev/tty with echo off.
func readTerminalPassword(prompt string, confirm bool) ([]byte, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, usagef("no password: use --password-file, BUNKER_PASSWORD_FILE or BUNKER_PASSWORD_COMMAND")
	}
	defer tty.Close()
	read := func(p string) ([]byte, error) {
		fmt.Fprint(tty, p)
		fd := int(tty.Fd())
		old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		if err != nil {
			return nil, usagef("no password: use --password-file, BUNKER_PASSWORD_FILE or BUNKER_PASSWORD_COMMAND")
		}
		noecho := *old
		noecho.Lflag &^= unix.ECHO
		if err := unix.IoctlSetTermios(fd, unix.TCSETS, &noecho); err != nil {
			return nil, err
		}
		defer func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old); fmt.Fprintln(tty) }()
		var line []byte
		var b [1]byte
		for {
			n, err := tty.Read(b[:])
			if n == 0 || err != nil || b[0] == '\n' {
				break
			}
			line = append(line, b[0])
		}
		return checkPassword(bytes.TrimSuffix(line, []byte("\r")))
	}
	p, err := read(prompt)
	if err != nil || !confirm {
		return p, err
	}
	again, err := read("enter the password again: ")
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(p, again) {
		return nil, errors.New("the passwords do not match")
	}
	return p, nil
}

func (g *globalOptions) repoOptions() (repository.Options, error) {
	comp, err := repository.ParseCompression(g.compression)
	if err != nil {
		return repository.Options{}, usageError{err}
	}
	return repository.Options{Compression: comp, PackSize: testPackSize}, nil
}

// limits wraps be with the bandwidth and connection limits of the flags.
func (g *globalOptions) limits(be backend.Backend) (backend.Backend, error) {
	if g.limitUp < 0 || g.limitDown < 0 || g.connections < 0 {
		be.Close()
		return nil, usagef("--limit-upload, --limit-download and --connections must not be negative")
	}
	return limit.Wrap(be, limit.Options{Upload: int64(g.limitUp) << 10, Download: int64(g.limitDown) << 10, Connections: g.connections}), nil
}

// openBackend opens the storage of an existing repository.
func (g *globalOptions) openBackend(ctx context.Context) (backend.Backend, error) {
	return g.backend(ctx, false, nil)
}

// createBackend prepares the storage of a new repository.
func (g *globalOptions) createBackend(ctx context.Context, lock *s3.LockConfig) (backend.Backend, error) {
	return g.backend(ctx, true, lock)
}

// backend opens (or, with create, prepares) the storage the location names,
// with the limits of the flags; missing and existing repositories map to
// the repository's errors the same way for every kind of storage.
func (g *globalOptions) backend(ctx context.Context, create bool, lock *s3.LockConfig) (backend.Backend, error) {
	loc, err := g.repoLocation()
	if err != nil {
		return nil, err
	}
	if lock != nil && !strings.HasPrefix(loc, "s3:") {
		return nil, usagef("--object-lock needs an s3: repository")
	}
	var be backend.Backend
	switch {
	case strings.HasPrefix(loc, "s3:"):
		cfg, cerr := g.s3Config(loc)
		if cerr != nil {
			return nil, cerr
		}
		cfg.Lock = lock
		if create {
			be, err = s3.Create(ctx, cfg)
		} else {
			be, err = s3.Open(ctx, cfg)
		}
	case strings.HasPrefix(loc, "rest:"):
		cfg, cerr := g.restConfig(loc)
		if cerr != nil {
			return nil, cerr
		}
		if create {
			be, err = rest.Create(ctx, cfg)
		} else {
			be, err = rest.Open(ctx, cfg)
		}
	default:
		dir := strings.TrimPrefix(loc, "local:")
		if create {
			be, err = local.Create(ctx, dir)
		} else {
			be, err = local.Open(ctx, dir)
		}
	}
	switch {
	case create && errors.Is(err, backend.ErrExists):
		return nil, fmt.Errorf("%w at %s", repository.ErrAlreadyExists, loc)
	case !create && errors.Is(err, backend.ErrNotExist):
		return nil, fmt.Errorf("%w at %s", repository.ErrNotFound, loc)
	case create && err != nil:
		return nil, fmt.Errorf("create repository: %w", err)
	case err != nil:
		return nil, err
	}
	return g.limits(be)
}

// openRepo opens the repository and, if withIndex, loads its index.
func (g *globalOptions) openRepo(ctx context.Context, withIndex bool) (*repository.Repository, error) {
	be, err := g.openBackend(ctx)
	if err != nil {
		return nil, err
	}
	pw, err := g.password("enter the repository password: ", false)
	if err != nil {
		be.Close()
		return nil, err
	}
	opts, err := g.repoOptions()
	if err != nil {
		be.Close()
		return nil, err
	}
	setMemoryLimitForKDF()
	r, err := repository.Open(ctx, be, pw, opts)
	setMemoryLimit(0) // the key is derived
	if err != nil {
		be.Close()
		return nil, err
	}
	if withIndex {
		if err := r.LoadIndex(ctx); err != nil {
			r.Close()
			be.Close()
			return nil, err
		}
		setMemoryLimit(r.Index().Len())
	}
	return r, nil
}

// openRepoLocked opens the repository and takes a lock on it: shared for
// commands that add or read, exclusive for those that delete. release
// unlocks and closes.
func (g *globalOptions) openRepoLocked(ctx context.Context, withIndex, exclusive bool) (r *repository.Repository, lock *repository.Lock, release func(), err error) {
	r, err = g.openRepo(ctx, false)
	if err != nil {
		return nil, nil, nil, err
	}
	if exclusive {
		// Commands that take the exclusive lock delete or replace: with an
		// append-only credential they stop here, before writing anything.
		if err := r.CheckCanDelete(ctx); err != nil {
			closeRepo(r)
			return nil, nil, nil, err
		}
	}
	lock, err = r.Lock(ctx, exclusive)
	if err != nil {
		closeRepo(r)
		return nil, nil, nil, err
	}
	release = func() { _ = lock.Unlock(ctx); closeRepo(r) }
	// The index is read under the lock: a prune that holds the exclusive
	// lock rewrites it.
	if withIndex {
		if err := r.LoadIndex(ctx); err != nil {
			release()
			return nil, nil, nil, err
		}
		setMemoryLimit(r.Index().Len())
	}
	return r, lock, release, nil
}

func closeRepo(r *repository.Repository) {
	r.Close()
	r.Backend().Close()
}

// printJSON writes v as one line of JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// msgf prints a human message unless --quiet or --json.
func (g *globalOptions) msgf(c *cobra.Command, format string, args ...any) {
	if g.quiet || g.json {
		return
	}
	fmt.Fprintf(c.OutOrStdout(), format, args...)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
