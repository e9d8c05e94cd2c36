//go:build !cgo

package repository

// newBlobEncoder: without cgo, the pure-Go encoder (see zstd_cgo.go).
func newBlobEncoder(c Compression) blobEncoder { return newGoEncoder(c) }
