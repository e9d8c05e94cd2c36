package server_test

import (
	"context"
	"os"
	"testing"

	"bunker/internal/backend/local"
)

func makeRepoDir(dir string) error {
	be, err := local.Create(context.Background(), dir)
	if err != nil {
		return err
	}
	return be.Close()
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
