// Package mem is a Backend that keeps files in memory, for tests and for
// exercising the repository code without a disk.
//
// It follows the backend contract exactly as the local backend does (the same
// handle rules, the same errors), so a test that passes against mem says
// something about the real thing. Data is copied on the way in and on the
// way out: the contract lets callers reuse their buffers after Save returns,
// and a test must not be able to alter "stored" files through a slice it got
// from Load. One RWMutex guards the map; Load copies the requested range
// under the read lock and calls fn without holding it, so a slow fn cannot
// block writers and a fn that calls back into the backend cannot deadlock.
package mem
