// Standard normal noise as a pure function of (key, counter, element index): each batch row draws
// from its own stream, chosen by a 64-bit key (an image's seed) and a counter (the step), with a
// fixed number of tensor operations for the whole batch. Unlike one torch::Generator per image,
// the cost in kernel launches does not grow with the batch, and the values do not depend on the
// device (CPU and CUDA give the same noise) or on which other rows are drawn with it.
//
// Each element hashes (row base, element index) with SplitMix64's finalizer (Steele, Lea and
// Flood 2014) in int64 tensor arithmetic (multiplication wraps modulo 2^64, as it does in
// ATen's CPU and CUDA kernels; tests/core/noise_test.cc checks it against uint64 host code),
// then turns the hash's two 32-bit halves into one normal by the Box-Muller transform.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace gd {

// The stream key of image `index` of a run seeded with `seed` (DeriveSeed, as int64 bits).
int64_t NoiseKey(uint64_t seed, uint64_t index);

// Normal noise [N x row_shape...] float32 on keys' device: row i from stream (keys[i],
// counters[i]). keys and counters are int64 [N] on the same device.
torch::Tensor CounterNormal(const torch::Tensor& keys, const torch::Tensor& counters,
                            at::IntArrayRef row_shape);

// The hash CounterNormal uses, on the host: element `element` of stream (key, counter), as the
// normal value it becomes. For tests and tools that must reproduce the engine's noise.
double CounterNormalAt(int64_t key, int64_t counter, int64_t element);

}  // namespace gd
