// Package checker verifies a repository against the invariants of
// docs/format.md.
//
// The structural check reads no pack data: every index file (name hash,
// authentication, decoding), every indexed pack's presence and exact size,
// every snapshot, and every tree reachable from them (each decoded once),
// checking that every referenced blob is indexed with the recorded sizes.
// With ReadData, each selected pack is streamed once: all its bytes are hashed
// and compared with its name, every indexed blob in it is opened, decompressed
// and checked against its ID, and the pack's own header is compared with the
// index. Damaged blobs are then traced to the files and snapshots that use
// them, so the report names exactly what a restore would miss.
//
// Packs are read by one worker per CPU plus one; problems are collected under
// a mutex and sorted for a stable report.
package checker
