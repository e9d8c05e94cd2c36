// Package restorer restores a snapshot tree into a directory.
//
// # Algorithm
//
//  1. Walk the tree (each name checked with fs.ValidName; a tree that fails to
//     load or decode is reported and skipped). Directories, symlinks, fifos
//     and devices are created at once; files are planned: for every data blob,
//     the (file, offset) places that need it, grouped by pack. A file whose
//     recorded size differs from the sum of its blobs is refused.
//  2. Packs are processed by one worker per CPU. Each pack is read once: runs
//     of wanted blobs less than 1 MiB apart are streamed in one request, blob
//     by blob, each opened, decompressed and checked against its ID, then
//     written with pwrite to every place that needs it, except its all-zero
//     4 KiB blocks (aligned in the file), so sparse files come back sparse
//     even where a chunk holds some data. A file is created at its first
//     blob and finished (size; with --verify, read back and checked against
//     its IDs; then owner, xattrs, mode, times, through the open descriptor)
//     after its last.
//  3. Hard links (of files, symlinks, fifos and devices) are made after all
//     content; directory metadata is applied last, deepest first, so
//     creating entries does not change it. A directory the target already
//     had that a restore not run as root had to open up (u+rwx) to write in
//     gets its mode back when the snapshot does not set one.
//
// # Safety
//
// Every entry is created through fs.Root, which resolves parent directories
// from the target's descriptor without following symlinks, so neither the
// snapshot (`..`, `/`, NUL, symlinks) nor entries planted in the target can
// make a restore write outside it. A file whose data cannot be read whole is
// removed (if the restore had created it; whatever the target held at that
// path before is left alone) and reported by name: a restore never leaves
// zeros where data was lost. A pack that breaks part way fails only the
// files waiting for the blobs it had not delivered. Run returns
// ErrIncomplete when anything was reported.
//
// # Concurrency
//
// A fileState is shared by the workers writing its blobs; its mutex orders
// creation, writes and finishing. The plan is built before any worker starts
// and is read-only afterwards.
package restorer
