#include "core/diffusion/counter_noise.h"

#include <cmath>

#include "core/diffusion/sampling.h"

namespace gd {
namespace {

// SplitMix64's constants, as int64 bit patterns.
constexpr int64_t kGolden = static_cast<int64_t>(0x9e3779b97f4a7c15ULL);
constexpr int64_t kMix1 = static_cast<int64_t>(0xbf58476d1ce4e5b9ULL);
constexpr int64_t kMix2 = static_cast<int64_t>(0x94d049bb133111ebULL);
constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr double kTwoTo32 = 4294967296.0;

uint64_t MixHost(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// z ^ (z >>> shift) with a logical shift: ATen's right shift of int64 is arithmetic.
torch::Tensor XorShift(const torch::Tensor& z, int64_t shift) {
  const int64_t mask = static_cast<int64_t>((~0ULL) >> shift);
  return z.bitwise_xor(torch::bitwise_right_shift(z, shift).bitwise_and(mask));
}

torch::Tensor Mix(const torch::Tensor& z) {
  torch::Tensor m = XorShift(z, 30).mul(kMix1);
  m = XorShift(m, 27).mul(kMix2);
  return XorShift(m, 31);
}

// The row base of stream (key, counter).
uint64_t BaseHost(int64_t key, int64_t counter) {
  return MixHost(static_cast<uint64_t>(key) ^ MixHost(static_cast<uint64_t>(counter)));
}

}  // namespace

int64_t NoiseKey(uint64_t seed, uint64_t index) {
  return static_cast<int64_t>(DeriveSeed(seed, index));
}

torch::Tensor CounterNormal(const torch::Tensor& keys, const torch::Tensor& counters,
                            at::IntArrayRef row_shape) {
  const int64_t rows = keys.size(0);
  int64_t per_row = 1;
  for (int64_t d : row_shape) per_row *= d;
  const torch::Tensor base = Mix(keys.bitwise_xor(Mix(counters))).view({rows, 1});
  const torch::Tensor element =
      torch::arange(per_row, torch::TensorOptions().dtype(torch::kInt64).device(keys.device()))
          .mul(kGolden)
          .view({1, per_row});
  const torch::Tensor hash = Mix(base + element);
  // Two uniforms from the hash's halves: u1 in (0, 1] for the logarithm, u2 in [0, 1).
  const torch::Tensor high = torch::bitwise_right_shift(hash, 32).bitwise_and(static_cast<int64_t>(0xffffffff));
  const torch::Tensor low = hash.bitwise_and(static_cast<int64_t>(0xffffffff));
  const torch::Tensor u1 = (high.to(torch::kFloat64) + 1.0) / kTwoTo32;
  const torch::Tensor u2 = low.to(torch::kFloat64) / kTwoTo32;
  const torch::Tensor normal = (u1.log() * -2.0).sqrt() * (u2 * kTwoPi).cos();
  std::vector<int64_t> shape = {rows};
  shape.insert(shape.end(), row_shape.begin(), row_shape.end());
  return normal.to(torch::kFloat32).view(shape);
}

double CounterNormalAt(int64_t key, int64_t counter, int64_t element) {
  const uint64_t hash =
      MixHost(BaseHost(key, counter) + static_cast<uint64_t>(element) * 0x9e3779b97f4a7c15ULL);
  const double u1 = (static_cast<double>(hash >> 32) + 1.0) / kTwoTo32;
  const double u2 = static_cast<double>(hash & 0xffffffffULL) / kTwoTo32;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2);
}

}  // namespace gd
