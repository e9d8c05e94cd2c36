// Package repository composes a backend with the format internals (crypto,
// chunker, pack, index) into the Repository that the pipelines use.
//
// # Writing
//
// SaveBlob does its work on the caller's goroutine: keyed BLAKE3 ID, a lookup
// in the index and in the set of blobs in flight (so two workers never store
// the same blob), zstd where a sample says it pays, AES-256-GCM, and then the
// B6 guard: the sealed blob is opened, decompressed and compared with the
// plaintext before it may enter a pack. Appending to the open pack of its type
// takes the repository mutex only for the copy. On a backend that implements
// backend.TempFiler (the local directory), packs are written straight into a
// temporary file of the repository and committed by a rename, so no pack is
// held in memory. A full pack is stored by a background upload (bounded by the
// backend's connection count); after the storage confirms name and size, its
// blobs enter the index and the list of packs for the next index file. Flush
// stores the open packs, waits for the uploads and writes that index file:
// packs, then index, then (by the caller) the snapshot.
//
// # Reading
//
// LoadBlob reads one blob; LoadPackRange and ReadPack stream many blobs of a
// pack in one request with one blob of memory. Every blob read is
// authenticated, decompressed within its recorded length and checked against
// its ID before any byte is returned.
//
// # Keys and locks
//
// Key slots wrap the master keys under argon2id; Open tries each slot and
// accepts one only if its keys also open the config. Lock files are sealed
// like every other object; a lock is refreshed in the background and counts
// as stale once its holder is gone.
package repository
