// Package backendtest is the conformance suite for backend.Backend
// implementations.
//
// Every backend is tested by the same Run, so the contract in package backend
// is checked in one place and a new backend cannot quietly weaken it. The
// suite leans on what the repository relies on most: files are never
// replaced (a second Save of a name fails with ErrExists and leaves the first
// content), reads of a range are exact or fail with io.ErrUnexpectedEOF,
// missing files are ErrNotExist, List reports every file of a type and
// nothing else, and all of it holds under concurrent use (run with -race).
//
// Each subtest gets a fresh backend from the constructor, so subtests do not
// depend on each other and may be run alone with -run.
package backendtest
