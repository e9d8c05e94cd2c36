// Package local stores a repository in a directory of the local file system.
//
// Layout: "config" at the root, then one directory per file type ("keys",
// "index", "snapshots", "locks", and "data" for packs). Packs are spread over
// "data/00" .. "data/ff" by the first two characters of their name so that no
// single directory grows to millions of entries; subdirectories are created at
// Create and, for names outside that range, on demand.
//
// Save is what makes the backend trustworthy, so it is done in the one order
// that survives a crash at any instant:
//
//  1. write the data to a fresh temporary file in the final directory (its name
//     starts with ".tmp-", which List never reports, and being in the same
//     directory keeps the final step a metadata-only operation on one file
//     system);
//  2. fsync the file, so its contents are on disk before its name is;
//  3. move it under its final name with renameat2(RENAME_NOREPLACE), which
//     fails instead of replacing a file that is already there. Files are never
//     overwritten: a concurrent or repeated Save of the same name gets
//     backend.ErrExists and the stored file is untouched. File systems that do
//     not support the flag get link(2) + unlink(2) instead, which has the same
//     no-replace guarantee;
//  4. fsync the directory, so the new name itself is durable.
//
// A crash before step 3 leaves at most a ".tmp-" file, never a partial file
// under the final name. Any failure removes the temporary file. Stale ".tmp-"
// files left by a crash are harmless and are not cleaned up automatically,
// because another process may be writing them right now.
//
// Stored files are made read-only (0400): nothing ever rewrites them, and the
// mode guards against accidents. Removing a file only needs write permission
// on its directory, so Remove is unaffected.
//
// Operating-system errors are mapped onto the backend sentinels (ENOSPC and
// EDQUOT to ErrNoSpace, EACCES, EPERM and EROFS to ErrPermission, ENOENT to
// ErrNotExist) and wrapped together with the original error, so callers can
// both decide with errors.Is and show the real cause.
package local
