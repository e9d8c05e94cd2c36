package fs

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// MaxNameLen is the longest name (in bytes) a tree entry may have.
const MaxNameLen = 255

// ErrInvalidName is wrapped by every error returned by ValidName.
var ErrInvalidName = errors.New("invalid name")

// ValidName reports whether name may be used as the name of a tree entry: it
// must be non-empty, neither "." nor "..", contain no '/' and no NUL byte and
// be at most MaxNameLen bytes long. It need not be valid UTF-8.
func ValidName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty name", ErrInvalidName)
	case name == "." || name == "..":
		return fmt.Errorf("%w: %q is not allowed", ErrInvalidName, name)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: name is %d bytes long, at most %d allowed", ErrInvalidName, len(name), MaxNameLen)
	case strings.IndexByte(name, '/') >= 0:
		return fmt.Errorf("%w: %q contains '/'", ErrInvalidName, name)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%w: %q contains a NUL byte", ErrInvalidName, name)
	}
	return nil
}

// zeroBlock is compared against with bytes.Equal, whose assembly
// implementation (SIMD on amd64/arm64) is much faster than any loop in Go and
// returns at the first difference.
var zeroBlock [16 << 10]byte

// IsZero reports whether b consists of zero bytes only (true for an empty b).
func IsZero(b []byte) bool {
	for len(b) > len(zeroBlock) {
		if !bytes.Equal(b[:len(zeroBlock)], zeroBlock[:]) {
			return false
		}
		b = b[len(zeroBlock):]
	}
	return bytes.Equal(b, zeroBlock[:len(b)])
}
