// Package fs is bunker's interface to the local file system: it reads the
// metadata of the entries being backed up (MetaReader) and writes restored
// entries into a target directory (Root).
//
// # Reading
//
// MetaReader.NodeAt lstats an entry, relative to its open directory, into a
// snapshot.Node. It never follows symbolic links: link targets are read with
// readlinkat and extended attributes with listxattrat (or the l*xattr calls),
// so a symlink's own metadata is recorded.
//
// # Writing: the safety model of Root
//
// A restore writes names that come from a snapshot, i.e. from data that may
// have been crafted, into a directory that may already contain entries planted
// by someone else (for example a symlink "etc" -> "/etc"). Root is built so that
// no operation can ever touch anything outside the target directory:
//
//   - The target is opened once with os.OpenRoot; its directory file
//     descriptor is the anchor of every operation, so renaming or replacing the
//     target path afterwards does not redirect the restore.
//   - Every path is slash separated and relative to the root. Each component is
//     checked with ValidName, so absolute paths, empty components, "." and ".."
//     and names containing NUL are rejected before any system call is made.
//   - Intermediate directories are opened one component at a time with
//     openat(O_PATH|O_DIRECTORY|O_NOFOLLOW). A symlink in a directory position is
//     never followed, not even one that points inside the root: the operation
//     fails with an error instead. (This is stricter than os.Root, which follows
//     symlinks as long as they stay beneath the root.)
//   - The final component is always handled with *at system calls relative to
//     the parent's descriptor and with "do not follow" semantics: mkdirat,
//     openat(O_CREAT|O_EXCL|O_NOFOLLOW), symlinkat, mknodat, linkat without
//     AT_SYMLINK_FOLLOW, unlinkat, fchownat(AT_SYMLINK_NOFOLLOW),
//     fchmodat2(AT_SYMLINK_NOFOLLOW) (or a chmod through an O_PATH descriptor on
//     older kernels), l*xattr through /proc/self/fd/<parent>/<name> and
//     utimensat(AT_SYMLINK_NOFOLLOW). An existing non-directory entry is
//     replaced by unlinking it, never by opening it; an existing directory is
//     never removed.
//
// Because the parent directory is held open while the final component is
// handled, a concurrent rename of a path component cannot redirect an
// operation either: the worst it can do is make the operation fail.
//
// Metadata is set in a fixed order (owner, mode, xattrs, times) so that a
// chown cannot clear setuid bits after they were set and nothing modifies the
// entry after its timestamps were restored.
package fs
