// The intra-op threads (LibTorch's, OpenBLAS's and oneDNN's parallel regions) of the calling
// thread alone. LibTorch's own setting, at::set_num_threads, is process-wide; engine lanes
// (engine.h) need one count per lane, which OpenMP keeps per thread.
#pragma once

namespace gd {

// Whether a thread's own count can be set and LibTorch obeys it: false where LibTorch runs
// without OpenMP. Checked once, on a thread of its own.
bool PerThreadIntraOpThreadsWork();

// Sets the calling thread's intra-op threads; returns whether LibTorch now reports that count.
bool SetIntraOpThreadsOfThisThread(int threads);

}  // namespace gd
