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
	_, err := parseKeySlot(data)
	return err
}

func parseKeySlot(data []byte) (*keySlot, error) {
	var ks keySlot
	if err := json.Unmarshal(data, &ks); err != nil {
		return nil, fmt.Errorf("key slot: %w", err)
	}
	if ks.Version != 1 {
		return nil, fmt.Errorf("key slot: unknown version %d", ks.Version)
	}
	if ks.KDF != "argon2id" {
		return nil, fmt.Errorf("key slot: unknown kdf %q", ks.KDF)
	}
	if err := ks.Params.Validate(); err != nil {
		return nil, fmt.Errorf("key slot: %w", err)
	}
	if len(ks.Salt) < 16 {
		return nil, fmt.Errorf("key slot: salt of %d bytes", len(ks.Salt))
	}
	return &ks, nil
}
