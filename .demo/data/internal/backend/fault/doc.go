// Package fault wraps a Backend and makes it misbehave on purpose, so tests
// can show that the code above a backend survives the failures real storage
// produces: refused uploads, full disks, flaky reads, bit rot, and the worst
// one, an upload the storage acknowledged but never kept.
//
// Faults are described by Rules. Each fault has a Select that picks which
// calls it hits: by a predicate on the Handle, optionally only the Nth call
// the predicate accepted, optionally with a probability. Every random choice
// (which calls a probability picks, which bit is flipped) comes from one
// source seeded by Rules.Seed, so a failing test replays exactly, provided the
// calls arrive in the same order. Counters advance for every call a
// predicate accepts, whether or not another fault fired on it, so "the 3rd
// pack Save" means the same call no matter what else is configured.
//
// The zero Rules inject nothing, so a fault.Backend with no rules is a plain
// pass-through and passes the conformance suite.
package fault
