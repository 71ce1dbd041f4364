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

int64_t ConvolutionFlops(int64_t output_elements, const torch::Tensor& weight) {
  int64_t macs_per_output = weight.size(1);
  for (int64_t d = 2; d < weight.dim(); ++d) macs_per_output *= weight.size(d);
  return 2 * output_elements * macs_per_output;
}

void FlopCounter::Conv(const torch::Tensor& output, const torch::Tensor& weight) {
  if (active_counter == nullptr) return;
  Add(ConvolutionFlops(output.numel(), weight));
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
  FlopCounter::Conv(out, conv.weight);
  return out;
}

torch::Tensor CountedConv(torch::nn::Conv1dImpl& conv, const torch::Tensor& x) {
  torch::Tensor out = conv.forward(x);
  FlopCounter::Conv(out, conv.weight);
  return out;
}

torch::Tensor CountedLinear(torch::nn::LinearImpl& linear, const torch::Tensor& x) {
  torch::Tensor out = linear.forward(x);
  FlopCounter::Linear(out, linear.weight.size(1));
  return out;
}

}  // namespace gd
