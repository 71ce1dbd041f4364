// Counts the floating-point work of the networks' matrix products (convolutions, linear layers,
// attention's two batched products) as 2 x multiply-accumulates, while a FlopCounter is alive on
// the calling thread. Element-wise work (norms, activations) is not counted, as usual for
// GFLOP figures. Used by gd-bench to turn throughput into achieved GFLOP/s.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace gd {

class FlopCounter {
 public:
  FlopCounter();
  ~FlopCounter();
  FlopCounter(const FlopCounter&) = delete;
  FlopCounter& operator=(const FlopCounter&) = delete;
  int64_t flops() const { return flops_; }

  // Called by the layers; no-ops when no counter is active on this thread.
  static void Conv(const torch::Tensor& output, const torch::Tensor& weight);
  static void Linear(const torch::Tensor& output, int64_t in_features);
  // [B x N x K] @ [B x K x M]
  static void Bmm(int64_t batch, int64_t n, int64_t k, int64_t m);

 private:
  static void Add(int64_t flops);
  int64_t flops_ = 0;
  FlopCounter* previous_;
};

// One pass of a convolution with `weight` [C_out, C_in / groups, k...] producing (or, in the
// backward, consuming) `output_elements` values: each reads C_in / groups x k inputs.
int64_t ConvolutionFlops(int64_t output_elements, const torch::Tensor& weight);

// conv->forward(x), counted.
torch::Tensor CountedConv(torch::nn::Conv2dImpl& conv, const torch::Tensor& x);
torch::Tensor CountedConv(torch::nn::Conv1dImpl& conv, const torch::Tensor& x);
torch::Tensor CountedLinear(torch::nn::LinearImpl& linear, const torch::Tensor& x);

}  // namespace gd
