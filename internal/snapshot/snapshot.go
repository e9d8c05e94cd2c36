// Package snapshot defines snapshots, trees and nodes, and their encodings.
package snapshot

import (
	"encoding/json"
	"fmt"
	"time"

	"bunker/internal/repo"
)

// Snapshot is the record of one backup. It is stored as a sealed JSON object in
// the snapshots namespace, named by the hash of its stored bytes.
type Snapshot struct {
	Time     time.Time `json:"time"`
	Tree     repo.ID   `json:"tree"`
	Paths    []string  `json:"paths"`
	Hostname string    `json:"hostname"`
	Username string    `json:"username,omitempty"`
	UID      uint32    `json:"uid"`
	GID      uint32    `json:"gid"`
	Tags     []string  `json:"tags,omitempty"`
	Parent   *repo.ID  `json:"parent,omitempty"`
	Excludes []string  `json:"excludes,omitempty"`
	// ProgramVersion is the version of bunker that wrote the snapshot.
	ProgramVersion string   `json:"program_version"`
	Summary        *Summary `json:"summary,omitempty"`
	// Original and OriginalRepo name the snapshot this one is a copy of
	// (`bunker copy`): its ID and its repository's ID, kept through
	// copies of copies. A snapshot and its copies share them (see Origin).
	Original     *repo.ID `json:"original,omitempty"`
	OriginalRepo string   `json:"original_repo,omitempty"`

	// ID is the snapshot's file name; not stored.
	ID repo.ID `json:"-"`
}

// Summary records what a backup did.
type Summary struct {
	Start          time.Time `json:"start"`
	End            time.Time `json:"end"`
	FilesNew       uint64    `json:"files_new"`
	FilesChanged   uint64    `json:"files_changed"`
	FilesUnchanged uint64    `json:"files_unchanged"`
	DirsNew        uint64    `json:"dirs_new"`
	DirsChanged    uint64    `json:"dirs_changed"`
	DirsUnchanged  uint64    `json:"dirs_unchanged"`
	BlobsAdded     uint64    `json:"blobs_added"`
	BytesAdded     uint64    `json:"bytes_added"`          // stored bytes of new blobs
	BytesAddedRaw  uint64    `json:"bytes_added_raw"`      // plaintext bytes of new blobs
	BytesProcessed uint64    `json:"bytes_processed"`      // file bytes in the snapshot
	FilesProcessed uint64    `json:"files_processed"`      // files in the snapshot
	Errors         uint64    `json:"errors"`               // entries that could not be read
	Incomplete     bool      `json:"incomplete,omitempty"` // some entries were skipped
	// ChangedWhileRead counts files kept whose size or times changed while
	// they were read: their content may mix old and new.
	ChangedWhileRead uint64 `json:"changed_while_read,omitempty"`
}

// RepairedTag marks a snapshot that `bunker repair snapshots` rewrote
// without the files whose data was lost.
const RepairedTag = "repaired"

// Origin identifies a snapshot across copies: the repository and ID of the
// snapshot it was first written as. repoID is the ID of the repository sn
// was read from.
func (s *Snapshot) Origin(repoID string) string {
	if s.Original != nil && s.OriginalRepo != "" {
		return s.OriginalRepo + "/" + s.Original.String()
	}
	return repoID + "/" + s.ID.String()
}

// Decode parses a snapshot's JSON.
func Decode(b []byte) (*Snapshot, error) {
	var s Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("invalid snapshot: %w", err)
	}
	if s.Tree.IsNull() {
		return nil, fmt.Errorf("invalid snapshot: no tree")
	}
	return &s, nil
}

// Encode returns the snapshot's JSON.
func (s *Snapshot) Encode() []byte {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // only plain types: cannot fail
	}
	return b
}
