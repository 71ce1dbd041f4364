// Process-wide memory allocator settings for the binaries that run the networks (gd-server,
// gd-bench, gd-train, gd-eval, and the test suites' main, tests/testing/main.cc), behind one flag
// they all share:
//
//   --keep_freed_memory (default true)
//
// glibc's malloc hands memory back to the kernel as soon as it is freed: blocks above its mmap
// threshold (128 KiB at first) are mapped and unmapped one by one, and the free top of each heap
// is trimmed. A sampling step allocates and frees the same activation tensors (0.1-30 MB each)
// at every step, so with those defaults every step faults its pages in again and the kernel
// zeroes each one: a sampling gd-server took 40,000-60,000 page faults a second, under 300 with
// the memory kept; in process the guided step ran 1.2-1.6x faster (docs/benchmarks.md, "Freed
// memory"). The cost: the resident size stays at the peak step's (10-15% more) instead of
// falling between requests.
#pragma once

#include <string>

namespace gd {

// Applies --keep_freed_memory: when true, raises glibc's mmap threshold to its maximum (32 MiB on
// 64-bit; larger blocks are still mapped and unmapped) and its trim threshold out of reach. Call
// once, first thing after parsing flags. Returns what was done, for a log line: "kept" settings,
// "glibc defaults" when the flag is false, or why nothing changed (not glibc, or refused).
std::string ConfigureAllocator();

}  // namespace gd
