//go:build !linux

package chunker

import "time"

func threadCPUTime() time.Duration { return 0 }
