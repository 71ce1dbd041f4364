#include "core/engine/intra_op_threads.h"

#include <dlfcn.h>

#include <thread>

#include <ATen/Parallel.h>

namespace gd {
namespace {

// OpenMP's omp_set_num_threads, from the OpenMP runtime that LibTorch loaded: Debian's LibTorch
// uses the system's libgomp, PyTorch's own builds carry a renamed copy of it, and a count set in
// a runtime that LibTorch does not use would change nothing. Looked up by name in the global
// scope, where LibTorch's dependencies are, rather than linked; null without OpenMP.
using SetNumThreads = void (*)(int);

SetNumThreads OpenMpSetNumThreads() {
  static const auto setter =
      reinterpret_cast<SetNumThreads>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  return setter;
}

}  // namespace

bool SetIntraOpThreadsOfThisThread(int threads) {
  const SetNumThreads set = OpenMpSetNumThreads();
  if (set == nullptr) return false;
  // ATen sets each thread's count from its process-wide setting at the thread's first parallel
  // use; asking for the count makes that happen now, so that it cannot undo what follows.
  at::get_num_threads();
  set(threads);
  return at::get_num_threads() == threads;
}

bool PerThreadIntraOpThreadsWork() {
  static const bool works = [] {
    bool ok = false;
    std::thread probe([&ok] {
      const int before = at::get_num_threads();
      const int other = before == 1 ? 2 : 1;
      ok = SetIntraOpThreadsOfThisThread(other) && SetIntraOpThreadsOfThisThread(before);
    });
    probe.join();
    return ok;
  }();
  return works;
}

int DefaultLanes(bool on_cpu, int threads) {
  return on_cpu && threads >= 2 && PerThreadIntraOpThreadsWork() ? 2 : 1;
}

}  // namespace gd
