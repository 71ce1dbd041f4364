// LLVMFuzzerInitialize for the targets that run LibTorch (add this file to their SOURCES): one
// intra-op thread, and c10::Error without its C++ backtrace.
#include <c10/util/Logging.h>
#include <torch/torch.h>

#include <string>

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  torch::set_num_threads(1);
  // Every c10::Error records a symbolized C++ backtrace (~25 ms under ASan); the readers keep only
  // the message, so skip it: 30x more inputs per second.
  c10::SetStackTraceFetcher([] { return std::string(); });
  return 0;
}
