// Package crypto holds Bunker's cryptography: AES-256-GCM sealing of every stored
// object, keyed BLAKE3 blob IDs, and argon2id password key derivation for key slots.
//
// A sealed object is nonce (12 random bytes) || ciphertext || tag (16 bytes).
// Random 96-bit nonces are safe for far more than the 2^32 objects per key that
// NIST allows; a repository reaching that many blobs (4 PiB at 1 MiB) would need
// a key rotation, which the format allows (new master keys, copy).
package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"hash"
	"sync"

	"github.com/zeebo/blake3"

	"bunker/internal/repo"
)

// Sizes of the sealed-object framing.
const (
	NonceSize = 12
	TagSize   = 16
	Overhead  = NonceSize + TagSize
	KeySize   = 32
)

// ErrUnauthenticated is returned when a ciphertext fails authentication: it was
// changed, truncated, or sealed under another key.
var ErrUnauthenticated = errors.New("ciphertext verification failed (wrong key or corrupted data)")

// MasterKey is what a key slot protects: the encryption key for every object and
// the key of the blob ID hash.
type MasterKey struct {
	Encrypt [KeySize]byte `json:"encrypt"`
	MAC     [KeySize]byte `json:"mac"`
}

// NewMasterKey returns fresh random keys.
func NewMasterKey() *MasterKey {
	var k MasterKey
	mustRandom(k.Encrypt[:])
	mustRandom(k.MAC[:])
	return &k
}

// Key seals and opens objects and computes blob IDs. It is safe for concurrent use.
type Key struct {
	aead    cipher.AEAD
	idKey   [KeySize]byte
	hashers sync.Pool
}

// NewKey prepares a Key from master keys.
func NewKey(m *MasterKey) (*Key, error) {
	block, err := aes.NewCipher(m.Encrypt[:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	k := &Key{aead: aead, idKey: m.MAC}
	k.hashers.New = func() any {
		h, err := blake3.NewKeyed(k.idKey[:])
		if err != nil {
			panic(err) // key length is fixed; cannot happen
		}
		return h
	}
	return k, nil
}

// Seal appends nonce||ciphertext||tag of plaintext to dst.
func (k *Key) Seal(dst, plaintext []byte) []byte {
	n := len(dst)
	dst = growCap(dst, NonceSize+len(plaintext)+TagSize)
	nonce := dst[n : n+NonceSize]
	mustRandom(nonce)
	return k.aead.Seal(dst[:n+NonceSize], nonce, plaintext, nil)
}

// Open authenticates and decrypts a sealed object, appending the plaintext to dst.
func (k *Key) Open(dst, sealed []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return nil, ErrUnauthenticated
	}
	out, err := k.aead.Open(dst, sealed[:NonceSize], sealed[NonceSize:], nil)
	if err != nil {
		return nil, ErrUnauthenticated
	}
	return out, nil
}

// BlobID is the keyed BLAKE3 hash of a blob's plaintext.
func (k *Key) BlobID(plaintext []byte) repo.ID {
	h := k.hashers.Get().(*blake3.Hasher)
	h.Reset()
	_, _ = h.Write(plaintext)
	var id repo.ID
	h.Sum(id[:0])
	k.hashers.Put(h)
	return id
}

// FileID is the unkeyed BLAKE3 hash of a stored file's bytes: its name.
func FileID(data []byte) repo.ID {
	return repo.ID(blake3.Sum256(data))
}

// Random fills b with random bytes.
func Random(b []byte) { mustRandom(b) }

func mustRandom(b []byte) {
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
}

func growCap(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), len(b)+n)
	copy(nb, b)
	return nb
}

// NewFileHasher returns a hash computing FileID incrementally.
func NewFileHasher() hash.Hash { return blake3.New() }
