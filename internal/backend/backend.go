// Package backend defines where repository files live. A Backend stores whole,
// named, immutable files; it knows nothing of what they contain.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"
)

// FileType is the kind of a repository file; each kind lives in its own namespace.
type FileType int

// The repository's file kinds.
const (
	ConfigFile FileType = iota
	KeyFile
	PackFile
	IndexFile
	SnapshotFile
	LockFile
	// SettingsFile holds the repository's changeable settings (min-retention).
	SettingsFile
)

// AllTypes lists every file type, for callers that walk a whole repository.
var AllTypes = []FileType{ConfigFile, KeyFile, PackFile, IndexFile, SnapshotFile, LockFile, SettingsFile}

func (t FileType) String() string {
	switch t {
	case ConfigFile:
		return "config"
	case KeyFile:
		return "key"
	case PackFile:
		return "pack"
	case IndexFile:
		return "index"
	case SnapshotFile:
		return "snapshot"
	case LockFile:
		return "lock"
	case SettingsFile:
		return "settings"
	}
	return "unknown"
}

// Handle names one file. The config file has the empty Name.
type Handle struct {
	Type FileType
	Name string
}

func (h Handle) String() string {
	if h.Type == ConfigFile {
		return "config"
	}
	return h.Type.String() + "/" + h.Name
}

// FileInfo describes a stored file.
type FileInfo struct {
	Name string
	Size int64
	// ModTime is when the storage stored the file, by the storage's clock.
	// Prune compares it with the time of a file it just wrote, never with
	// the local clock.
	ModTime time.Time
}

// Sentinel errors. Implementations wrap them so that errors.Is works.
var (
	// ErrNotExist: the named file is not stored.
	ErrNotExist = errors.New("file does not exist")
	// ErrExists: Save was asked to store a name that is already stored.
	ErrExists = errors.New("file already exists")
	// ErrNoSpace: the storage is full.
	ErrNoSpace = errors.New("no space left on storage")
	// ErrPermission: the credential or the storage refuses the operation.
	ErrPermission = errors.New("permission denied by storage")
)

// Properties are a backend's fixed capabilities.
type Properties struct {
	// Connections is how many operations the backend serves well at once.
	Connections int
	// HasAtomicReplace is false for every backend: files are never replaced.
	HasAtomicReplace bool
}

// Backend is the contract every storage implements. All methods are safe for
// concurrent use by several goroutines. Errors that may pass with a retry are
// returned as is; ErrNotExist, ErrExists, ErrNoSpace and ErrPermission are
// permanent for the call that got them.
type Backend interface {
	// Location is a display name (a path or URL without credentials).
	Location() string

	// Save stores data under h atomically: after Save returns nil, a reader sees
	// the whole file and it survives a crash; after a failed or interrupted Save,
	// no reader ever sees a partial file under h. Save never replaces an
	// existing file: if h exists it returns an error wrapping ErrExists and the
	// stored file is unchanged. Save does not keep data after it returns.
	Save(ctx context.Context, h Handle, data []byte) error

	// Load calls fn with a reader of length bytes at offset of h (length 0 reads
	// to the end). The reader is valid only during fn; fn runs on the caller's
	// goroutine. A file shorter than offset+length is an error (io.ErrUnexpectedEOF).
	// A missing file is ErrNotExist.
	Load(ctx context.Context, h Handle, length int, offset int64, fn func(rd io.Reader) error) error

	// Stat returns the file's size, or ErrNotExist.
	Stat(ctx context.Context, h Handle) (FileInfo, error)

	// Remove deletes h. Removing a missing file returns ErrNotExist.
	Remove(ctx context.Context, h Handle) error

	// List calls fn once for each stored file of type t, in no particular order,
	// on the caller's goroutine. An error from fn stops the listing and is returned.
	List(ctx context.Context, t FileType, fn func(FileInfo) error) error

	// Properties reports the backend's capabilities.
	Properties() Properties

	// Close releases resources. The Backend must not be used afterwards.
	Close() error
}

// LoadAll reads a whole file into memory.
func LoadAll(ctx context.Context, be Backend, h Handle) ([]byte, error) {
	var out []byte
	err := be.Load(ctx, h, 0, 0, func(rd io.Reader) error {
		var err error
		out, err = io.ReadAll(rd)
		return err
	})
	return out, err
}

// TempFiler is an optional extension of a Backend whose files live on a local
// file system. A pack can then be written straight into a temporary file of
// the repository and committed by a rename, instead of being assembled in
// memory: a backup then holds no pack in memory at all.
type TempFiler interface {
	// TempFile creates an empty temporary file that List never shows.
	TempFile() (*os.File, error)
	// SaveTempFile makes the complete file f the file h, with the guarantees
	// of Save (atomic, durable, never replacing: ErrExists). f is closed and
	// its temporary name removed, whatever the outcome.
	SaveTempFile(ctx context.Context, h Handle, f *os.File) error
	// DiscardTempFile closes and removes a temporary file.
	DiscardTempFile(f *os.File)
}

// ErrInvalidHandle is returned for a handle that cannot name a file.
var ErrInvalidHandle = errors.New("invalid handle")

// CheckHandle reports whether h can name a file. Backends map names to path
// components or object keys, so a name must not be empty, contain a separator
// or NUL, or start with a dot (which would hide it, or reach ".."); pack names
// have at least two characters (local storage fans packs out by the first two)
// and the config has no name.
func CheckHandle(h Handle) error {
	if h.Type == ConfigFile {
		if h.Name != "" {
			return fmt.Errorf("%w: config handle with name %q", ErrInvalidHandle, h.Name)
		}
		return nil
	}
	if h.Type < ConfigFile || h.Type > SettingsFile {
		return fmt.Errorf("%w: unknown file type %d", ErrInvalidHandle, int(h.Type))
	}
	switch {
	case h.Name == "":
		return fmt.Errorf("%w: empty %v name", ErrInvalidHandle, h.Type)
	case strings.ContainsAny(h.Name, "/\\\x00"):
		return fmt.Errorf("%w: name %q contains a path separator or NUL", ErrInvalidHandle, h.Name)
	case strings.HasPrefix(h.Name, "."):
		return fmt.Errorf("%w: name %q starts with a dot", ErrInvalidHandle, h.Name)
	case h.Type == PackFile && len(h.Name) < 2:
		return fmt.Errorf("%w: pack name %q shorter than 2 characters", ErrInvalidHandle, h.Name)
	}
	return nil
}

// Retainer is an optional extension of a Backend whose storage can lock
// objects against deletion until a date (S3 Object Lock).
type Retainer interface {
	// SetRetention makes every object stored from now on locked for d in
	// mode ("compliance" or "governance").
	SetRetention(mode string, d time.Duration)
	// Retention returns an object's lock: its mode and retain-until date
	// (the zero time and "" for an object without a lock).
	Retention(ctx context.Context, h Handle) (mode string, until time.Time, err error)
	// ExtendRetention moves an object's retain-until date to until; it
	// never shortens a lock.
	ExtendRetention(ctx context.Context, h Handle, until time.Time) error
}

// DeleteProber is an optional extension of a Backend whose Remove looks
// before it deletes (and so never asks the storage to delete a missing
// file): ProbeDelete asks the storage to delete h even if it does not
// exist, and returns an error wrapping ErrPermission if it refuses.
type DeleteProber interface {
	ProbeDelete(ctx context.Context, h Handle) error
}

// Unwrapper is implemented by backends that decorate another (limits,
// fault injection), so that the optional interfaces of the one below can be
// found.
type Unwrapper interface {
	Unwrap() Backend
}

// As finds, in be or the backends it wraps, one that implements T.
func As[T any](be Backend) (T, bool) {
	for be != nil {
		if t, ok := be.(T); ok {
			return t, true
		}
		u, ok := be.(Unwrapper)
		if !ok {
			break
		}
		be = u.Unwrap()
	}
	var zero T
	return zero, false
}

// ExactReader returns a reader of exactly n bytes from r: if r ends early,
// the read that finds it out returns io.ErrUnexpectedEOF, so that a body cut
// short by the network is an error and never a short file.
func ExactReader(r io.Reader, n int64) io.Reader { return &exactReader{r: r, left: n} }

type exactReader struct {
	r    io.Reader
	left int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		return n, io.ErrUnexpectedEOF
	}
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// ListConfig is List for ConfigFile on backends whose storage has no
// listing of the config alone: fn gets the config's FileInfo if it exists.
func ListConfig(ctx context.Context, be Backend, fn func(FileInfo) error) error {
	fi, err := be.Stat(ctx, Handle{Type: ConfigFile})
	if errors.Is(err, ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return fn(fi)
}

// RedactURL returns u ("scheme://[user[:password]@]host/...") with any
// password replaced by "xxxxx", for messages: a URL that is refused for
// holding a password must not print it either.
func RedactURL(u string) string {
	i := strings.Index(u, "://")
	if i < 0 {
		return u
	}
	rest := u[i+3:]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	at := strings.LastIndex(rest[:end], "@")
	if at < 0 {
		return u
	}
	user, _, hasPassword := strings.Cut(rest[:at], ":")
	if !hasPassword {
		return u
	}
	return u[:i+3] + user + ":xxxxx" + rest[at:]
}

// URLParseError is the reason url.Parse gave, without the URL it quotes
// (which may hold a password).
func URLParseError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
