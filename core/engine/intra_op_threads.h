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

// The engine lanes (EngineOptions::lanes) that gd-server and gd-bench use unless told: 2 on the
// CPU with two or more intra-op threads where per-thread counts work, else 1. On 2 cores two
// lanes ran batches of 8 1.3-1.7x faster (docs/benchmarks.md, "Lanes"); a GPU runs one.
int DefaultLanes(bool on_cpu, int threads);

}  // namespace gd
