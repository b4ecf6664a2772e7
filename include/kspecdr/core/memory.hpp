#pragma once

namespace kspecdr {

/// Keeps freed image-sized blocks in the process for reuse instead of returning them to the system.
///
/// The pipeline allocates and frees many arrays of one frame's size per exposure (a 1024 x 200 float image is
/// 0.8 MB, a 4k x 4k one 64 MB). With glibc's defaults every block above the mmap threshold is mapped afresh and
/// unmapped when freed, so each new array costs a page fault and a zeroed page per 4 kB, and every unmap a TLB
/// flush on the other cores, where the other MPI ranks run. This sets, unless the user has set them in the
/// environment (MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_ or GLIBC_TUNABLES), all blocks to
/// come from the heap and the free top of the heap to be kept up to `keep_bytes`. Peak memory is unchanged: a
/// block is reused, not added. Returns false where the C library has no such settings (not glibc).
bool keep_freed_memory(unsigned long long keep_bytes = 1ULL << 30);

}  // namespace kspecdr
