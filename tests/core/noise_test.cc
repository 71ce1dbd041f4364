// core/diffusion/counter_noise: the batched tensor hash equals its uint64 host definition (so
// int64 multiplication wraps as assumed), rows do not depend on what else is drawn, and the
// values look standard normal.
#include <gtest/gtest.h>

#include "core/diffusion/counter_noise.h"

namespace gd {
namespace {

torch::Tensor Keys(std::vector<int64_t> v) { return torch::tensor(v, torch::kInt64); }

TEST(CounterNoiseTest, TensorHashEqualsTheHostDefinition) {
  const std::vector<int64_t> keys = {NoiseKey(0, 0), NoiseKey(7, 3), -1, INT64_MIN, 12345};
  const std::vector<int64_t> counters = {0, 1, 250, INT64_MAX, -7};
  const torch::Tensor z = CounterNormal(Keys(keys), Keys(counters), {3, 5, 5});
  ASSERT_EQ(z.sizes(), torch::IntArrayRef({5, 3, 5, 5}));
  ASSERT_EQ(z.scalar_type(), torch::kFloat32);
  for (int64_t r = 0; r < 5; ++r) {
    for (int64_t e : {0, 1, 37, 74}) {
      const float expected = static_cast<float>(CounterNormalAt(keys[r], counters[r], e));
      EXPECT_EQ(z[r].flatten()[e].item<float>(), expected) << "row " << r << " element " << e;
    }
  }
}

TEST(CounterNoiseTest, ARowDependsOnlyOnItsKeyAndCounter) {
  const torch::Tensor alone = CounterNormal(Keys({NoiseKey(9, 2)}), Keys({4}), {1, 8, 8});
  const torch::Tensor batched = CounterNormal(Keys({NoiseKey(1, 0), NoiseKey(9, 2), NoiseKey(9, 3)}),
                                              Keys({1, 4, 4}), {1, 8, 8});
  EXPECT_TRUE(torch::equal(batched[1], alone[0]));
  EXPECT_FALSE(torch::equal(batched[2], alone[0]));  // the next image of the same request
  const torch::Tensor next_step = CounterNormal(Keys({NoiseKey(9, 2)}), Keys({5}), {1, 8, 8});
  EXPECT_FALSE(torch::equal(next_step, alone));
  // Deterministic.
  EXPECT_TRUE(torch::equal(alone, CounterNormal(Keys({NoiseKey(9, 2)}), Keys({4}), {1, 8, 8})));
}

TEST(CounterNoiseTest, ValuesAreStandardNormalAndUncorrelated) {
  std::vector<int64_t> keys, counters;
  for (int64_t i = 0; i < 64; ++i) {
    keys.push_back(NoiseKey(42, static_cast<uint64_t>(i)));
    counters.push_back(i % 5);
  }
  const torch::Tensor z = CounterNormal(Keys(keys), Keys(counters), {3, 32, 32}).to(torch::kFloat64);
  const double n = static_cast<double>(z.numel());  // 196,608
  EXPECT_NEAR(z.mean().item<double>(), 0.0, 5.0 / std::sqrt(n));
  EXPECT_NEAR(z.std().item<double>(), 1.0, 0.01);
  // Tails: P(|z| > 2) = 0.0455, P(|z| > 3) = 0.0027.
  EXPECT_NEAR((z.abs() > 2).to(torch::kFloat64).mean().item<double>(), 0.0455, 0.003);
  EXPECT_NEAR((z.abs() > 3).to(torch::kFloat64).mean().item<double>(), 0.0027, 0.0006);
  // Neighbouring elements and neighbouring rows are uncorrelated.
  const torch::Tensor flat = z.flatten(1);
  const double along = (flat.narrow(1, 0, flat.size(1) - 1) * flat.narrow(1, 1, flat.size(1) - 1))
                           .mean().item<double>();
  const double across = (flat.narrow(0, 0, 63) * flat.narrow(0, 1, 63)).mean().item<double>();
  EXPECT_NEAR(along, 0.0, 0.015);
  EXPECT_NEAR(across, 0.0, 0.015);
}

}  // namespace
}  // namespace gd
