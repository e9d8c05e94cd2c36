package repository

import (
	"encoding/json"
	"fmt"
)

// ParseKeySlot checks a key slot's JSON the way Open does before it derives a
// key from the slot: the JSON decodes, the KDF is argon2id, its parameters pass
// crypto.KDFParams.Validate and the salt is long enough for crypto.DeriveKey.
// Open skips a slot that fails these checks without deriving anything.
func ParseKeySlot(data []byte) error {
	var ks keySlot
	if err := json.Unmarshal(data, &ks); err != nil {
		return fmt.Errorf("key slot: %w", err)
	}
	if ks.KDF != "argon2id" {
		return fmt.Errorf("key slot: unknown kdf %q", ks.KDF)
	}
	if err := ks.Params.Validate(); err != nil {
		return fmt.Errorf("key slot: %w", err)
	}
	if len(ks.Salt) < 16 {
		return fmt.Errorf("key slot: salt of %d bytes", len(ks.Salt))
	}
	return nil
}
