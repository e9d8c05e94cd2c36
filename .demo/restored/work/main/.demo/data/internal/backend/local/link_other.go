//go:build !linux

package local

// linkNoReplace moves oldpath to newpath without replacing newpath; see the
// Linux version. Elsewhere, link(2) + unlink(2) gives the same guarantee.
func linkNoReplace(oldpath, newpath string) error {
	return linkFallback(oldpath, newpath)
}
