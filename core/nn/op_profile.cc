#include "core/nn/op_profile.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <vector>

#include <ATen/record_function.h>
#include <torch/torch.h>

#include "core/nn/flops.h"

namespace gd {
namespace {

using Clock = std::chrono::steady_clock;

std::atomic<OpProfile*> active_profile{nullptr};
// Bumped by each new profile, so that a thread drops frames left open under an earlier one.
std::atomic<uint64_t> profile_generation{0};

// The operators open on this thread, innermost last, and the gd:: scopes among them.
struct Frame {
  Clock::time_point start;
  double children_seconds = 0;
  bool is_phase = false;
};
thread_local std::vector<Frame> open_frames;
thread_local std::vector<std::string> open_phases;
thread_local uint64_t thread_generation = 0;

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}
bool Contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

// ---- FLOPs from the shapes of inputs and outputs (never list arguments: their boxed types differ
// between LibTorch versions) ---------------------------------------------------------------------

bool DefinedTensor(const c10::IValue& v) { return v.isTensor() && v.toTensor().defined(); }

const at::Tensor* TensorAt(c10::ArrayRef<const c10::IValue> in, size_t i) {
  return i < in.size() && DefinedTensor(in[i]) ? &in[i].toTensor() : nullptr;
}

// aten::convolution(input, weight, ...) -> output.
template <typename Outputs>
int64_t ConvolutionForwardFlops(c10::ArrayRef<const c10::IValue> in, const Outputs& out) {
  const at::Tensor* w = TensorAt(in, 1);
  if (w == nullptr || out.size() < 1 || !DefinedTensor(out[0])) return 0;
  return ConvolutionFlops(out[0].toTensor().numel(), *w);
}

// aten::convolution_backward(grad_output, input, weight, ...) -> (grad_input, grad_weight,
// grad_bias), the gradients not asked for undefined: one pass per input or weight gradient (the
// bias gradient is a sum).
template <typename Outputs>
int64_t ConvolutionBackwardFlops(c10::ArrayRef<const c10::IValue> in, const Outputs& out) {
  const at::Tensor* grad = TensorAt(in, 0);
  const at::Tensor* w = TensorAt(in, 2);
  if (grad == nullptr || w == nullptr || out.size() < 2) return 0;
  const int64_t passes = (DefinedTensor(out[0]) ? 1 : 0) + (DefinedTensor(out[1]) ? 1 : 0);
  return passes * ConvolutionFlops(grad->numel(), *w);
}

// [.., n, k] @ [.., k, m], with `first` the index of the left operand.
int64_t MatmulFlops(c10::ArrayRef<const c10::IValue> in, size_t first) {
  const at::Tensor* a = TensorAt(in, first);
  const at::Tensor* b = TensorAt(in, first + 1);
  if (a == nullptr || b == nullptr || a->dim() < 2 || b->dim() < 2) return 0;
  return 2 * a->numel() * b->size(-1);
}

int64_t OperatorFlops(const at::RecordFunction& fn, std::string_view name) {
  const c10::ArrayRef<const c10::IValue> in = fn.inputs();
  if (name == "aten::convolution") return ConvolutionForwardFlops(in, fn.outputs());
  if (name == "aten::convolution_backward") return ConvolutionBackwardFlops(in, fn.outputs());
  if (name == "aten::mm" || name == "aten::bmm") return MatmulFlops(in, 0);
  if (name == "aten::addmm" || name == "aten::baddbmm") return MatmulFlops(in, 1);
  return 0;
}

// ---- The callbacks -------------------------------------------------------------------------------

std::unique_ptr<at::ObserverContext> OnStart(const at::RecordFunction& fn) {
  if (active_profile.load(std::memory_order_acquire) == nullptr) return nullptr;
  const uint64_t generation = profile_generation.load(std::memory_order_acquire);
  if (thread_generation != generation) {
    open_frames.clear();
    open_phases.clear();
    thread_generation = generation;
  }
  Frame frame{Clock::now()};
  const std::string_view name = fn.name();
  if (StartsWith(name, "gd::")) {
    open_phases.emplace_back(name);
    frame.is_phase = true;
  }
  open_frames.push_back(frame);
  return nullptr;
}

void OnEnd(const at::RecordFunction& fn, at::ObserverContext*) {
  if (open_frames.empty()) return;
  const Frame frame = open_frames.back();
  open_frames.pop_back();
  const double elapsed = std::chrono::duration<double>(Clock::now() - frame.start).count();
  if (!open_frames.empty()) open_frames.back().children_seconds += elapsed;
  const std::string phase = open_phases.empty() ? "other" : open_phases.back();
  if (frame.is_phase) open_phases.pop_back();
  OpProfile* profile = active_profile.load(std::memory_order_acquire);
  if (profile == nullptr) return;
  const std::string_view name = fn.name();
  profile->Book(phase, name, elapsed - frame.children_seconds, OperatorFlops(fn, name));
}

}  // namespace

std::string_view ToString(OpClass c) {
  switch (c) {
    case OpClass::kConvolution: return "convolution";
    case OpClass::kMatmul: return "matrix product";
    case OpClass::kGroupNorm: return "GroupNorm";
    case OpClass::kSiLU: return "SiLU";
    case OpClass::kSoftmax: return "softmax";
    case OpClass::kResample: return "up/down-sampling";
    case OpClass::kMemory: return "copies and layout";
    case OpClass::kElementwise: return "elementwise";
    case OpClass::kAutograd: return "autograd engine";
    case OpClass::kHost: return "host code";
  }
  return "?";
}

OpClass ClassifyOperator(std::string_view name) {
  if (StartsWith(name, "gd::")) return OpClass::kHost;
  if (!StartsWith(name, "aten::")) {
    return StartsWith(name, "autograd::") || Contains(name, "Backward") ? OpClass::kAutograd
                                                                        : OpClass::kElementwise;
  }
  const std::string_view op = name.substr(6);
  if (Contains(op, "conv")) return OpClass::kConvolution;
  if (op == "mm" || op == "addmm" || op == "bmm" || op == "baddbmm" || op == "matmul" ||
      op == "linear") {
    return OpClass::kMatmul;
  }
  if (Contains(op, "group_norm")) return OpClass::kGroupNorm;
  if (Contains(op, "silu")) return OpClass::kSiLU;
  if (Contains(op, "softmax")) return OpClass::kSoftmax;
  if (Contains(op, "pool") || Contains(op, "upsample") || Contains(op, "interpolate")) {
    return OpClass::kResample;
  }
  static const std::string_view kMemoryOps[] = {
      "to", "_to_copy", "copy_", "contiguous", "clone", "cat", "stack", "empty", "empty_like",
      "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "index_select", "index_copy",
      "gather", "narrow", "select", "slice", "view", "reshape", "_reshape_alias", "transpose",
      "permute", "expand", "squeeze", "unsqueeze", "split", "chunk", "flatten", "detach",
      "as_strided", "resize_", "t", "fill_", "zero_", "_unsafe_view", "alias", "lift_fresh"};
  for (std::string_view m : kMemoryOps) {
    if (op == m) return OpClass::kMemory;
  }
  return OpClass::kElementwise;
}

OpProfile::OpProfile() {
  OpProfile* expected = nullptr;
  if (!active_profile.compare_exchange_strong(expected, this)) {
    throw std::logic_error("OpProfile: another profile is already recording");
  }
  profile_generation.fetch_add(1, std::memory_order_acq_rel);
  handle_ = at::addGlobalCallback(
      at::RecordFunctionCallback(&OnStart, &OnEnd).needsInputs(true).needsOutputs(true));
}

OpProfile::~OpProfile() {
  at::removeCallback(handle_);
  active_profile.store(nullptr, std::memory_order_release);
}

OpProfile::Table OpProfile::table() const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_;
}

std::vector<OpProfile::Operator> OpProfile::operators() const {
  std::vector<Operator> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, stats] : by_name_) out.push_back({key.first, key.second, stats});
  }
  std::stable_sort(out.begin(), out.end(), [](const Operator& a, const Operator& b) {
    return a.stats.seconds > b.stats.seconds;
  });
  return out;
}

void OpProfile::Book(const std::string& phase, std::string_view name, double seconds,
                     int64_t flops) {
  const auto add = [&](OpStats& s) {
    s.seconds += seconds;
    s.flops += flops;
    ++s.calls;
  };
  std::lock_guard<std::mutex> lock(mu_);
  add(table_[phase][static_cast<size_t>(ClassifyOperator(name))]);
  auto key = std::make_pair(phase, std::string(name));
  add(by_name_[std::move(key)]);
}

}  // namespace gd
