// Package archiver backs up file system paths into a repository.
//
// # Pipeline
//
// A backup overlaps four kinds of work so that both cores stay busy:
//
//   - Walkers read directories and lstat their entries, relative to the
//     open directory; a subdirectory is opened relative to its parent's
//     descriptor (held until then), never through a symbolic link. The caller's goroutine walks, and up to one more walker
//     per P takes whole subdirectories while a slot is free. Each entry
//     becomes a future: a file whose size, mtime, ctime and inode match the
//     parent snapshot's node, and whose mtime is more than a second older
//     than the parent backup's start (see Options.ParentTime), is resolved
//     at once with the old content list and never opened; any entry with the parent's inode and ctime keeps its
//     xattrs and symlink target. A regular file (by the directory's own
//     entry type) with no node in the parent snapshot is not lstat'ed: it
//     goes to the file workers by name, with its directory.
//   - File workers (two per CPU, to overlap system calls) open changed files
//     relative to the directory the walk listed them in (kept open until
//     then), so that a directory of the path renamed and replaced by a
//     symbolic link meanwhile cannot make them read another file. They open
//     with O_NOATIME and O_NONBLOCK (again without it if a lease holder
//     refuses the open) and check that the entry is still a regular file,
//     with the inode walked; for a file sent by name, the node is made from
//     the open descriptor (fstat, flistxattr), and an entry that turns out
//     not to be a regular file (a symbolic link, a FIFO: the directory's
//     type was wrong, or it changed) is saved as its lstat says. A file
//     smaller than the minimum chunk is read whole into one buffer; a larger
//     one goes through the repository's chunker (one at a time: cutting runs
//     several times faster than compressing), and each chunk is
//     handed to the blob workers without a copy. The chunker's OnOverwrite
//     hook waits for a chunk, and those handed out before it, before the
//     chunker reads over it: its buffer holds several chunks, so that wait
//     is for chunks long done.
//   - Blob workers (one per CPU) call Repository.SaveBlob: hash, dedup,
//     compress, seal, verify, pack.
//   - The repository stores full packs in the background.
//
// A directory's tree blob is saved by a goroutine that waits for the futures of
// its entries, in name order, so the tree is the same whichever worker
// finished first. The root tree completes last.
//
// # Errors
//
// An entry that cannot be read is reported through Options.Error and left out
// of its tree; the snapshot is then marked incomplete. Errors of the
// repository (storage, verification) are fatal: the walk stops, workers drain,
// and Run returns the first such error. No snapshot is written by this
// package; the caller writes it after Repository.Flush.
package archiver
