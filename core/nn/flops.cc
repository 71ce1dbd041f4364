#include "core/nn/flops.h"

namespace gd {
namespace {
thread_local FlopCounter* active_counter = nullptr;
}  // namespace

FlopCounter::FlopCounter() : previous_(active_counter) { active_counter = this; }
FlopCounter::~FlopCounter() { active_counter = previous_; }

void FlopCounter::Add(int64_t flops) {
  for (FlopCounter* c = active_counter; c != nullptr; c = c->previous_) c->flops_ += flops;
}

void FlopCounter::Conv(const torch::Tensor& output, int64_t in_channels_per_group,
                       int64_t kernel_elements) {
  if (active_counter == nullptr) return;
  Add(2 * output.numel() * in_channels_per_group * kernel_elements);
}

void FlopCounter::Linear(const torch::Tensor& output, int64_t in_features) {
  if (active_counter == nullptr) return;
  Add(2 * output.numel() * in_features);
}

void FlopCounter::Bmm(int64_t batch, int64_t n, int64_t k, int64_t m) {
  if (active_counter == nullptr) return;
  Add(2 * batch * n * k * m);
}

torch::Tensor CountedConv(torch::nn::Conv2dImpl& conv, const torch::Tensor& x) {
  torch::Tensor out = conv.forward(x);
  const auto& w = conv.weight;
  FlopCounter::Conv(out, w.size(1), w.size(2) * w.size(3));
  return out;
}

torch::Tensor CountedConv(torch::nn::Conv1dImpl& conv, const torch::Tensor& x) {
  torch::Tensor out = conv.forward(x);
  const auto& w = conv.weight;
  FlopCounter::Conv(out, w.size(1), w.size(2));
  return out;
}

torch::Tensor CountedLinear(torch::nn::LinearImpl& linear, const torch::Tensor& x) {
  torch::Tensor out = linear.forward(x);
  FlopCounter::Linear(out, linear.weight.size(1));
  return out;
}

}  // namespace gd
