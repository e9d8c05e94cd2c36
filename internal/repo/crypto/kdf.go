package crypto

import (
	"fmt"

	"golang.org/x/crypto/argon2"
)

// KDFParams are argon2id parameters, stored in each key slot.
type KDFParams struct {
	Time    uint32 `json:"time"`
	Memory  uint32 `json:"memory"` // KiB
	Threads uint8  `json:"threads"`
}

// DefaultKDF costs about 0.1 s and 64 MiB on a current 2-core machine: more
// memory than OWASP's argon2id recommendations (46 MiB at t=1, 19 MiB at t=2)
// and RFC 9106's second option, while keeping every command's start fast (an
// unchanged re-backup takes well under a second in all). Memory, not passes,
// is what makes guessing expensive on GPUs.
var DefaultKDF = KDFParams{Time: 1, Memory: 64 * 1024, Threads: 2}

// TestKDF is cheap, for tests only.
var TestKDF = KDFParams{Time: 1, Memory: 64, Threads: 1}

// Limits refuse key slots that would make opening hang or exhaust memory. The
// cost bound (passes times memory) keeps the worst accepted slot to a few
// seconds: 16 times DefaultKDF, e.g. 1 GiB with t=2 or 64 MiB with t=32.
const (
	maxKDFTime   = 100
	maxKDFMemory = 1 << 20 // KiB: 1 GiB
	maxKDFCost   = 2 << 20 // Time*Memory in KiB: 2 GiB of passes
)

// Validate checks that the parameters are sane.
func (p KDFParams) Validate() error {
	if p.Time < 1 || p.Time > maxKDFTime || p.Memory < 8 || p.Memory > maxKDFMemory || p.Threads < 1 ||
		uint64(p.Time)*uint64(p.Memory) > maxKDFCost {
		return fmt.Errorf("invalid argon2id parameters t=%d m=%d p=%d", p.Time, p.Memory, p.Threads)
	}
	return nil
}

// DeriveKey derives a 32-byte wrapping key from a password and salt.
func DeriveKey(password []byte, salt []byte, p KDFParams) ([KeySize]byte, error) {
	var out [KeySize]byte
	if err := p.Validate(); err != nil {
		return out, err
	}
	if len(salt) < 16 {
		return out, fmt.Errorf("salt too short")
	}
	prepareKDFMemory(int(p.Memory) << 10)
	copy(out[:], argon2.IDKey(password, salt, p.Time, p.Memory, p.Threads, KeySize))
	return out, nil
}
