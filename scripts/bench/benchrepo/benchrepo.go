// Package benchrepo holds what the benchmark's repository generators share.
package benchrepo

import (
	"bytes"
	"context"
	"os"

	"bunker/internal/backend/local"
	"bunker/internal/repo/repository"
)

// Create makes a local repository at dir with the password in pwFile (its
// first line). close closes it and its storage.
func Create(ctx context.Context, dir, pwFile string) (r *repository.Repository, closeFn func(), err error) {
	pw, err := os.ReadFile(pwFile)
	if err != nil {
		return nil, nil, err
	}
	pw, _, _ = bytes.Cut(pw, []byte("\n"))
	be, err := local.Create(ctx, dir)
	if err != nil {
		return nil, nil, err
	}
	r, err = repository.Create(ctx, be, pw, repository.Options{})
	if err != nil {
		be.Close()
		return nil, nil, err
	}
	return r, func() { r.Close(); be.Close() }, nil
}
