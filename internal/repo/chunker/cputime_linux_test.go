package chunker

import (
	"syscall"
	"time"
)

// threadCPUTime returns the CPU time used by the calling OS thread (the
// caller must be locked to it), or 0 if it cannot be measured.
func threadCPUTime() time.Duration {
	const rusageThread = 1 // RUSAGE_THREAD
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
