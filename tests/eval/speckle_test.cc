// The speckle measure (eval/speckle.h): its ratio on images whose Laplacian is known in closed
// form, and the fraction on constructed ratio sets.
#include "eval/speckle.h"

#include <gtest/gtest.h>

namespace gd::eval {
namespace {

// uint8 [N x 1 x H x W] from float values in [0, 255].
torch::Tensor Images(const torch::Tensor& values) {
  return values.round().clamp(0, 255).to(torch::kUInt8).unsqueeze(1);
}

TEST(HighFrequencyRatios, OfFlatAndLinearImagesAreZero) {
  const torch::Tensor flat = torch::full({2, 16, 16}, 128.0);
  // A ramp along rows plus one along columns: every second difference is 0.
  const torch::Tensor rows = torch::arange(16, torch::kFloat32).mul(10).unsqueeze(1);
  const torch::Tensor cols = torch::arange(16, torch::kFloat32).mul(3).unsqueeze(0);
  const torch::Tensor ramp = (rows + cols).unsqueeze(0);
  auto ratios = HighFrequencyRatios(Images(torch::cat({flat, ramp})));
  ASSERT_TRUE(ratios.ok()) << ratios.status();
  EXPECT_EQ(ratios->scalar_type(), torch::kFloat64);
  EXPECT_EQ(ratios->size(0), 3);
  EXPECT_DOUBLE_EQ((*ratios)[0].item<double>(), 0);
  EXPECT_NEAR((*ratios)[2].item<double>(), 0, 1e-12);
}

TEST(HighFrequencyRatios, OfACheckerboardIsTheClosedForm) {
  // +-a around a mean: every interior Laplacian is -+8a and the variance is a^2, so 64.
  const torch::Tensor i = torch::arange(8).unsqueeze(1), j = torch::arange(8).unsqueeze(0);
  const torch::Tensor board = ((i + j) % 2).to(torch::kFloat32).mul(200).add(20).unsqueeze(0);
  auto ratios = HighFrequencyRatios(Images(board));
  ASSERT_TRUE(ratios.ok());
  EXPECT_NEAR((*ratios)[0].item<double>(), 64, 1e-9);
}

TEST(HighFrequencyRatios, OfPixelNoiseIsTwenty) {
  torch::manual_seed(1);
  auto ratios = HighFrequencyRatios(Images(torch::rand({4, 128, 128}) * 255));
  ASSERT_TRUE(ratios.ok());
  EXPECT_NEAR(ratios->mean().item<double>(), 20, 0.3);
}

TEST(HighFrequencyRatios, AveragesChannels) {
  torch::manual_seed(2);
  const torch::Tensor grey = Images(torch::rand({1, 12, 12}) * 255);
  auto ratios = HighFrequencyRatios(grey.expand({1, 3, 12, 12}).contiguous());
  auto single = HighFrequencyRatios(grey);
  ASSERT_TRUE(ratios.ok() && single.ok());
  EXPECT_NEAR((*ratios)[0].item<double>(), (*single)[0].item<double>(), 1e-12);
}

TEST(HighFrequencyRatios, RefusesWhatIsNotAnImageBatch) {
  EXPECT_FALSE(HighFrequencyRatios(torch::zeros({2, 1, 8, 8})).ok());  // float
  EXPECT_FALSE(HighFrequencyRatios(torch::zeros({1, 8, 8}, torch::kUInt8)).ok());
  EXPECT_FALSE(HighFrequencyRatios(torch::zeros({1, 1, 2, 8}, torch::kUInt8)).ok());
}

TEST(SpeckledFraction, CountsSamplesAboveTheReferenceQuantile) {
  const torch::Tensor reference = torch::arange(1, 101, torch::kFloat64);  // 1..100
  // The 0.99 quantile of 1..100 is 99.01: only 100 lies above it.
  auto same = SpeckledFraction(reference, reference);
  ASSERT_TRUE(same.ok());
  EXPECT_DOUBLE_EQ(*same, 0.01);
  auto samples = SpeckledFraction(reference, torch::tensor({50.0, 99.0, 99.5, 1000.0}));
  ASSERT_TRUE(samples.ok());
  EXPECT_DOUBLE_EQ(*samples, 0.5);
  auto median = SpeckledFraction(reference, reference, 0.5);
  ASSERT_TRUE(median.ok());
  EXPECT_DOUBLE_EQ(*median, 0.5);
}

TEST(SpeckledFraction, RefusesEmptyBatchesAndBadQuantiles) {
  const torch::Tensor some = torch::ones({3}, torch::kFloat64);
  EXPECT_FALSE(SpeckledFraction(torch::empty({0}, torch::kFloat64), some).ok());
  EXPECT_FALSE(SpeckledFraction(some, torch::empty({0}, torch::kFloat64)).ok());
  EXPECT_FALSE(SpeckledFraction(some, some, 1.0).ok());
  EXPECT_FALSE(SpeckledFraction(some, some, 0.0).ok());
}

}  // namespace
}  // namespace gd::eval
