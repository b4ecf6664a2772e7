#include "kspecdr/core/memory.hpp"

#include <cstdlib>
#include <initializer_list>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace kspecdr {

bool keep_freed_memory(unsigned long long keep_bytes) {
#if defined(__GLIBC__)
  for (const char* v : {"MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                        "GLIBC_TUNABLES"})
    if (std::getenv(v)) return false;  // the user's own allocator settings win
  const int keep = keep_bytes > 0x7fffffffULL ? 0x7fffffff : static_cast<int>(keep_bytes);
  // No block is mapped on its own (M_MMAP_MAX 0): every one comes from the heap and returns to it.
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, keep) == 1;
#else
  (void)keep_bytes;
  return false;
#endif
}

}  // namespace kspecdr
