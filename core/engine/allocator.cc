#include "core/engine/allocator.h"

#include <climits>

#include "absl/flags/flag.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

ABSL_FLAG(bool, keep_freed_memory, true,
          "Keep freed memory for reuse instead of returning it to the OS at once (glibc malloc: "
          "mmap threshold 32 MiB, no trimming). Faster steps; the resident size stays at the "
          "peak. false = glibc's defaults.");

namespace gd {

std::string ConfigureAllocator() {
  if (!absl::GetFlag(FLAGS_keep_freed_memory)) return "glibc defaults";
#if defined(__GLIBC__)
  // 32 MiB is glibc's largest mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2); setting it
  // also turns off the dynamic threshold, which would otherwise move with every freed block.
  constexpr int kMmapThreshold = 32 << 20;
  if (mallopt(M_MMAP_THRESHOLD, kMmapThreshold) != 1 || mallopt(M_TRIM_THRESHOLD, INT_MAX) != 1) {
    return "glibc refused the malloc settings; its defaults stay";
  }
  return "freed memory kept for reuse (mmap threshold 32 MiB, no trimming)";
#else
  return "not glibc: the C library's malloc defaults stay";
#endif
}

}  // namespace gd
