package mem_test

import (
	"testing"

	"bunker/internal/backend"
	"bunker/internal/backend/backendtest"
	"bunker/internal/backend/mem"
)

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return mem.New() })
}
