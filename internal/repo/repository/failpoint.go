package repository

import (
	"os"
	"syscall"
)

// Failpoint names, for crash tests (RELIABILITY A1). Setting BUNKER_FAILPOINT
// to one of them makes the process kill itself with SIGKILL at that moment, as
// a power cut or an OOM kill would.
const (
	FailpointPackStored     = "pack-stored"     // a pack is stored, no index refers to it
	FailpointIndexStored    = "index-stored"    // the index is stored, the snapshot is not
	FailpointSnapshotStored = "snapshot-stored" // the snapshot is stored, the command has not returned
	FailpointCopyCommitted  = "copy-committed"  // a copy stored its first snapshot in the target; more are to come
)

// Failpoint kills the process if BUNKER_FAILPOINT names this point.
func Failpoint(name string) {
	if os.Getenv("BUNKER_FAILPOINT") == name {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}
