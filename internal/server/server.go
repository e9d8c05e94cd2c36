// Package server is Bunker's repository server (`bunker serve`): it serves
// repositories stored in local directories over HTTPS (HTTP/2) to clients
// using rest: URLs, so that a plain disk on a backup target machine can be
// an append-only repository.
//
// Protocol (every path is below /<repository>/):
//
//	GET    /<repo>/<type>/           list: JSON lines {"name","size","mtime"}
//	HEAD   /<repo>/<type>/<name>     size (Content-Length) and Last-Modified
//	GET    /<repo>/<type>/<name>     content; a Range: bytes=a-b header reads a part
//	POST   /<repo>/<type>/<name>     store (never replaces: 409 if it exists)
//	DELETE /<repo>/<type>/<name>     remove
//	POST   /<repo>/                  create the repository's directories (admin)
//
// <type> is config (no name), keys, data, index, snapshots, locks or
// settings. Every object except the config is named by the BLAKE3-256 hash
// of its bytes; the server checks that before storing.
//
// Users authenticate with HTTP basic auth against a users file (argon2id
// hashes) or with a TLS client certificate whose common name is a user of
// the file. Roles: read (list, read), append (read, and create new objects;
// delete only lock files it created itself), admin (everything). Every
// refused request is logged. /metrics serves Prometheus metrics.
package server

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/crypto/argon2"

	"bunker/internal/backend"
	"bunker/internal/backend/local"
	"bunker/internal/repo/crypto"
)

// Role is what a user may do.
type Role int

// Roles, each including the ones before it.
const (
	RoleRead Role = iota + 1
	RoleAppend
	RoleAdmin
)

func (r Role) String() string {
	switch r {
	case RoleRead:
		return "read"
	case RoleAppend:
		return "append"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// ParseRole parses read, append or admin.
func ParseRole(s string) (Role, error) {
	switch s {
	case "read":
		return RoleRead, nil
	case "append":
		return RoleAppend, nil
	case "admin":
		return RoleAdmin, nil
	}
	return 0, fmt.Errorf("unknown role %q (want read, append or admin)", s)
}

// User is one entry of the users file.
type User struct {
	Name string
	Role Role
	// Hash is "argon2id$t$m$p$salt$key" (base64), or empty for a user that
	// can only authenticate with a client certificate.
	Hash string
	// Repos limits the user to these repositories; empty means all.
	Repos []string
}

// Users file format: one user a line, "name:role:hash[:repo,repo...]";
// blank lines and lines starting with # are ignored.

// LoadUsers reads a users file.
func LoadUsers(path string) (map[string]User, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	users := map[string]User{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, ":")
		if len(parts) < 3 || len(parts) > 4 || !validName.MatchString(parts[0]) {
			return nil, fmt.Errorf("%s:%d: want name:role:hash[:repos]", path, n)
		}
		role, err := ParseRole(parts[1])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		u := User{Name: parts[0], Role: role, Hash: parts[2]}
		if u.Hash != "" && !strings.HasPrefix(u.Hash, "argon2id$") {
			return nil, fmt.Errorf("%s:%d: the hash must come from `bunker serve hash-password`", path, n)
		}
		if len(parts) == 4 && parts[3] != "" {
			u.Repos = strings.Split(parts[3], ",")
		}
		if _, dup := users[u.Name]; dup {
			return nil, fmt.Errorf("%s:%d: user %q listed twice", path, n, u.Name)
		}
		users[u.Name] = u
	}
	return users, sc.Err()
}

// HashPassword returns the users-file hash of a password.
func HashPassword(pw []byte) string {
	salt := make([]byte, 16)
	crypto.Random(salt)
	const t, m, p = 2, 32 << 10, 2
	key := argon2.IDKey(pw, salt, t, m, p, 32)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("argon2id$%d$%d$%d$%s$%s", t, m, p, enc.EncodeToString(salt), enc.EncodeToString(key))
}

func checkPassword(hash string, pw []byte) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[0] != "argon2id" {
		return false
	}
	t, err1 := strconv.ParseUint(parts[1], 10, 32)
	m, err2 := strconv.ParseUint(parts[2], 10, 32)
	p, err3 := strconv.ParseUint(parts[3], 10, 8)
	salt, err4 := base64.RawStdEncoding.DecodeString(parts[4])
	key, err5 := base64.RawStdEncoding.DecodeString(parts[5])
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil || t == 0 || t > 10 || m > 1<<22 || p == 0 {
		return false
	}
	got := argon2.IDKey(pw, salt, uint32(t), uint32(m), uint8(p), uint32(len(key)))
	return subtle.ConstantTimeCompare(got, key) == 1
}

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)

// Options configure a Server.
type Options struct {
	Root  string          // directory holding one subdirectory per repository
	Users map[string]User // from LoadUsers
	Log   *slog.Logger
	// MaxObject bounds an upload's size (default 256 MiB).
	MaxObject int64
	// NoNameCheck stores objects without checking that their content
	// matches their name. Only the backend conformance suite, which stores
	// arbitrary bytes under arbitrary names, sets it.
	NoNameCheck bool
}

// Server serves repositories. It is an http.Handler.
type Server struct {
	opts    Options
	mu      sync.Mutex
	repos   map[string]*local.Backend
	metrics *metrics
	mux     *http.ServeMux
	authMu  sync.Mutex
	authOK  map[string]string // user -> the password that last verified
	// lockOwners: repo/lock name -> the non-admin user who stored it.
	lockOwners sync.Map
	hashSem    chan struct{} // bounds concurrent password verifications
}

type metrics struct {
	requests *prometheus.CounterVec
	refused  *prometheus.CounterVec
	bytesIn  prometheus.Counter
	bytesOut prometheus.Counter
	reg      *prometheus.Registry
}

// New returns a Server.
func New(opts Options) *Server {
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if opts.MaxObject <= 0 {
		opts.MaxObject = 256 << 20
	}
	reg := prometheus.NewRegistry()
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bunker_server_requests_total", Help: "Requests by method and status."}, []string{"method", "status"}),
		refused:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bunker_server_refused_total", Help: "Refused requests by reason."}, []string{"reason"}),
		bytesIn:  prometheus.NewCounter(prometheus.CounterOpts{Name: "bunker_server_received_bytes_total", Help: "Bytes of objects stored."}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{Name: "bunker_server_sent_bytes_total", Help: "Bytes of objects sent."}),
		reg:      reg,
	}
	reg.MustRegister(m.requests, m.refused, m.bytesIn, m.bytesOut)
	s := &Server{opts: opts, repos: map[string]*local.Backend{}, metrics: m, authOK: map[string]string{},
		hashSem: make(chan struct{}, max(2, runtime.NumCPU()))}
	s.mux = http.NewServeMux()
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("/", s.serveRepo)
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	s.mux.ServeHTTP(sw, r)
	s.metrics.requests.WithLabelValues(r.Method, strconv.Itoa(sw.status)).Inc()
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// refuse answers an error and logs it; the log never holds secrets.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, user string, code int, reason, detail string) {
	s.metrics.refused.WithLabelValues(reason).Inc()
	s.opts.Log.Warn("refused", "user", user, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "status", code, "reason", reason, "detail", detail)
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="bunker"`)
	}
	http.Error(w, reason+": "+detail, code)
}

// authenticate returns the request's user: from the verified client
// certificate (its common name), else from basic auth.
func (s *Server) authenticate(r *http.Request) (User, bool) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
		u, ok := s.opts.Users[cn]
		return u, ok
	}
	name, pw, ok := r.BasicAuth()
	if !ok {
		return User{}, false
	}
	u, ok := s.opts.Users[name]
	if !ok || u.Hash == "" {
		return User{}, false
	}
	// Verifying argon2 on every request would cost more than the request:
	// remember the last password that verified, compared in constant time.
	s.authMu.Lock()
	cached, hit := s.authOK[name]
	s.authMu.Unlock()
	if hit && subtle.ConstantTimeCompare([]byte(cached), []byte(pw)) == 1 {
		return u, true
	}
	// Each verification costs 32 MiB and tens of milliseconds: at most a
	// few run at once, so that a flood of wrong passwords cannot exhaust
	// the server's memory.
	s.hashSem <- struct{}{}
	ok = checkPassword(u.Hash, []byte(pw))
	<-s.hashSem
	if !ok {
		return User{}, false
	}
	s.authMu.Lock()
	s.authOK[name] = pw
	s.authMu.Unlock()
	return u, true
}

var typeNames = map[string]backend.FileType{
	"config": backend.ConfigFile, "keys": backend.KeyFile, "data": backend.PackFile, "index": backend.IndexFile,
	"snapshots": backend.SnapshotFile, "locks": backend.LockFile, "settings": backend.SettingsFile,
}

func (s *Server) serveRepo(w http.ResponseWriter, r *http.Request) {
	user, ok := s.authenticate(r)
	if !ok {
		s.refuse(w, r, "", http.StatusUnauthorized, "unauthenticated", "no valid credentials")
		return
	}
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 3)
	repoName := parts[0]
	if !validName.MatchString(repoName) {
		s.refuse(w, r, user.Name, http.StatusBadRequest, "bad-path", "invalid repository name")
		return
	}
	if len(user.Repos) > 0 && !contains(user.Repos, repoName) {
		s.refuse(w, r, user.Name, http.StatusForbidden, "forbidden", "no access to this repository")
		return
	}
	// POST /<repo>/ creates the repository.
	if len(parts) == 1 || (len(parts) == 2 && parts[1] == "") {
		if r.Method != http.MethodPost {
			s.refuse(w, r, user.Name, http.StatusMethodNotAllowed, "bad-method", r.Method)
			return
		}
		if user.Role < RoleAdmin {
			s.refuse(w, r, user.Name, http.StatusForbidden, "forbidden", "creating a repository needs the admin role")
			return
		}
		s.create(w, r, user, repoName)
		return
	}
	ft, ok := typeNames[parts[1]]
	if !ok {
		s.refuse(w, r, user.Name, http.StatusBadRequest, "bad-path", "unknown file type")
		return
	}
	name := ""
	if len(parts) == 3 {
		name = parts[2]
	}
	if ft == backend.ConfigFile && name != "" {
		s.refuse(w, r, user.Name, http.StatusBadRequest, "bad-path", "config has no name")
		return
	}
	be, err := s.open(repoName)
	if err != nil {
		s.refuse(w, r, user.Name, http.StatusNotFound, "no-repository", "repository does not exist")
		return
	}
	listing := ft != backend.ConfigFile && name == ""
	h := backend.Handle{Type: ft, Name: name}
	if !listing {
		if err := backend.CheckHandle(h); err != nil {
			s.refuse(w, r, user.Name, http.StatusBadRequest, "bad-path", err.Error())
			return
		}
	}
	switch {
	case listing && r.Method == http.MethodGet:
		s.list(w, r, user, be, ft)
	case !listing && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		s.load(w, r, user, be, h)
	case !listing && r.Method == http.MethodPost:
		s.save(w, r, user, be, repoName, h)
	case !listing && r.Method == http.MethodDelete:
		s.remove(w, r, user, be, repoName, h)
	default:
		s.refuse(w, r, user.Name, http.StatusMethodNotAllowed, "bad-method", r.Method)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func (s *Server) open(name string) (*local.Backend, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if be, ok := s.repos[name]; ok {
		return be, nil
	}
	be, err := local.OpenLayout(context.Background(), filepath.Join(s.opts.Root, name))
	if err != nil {
		return nil, err
	}
	s.repos[name] = be
	return be, nil
}

func (s *Server) create(w http.ResponseWriter, r *http.Request, user User, name string) {
	be, err := local.Create(r.Context(), filepath.Join(s.opts.Root, name))
	if errors.Is(err, backend.ErrExists) {
		s.refuse(w, r, user.Name, http.StatusConflict, "exists", "repository already exists")
		return
	}
	if err != nil {
		s.fail(w, r, user, err)
		return
	}
	_ = be.Close()
	w.WriteHeader(http.StatusCreated)
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, user User, err error) {
	switch {
	case errors.Is(err, backend.ErrNotExist):
		http.Error(w, "not found", http.StatusNotFound)
	case errors.Is(err, backend.ErrExists):
		s.refuse(w, r, user.Name, http.StatusConflict, "exists", "an object of this name is stored; objects are never replaced")
	case errors.Is(err, backend.ErrNoSpace):
		s.opts.Log.Error("storage full", "path", r.URL.Path)
		http.Error(w, "no space left on the server", http.StatusInsufficientStorage)
	case errors.Is(err, io.ErrUnexpectedEOF):
		http.Error(w, "range beyond the end of the object", http.StatusRequestedRangeNotSatisfiable)
	default:
		s.opts.Log.Error("request failed", "user", user.Name, "method", r.Method, "path", r.URL.Path, "error", err.Error())
		http.Error(w, "internal error", http.StatusInternalServerError)
	}
}

type listEntry struct {
	Name  string `json:"name"`
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime"` // unix nanoseconds
}

func (s *Server) list(w http.ResponseWriter, r *http.Request, user User, be *local.Backend, ft backend.FileType) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	err := be.List(r.Context(), ft, func(fi backend.FileInfo) error {
		return enc.Encode(listEntry{Name: fi.Name, Size: fi.Size, MTime: fi.ModTime.UnixNano()})
	})
	if err != nil {
		s.opts.Log.Error("list failed", "user", user.Name, "path", r.URL.Path, "error", err.Error())
		// The status is sent; a cut listing ends without its final line.
		fmt.Fprintln(w, `{"error":"listing failed"}`)
	}
}

func (s *Server) load(w http.ResponseWriter, r *http.Request, user User, be *local.Backend, h backend.Handle) {
	fi, err := be.Stat(r.Context(), h)
	if err != nil {
		s.fail(w, r, user, err)
		return
	}
	w.Header().Set("Last-Modified", fi.ModTime.UTC().Format(http.TimeFormat))
	w.Header().Set("X-Bunker-Mtime", strconv.FormatInt(fi.ModTime.UnixNano(), 10))
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Length", strconv.FormatInt(fi.Size, 10))
		return
	}
	offset, length, partial, err := parseRange(r.Header.Get("Range"), fi.Size)
	if err != nil {
		http.Error(w, err.Error(), http.StatusRequestedRangeNotSatisfiable)
		return
	}
	w.Header().Set("X-Bunker-Size", strconv.FormatInt(fi.Size, 10))
	writeHeader := func() {
		w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
		w.Header().Set("Content-Type", "application/octet-stream")
		if partial {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", offset, offset+length-1, fi.Size))
			w.WriteHeader(http.StatusPartialContent)
		}
	}
	if length == 0 { // an empty object, or an empty range at its end
		writeHeader()
		return
	}
	started := false
	err = be.Load(r.Context(), h, int(length), offset, func(rd io.Reader) error {
		started = true
		writeHeader()
		n, err := io.Copy(w, rd)
		s.metrics.bytesOut.Add(float64(n))
		return err
	})
	if err != nil && !started {
		// Nothing is sent yet: answer the error, never an empty success.
		s.fail(w, r, user, err)
		return
	}
	if err != nil {
		s.opts.Log.Error("read failed", "user", user.Name, "path", r.URL.Path, "error", err.Error())
	}
}

// parseRange parses "bytes=a-b" (or none: the whole object).
func parseRange(h string, size int64) (offset, length int64, partial bool, err error) {
	if h == "" {
		return 0, size, false, nil
	}
	spec, ok := strings.CutPrefix(h, "bytes=")
	a, b, ok2 := strings.Cut(spec, "-")
	if !ok || !ok2 || strings.Contains(spec, ",") {
		return 0, 0, false, fmt.Errorf("bad range %q", h)
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 || start > size {
		return 0, 0, false, fmt.Errorf("bad range %q for %d bytes", h, size)
	}
	end := size - 1
	if b != "" {
		if end, err = strconv.ParseInt(b, 10, 64); err != nil || end < start-1 || end >= size {
			return 0, 0, false, fmt.Errorf("bad range %q for %d bytes", h, size)
		}
	}
	return start, end - start + 1, true, nil
}

func (s *Server) save(w http.ResponseWriter, r *http.Request, user User, be *local.Backend, repoName string, h backend.Handle) {
	if user.Role < RoleAppend {
		s.refuse(w, r, user.Name, http.StatusForbidden, "forbidden", "the read role cannot store")
		return
	}
	if (h.Type == backend.ConfigFile || h.Type == backend.KeyFile || h.Type == backend.SettingsFile) && user.Role < RoleAdmin {
		// The config, keys and settings decide who can read and what may
		// be forgotten.
		s.refuse(w, r, user.Name, http.StatusForbidden, "forbidden", "storing "+h.Type.String()+" files needs the admin role")
		return
	}
	if r.ContentLength > s.opts.MaxObject {
		s.refuse(w, r, user.Name, http.StatusRequestEntityTooLarge, "too-large", "object larger than the server accepts")
		return
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, s.opts.MaxObject+1))
	if err != nil {
		s.refuse(w, r, user.Name, http.StatusBadRequest, "bad-body", "upload interrupted")
		return
	}
	if int64(len(data)) > s.opts.MaxObject {
		s.refuse(w, r, user.Name, http.StatusRequestEntityTooLarge, "too-large", "object larger than the server accepts")
		return
	}
	if r.ContentLength >= 0 && int64(len(data)) != r.ContentLength {
		s.refuse(w, r, user.Name, http.StatusBadRequest, "bad-body", "body shorter than its Content-Length")
		return
	}
	if !s.opts.NoNameCheck && h.Type != backend.ConfigFile && crypto.FileID(data).String() != h.Name {
		s.refuse(w, r, user.Name, http.StatusBadRequest, "name-mismatch", "content does not match its name")
		return
	}
	if err := be.Save(r.Context(), h, data); err != nil {
		s.fail(w, r, user, err)
		return
	}
	s.metrics.bytesIn.Add(float64(len(data)))
	if h.Type == backend.LockFile && user.Role < RoleAdmin {
		s.setLockOwner(repoName, h.Name, user.Name)
	}
	w.WriteHeader(http.StatusCreated)
}

func (s *Server) remove(w http.ResponseWriter, r *http.Request, user User, be *local.Backend, repoName string, h backend.Handle) {
	switch {
	case user.Role >= RoleAdmin:
	case user.Role == RoleAppend && h.Type == backend.LockFile && s.lockOwner(repoName, h.Name) == user.Name:
	default:
		s.refuse(w, r, user.Name, http.StatusForbidden, "forbidden", "the "+user.Role.String()+" role cannot delete this")
		return
	}
	if err := be.Remove(r.Context(), h); err != nil {
		s.fail(w, r, user, err)
		return
	}
	if h.Type == backend.LockFile {
		s.setLockOwner(repoName, h.Name, "")
	}
	w.WriteHeader(http.StatusNoContent)
}

// Lock owners are remembered in memory: after a server restart an append
// user's old lock files can be removed only by an admin (or go stale, which
// other clients then ignore).
func (s *Server) setLockOwner(repoName, lock, user string) {
	k := repoName + "/" + lock
	if user == "" {
		s.lockOwners.Delete(k)
	} else {
		s.lockOwners.Store(k, user)
	}
}

func (s *Server) lockOwner(repoName, lock string) string {
	v, _ := s.lockOwners.Load(repoName + "/" + lock)
	u, _ := v.(string)
	return u
}
