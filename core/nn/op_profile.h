// Where a sampling step's time goes: while an OpProfile is alive, every LibTorch operator that
// runs on the CPU (forward and autograd backward alike, on any thread) is timed through
// LibTorch's RecordFunction callbacks and booked under
//   - its operator class (convolution, matrix product, GroupNorm, ...), by name, and
//   - the phase of the engine it ran in: the innermost "gd::" scope open on its thread (the
//     engine marks gather, UNet forward, classifier forward and backward, update, report).
// Times are exclusive (an operator's own time less the operators it calls), so the cells add up
// to the profiled time. FLOPs are counted from the shapes of the operators' tensors for
// convolutions (forward and backward, per gradient actually computed; core/nn/flops.h's formula)
// and matrix products, as 2 x multiply-accumulates. Used by `gd-bench --profile`. On CUDA the times are launch times, not
// kernel times; the profile is meant for CPU runs.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gd {

enum class OpClass {
  kConvolution,
  kMatmul,     // mm, addmm, bmm, baddbmm: linear layers and attention
  kGroupNorm,
  kSiLU,
  kSoftmax,    // softmax and log_softmax, forward and backward
  kResample,   // pooling and upsampling
  kMemory,     // copies, conversions, concatenation, indexing, allocation, views
  kElementwise,
  kAutograd,   // the autograd engine's own bookkeeping around backward operators
  kHost,       // our own code inside gd:: scopes, between operators
};
inline constexpr int kOpClassCount = 10;
std::string_view ToString(OpClass c);

// The class of an operator from its RecordFunction name ("aten::convolution",
// "autograd::engine::evaluate_function: ConvolutionBackward0", "gd::engine::update").
OpClass ClassifyOperator(std::string_view name);

struct OpStats {
  double seconds = 0;
  int64_t flops = 0;
  int64_t calls = 0;
};

class OpProfile {
 public:
  // phase -> class -> stats. Operators outside any gd:: scope are under phase "other".
  using Table = std::map<std::string, std::array<OpStats, kOpClassCount>>;

  OpProfile();   // starts recording
  ~OpProfile();  // stops
  OpProfile(const OpProfile&) = delete;
  OpProfile& operator=(const OpProfile&) = delete;

  // What has been recorded so far (operators that have ended).
  Table table() const;

  // The same by operator name within each phase, the most exclusive time first: which operators
  // make up a class's cell (e.g. which copies the input gradient makes).
  struct Operator {
    std::string phase, name;
    OpStats stats;
  };
  std::vector<Operator> operators() const;

  // Called by the callbacks.
  void Book(const std::string& phase, std::string_view name, double seconds, int64_t flops);

 private:
  mutable std::mutex mu_;
  Table table_;
  std::map<std::pair<std::string, std::string>, OpStats> by_name_;  // (phase, operator)
  uint64_t handle_;
};

}  // namespace gd
