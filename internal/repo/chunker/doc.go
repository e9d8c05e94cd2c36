// Package chunker splits a byte stream into content-defined chunks, so that
// an insertion or deletion in a file only changes the chunks around the edit
// and all other chunks deduplicate against earlier backups.
//
// # Algorithm
//
// The chunker follows FastCDC (Xia et al., "FastCDC: a Fast and Efficient
// Content-Defined Chunking Approach for Data Deduplication", USENIX ATC
// 2016, and its 2020 TPDS extension). A gear rolling hash is updated once
// per byte:
//
//	h = h<<1 + table[b]
//
// Because of the shift, the contribution of a byte leaves the 64-bit hash
// after 64 further bytes, so h is a function of the last 64 bytes only (a
// 64-byte sliding window) at the cost of one shift, one add and one table
// load per byte; no byte has to be "removed" from the window as with Rabin
// fingerprints. A position is a cut point when h&mask == 0.
//
// Chunk lengths are bounded by Params: a chunk is never shorter than Min
// (except the last chunk of a stream) nor longer than Max. Since no cut can
// occur before Min, the first Min-64 bytes of every chunk are not hashed at
// all (the 64 bytes before the first candidate position are, to fill the
// window): with the default parameters about half the input is skipped,
// which is a large part of FastCDC's speed. If no cut point is found by Max
// bytes the chunk is cut at Max; that is what happens on long runs of
// identical bytes such as all-zero input, where the hash becomes constant.
//
// # Masks and normalized chunking
//
// Params.Avg is a power of two 2^n. FastCDC's normalized chunking uses two
// masks: up to Avg bytes a strict mask maskS with n+1 bits set (a cut
// probability of 2^-(n+1) per byte), after Avg a loose mask maskL with n-3
// bits set (2^-(n-3) per byte). Cuts before Avg are thus rarer and cuts after
// it much more likely than with a single n-bit mask, which concentrates the
// chunk sizes around Avg (fewer tiny and fewer huge chunks) and lets the Min
// skip be large without the mean drifting far above Avg. With the expected
// length written as
//
//	Min + (1-e^(-(Avg-Min)/2^(n+1)))·2^(n+1) + e^(-(Avg-Min)/2^(n+1))·2^(n-3)
//
// the default Min = Avg/2 gives about 1.04·Avg (the symmetric n±2 masks of
// the paper would give about 1.19·Avg with such a large Min); on random data
// the measured average is within a few percent of Avg.
//
// The mask bits are spread evenly over bits 16..63 of the hash rather than
// packed at the bottom: bit k of a gear hash depends only on the last k+1
// bytes, so low bits would make the cut decision depend on a window of a few
// bytes only, and clustered bits would be correlated. Every mask includes
// bit 63, which depends on the full 64-byte window.
//
// # Keyed gear table
//
// With a public gear table, chunk boundaries, and therefore the sizes of the
// stored (encrypted) chunks, are a deterministic function of the plaintext.
// Someone who can see chunk or pack sizes in the repository could then test
// whether a known file is stored (by chunking it and comparing the size
// sequence) or learn about unknown content from where boundaries fall. The
// 256-entry table is therefore derived from a secret 32-byte per-repository
// key (NewTable: keyed BLAKE3 over a fixed context string, read in XOF mode
// for 2 KiB); without the key, boundaries carry no usable information about
// the content. Different repositories use different tables, which only
// affects deduplication across repositories, which is not possible under
// different keys anyway.
//
// # Implementation
//
// Table.Cut is a pure function returning the length of the first chunk of a
// buffer; Chunker applies it to a stream. Chunker reads into a reused buffer
// of several chunks (at least 1.25·Max bytes, 6 MiB with the default
// parameters) in reads of up to Max bytes (looping over short reads like
// io.ReadFull) and hands out chunks as sub-slices of it, so chunking copies
// no data except moving the final partial chunk to the front of the buffer
// when the reads reach its end. A chunk is valid until the next call to
// Next, or, with OnOverwrite, until the chunker is about to write over it:
// it fills the buffer oldest region first and asks the caller to release
// only the chunks there, so a caller handing chunks to other goroutines
// waits for the oldest ones (usually long done), never for all of them at
// once. The hash loop is unrolled by
// four with the loop-carried dependency reduced to one shift-add per four
// bytes and no per-byte bounds checks.
package chunker
