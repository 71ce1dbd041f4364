// The bundled model's evaluator (models/fashion-mnist/evaluator.json) on the real Fashion-MNIST
// test set: it classifies as well as its card says, and its statistics behave as FID's should:
// two halves of the test set are close, another distribution is far.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/io/dataset.h"
#include "eval/batch_stats.h"
#include "eval/evaluator.h"
#include "tests/testing/testing.h"

namespace gd::eval {
namespace {

constexpr char kFashionMnist[] = "/usr/share/datasets/fashion-mnist";

class BundledEvaluator : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(std::string(kFashionMnist) + "/t10k-images-idx3-ubyte.gz")) {
      return;
    }
    auto evaluator = Evaluator::Load(testing::SourceDir() + "/models/fashion-mnist/evaluator.json");
    ASSERT_TRUE(evaluator.ok()) << evaluator.status();
    auto test = LoadDataset(kFashionMnist, "test");
    ASSERT_TRUE(test.ok()) << test.status();
    evaluator_ = new Evaluator(std::move(*evaluator));
    test_ = new ImageDataset(std::move(*test));
  }
  static void TearDownTestSuite() {
    delete evaluator_;
    delete test_;
    evaluator_ = nullptr;
    test_ = nullptr;
  }
  void SetUp() override {
    if (test_ == nullptr) GTEST_SKIP() << kFashionMnist << " is absent (dataset-fashion-mnist)";
  }
  // The stats of images [begin, begin + count) of the test set, transformed by `transform`.
  static BatchStats Stats(int64_t begin, int64_t count,
                          const std::function<torch::Tensor(torch::Tensor)>& transform = {}) {
    ImageDataset part = *test_;
    part.images = test_->images.narrow(0, begin, count);
    if (transform) part.images = transform(part.images);
    part.labels = test_->labels.narrow(0, begin, count);
    auto stats = ComputeStats(*evaluator_, part);
    EXPECT_TRUE(stats.ok()) << stats.status();
    return *stats;
  }
  static Evaluator* evaluator_;
  static ImageDataset* test_;
};
Evaluator* BundledEvaluator::evaluator_ = nullptr;
ImageDataset* BundledEvaluator::test_ = nullptr;

TEST_F(BundledEvaluator, ClassifiesTheTestSetAsItsCardSays) {
  const BatchStats all = Stats(0, 10000);
  EXPECT_EQ(all.pool_features.sizes(), (std::vector<int64_t>{10000, 256}));
  EXPECT_EQ(all.spatial.mu.numel(), 7 * 14 * 14);
  const double accuracy =
      (all.logits.argmax(1) == all.labels).to(torch::kFloat64).mean().item<double>();
  EXPECT_GE(accuracy, 0.92);
  EXPECT_NEAR(accuracy, evaluator_->spec().test_accuracy, 1e-4);
}

TEST_F(BundledEvaluator, HalvesOfTheTestSetAreCloseAndOtherImagesFar) {
  const BatchStats first = Stats(0, 5000);
  const BatchStats second = Stats(5000, 5000);
  auto halves = Score(*evaluator_, first, second);
  ASSERT_TRUE(halves.ok()) << halves.status();
  // Upside-down garments: the same pixels, another distribution.
  const BatchStats flipped = Stats(5000, 5000, [](torch::Tensor x) { return x.flip({2}); });
  auto far = Score(*evaluator_, first, flipped);
  ASSERT_TRUE(far.ok()) << far.status();
  SCOPED_TRACE(FormatTable(*halves) + "\n" + FormatTable(*far));
  const double spread = first.pool.sigma.trace().item<double>();
  EXPECT_LT(halves->fid, 0.01 * spread);
  EXPECT_LT(halves->fid, 0.05 * far->fid);
  EXPECT_LT(halves->sfid, 0.2 * far->sfid);
  EXPECT_GT(halves->precision, 0.6);
  EXPECT_GT(halves->recall, 0.6);
  EXPECT_LT(far->precision, halves->precision);
  // Real test images agree with their labels as often as the evaluator is accurate.
  EXPECT_NEAR(*halves->agreement, evaluator_->spec().test_accuracy, 0.02);
  EXPECT_GT(halves->inception_score, 7);
  // By definition 1% of the reference is speckled; another half of the same data about as much,
  // and the same garments under strong pixel noise (sigma 80 of 255) mostly: 86% when measured.
  ASSERT_TRUE(halves->speckled.has_value());
  EXPECT_NEAR(*halves->speckled, 0.01, 0.005);
  const BatchStats noisy = Stats(5000, 5000, [](torch::Tensor x) {
    torch::manual_seed(0);
    return (x.to(torch::kFloat32) + 80 * torch::randn(x.sizes())).clamp(0, 255).to(torch::kUInt8);
  });
  auto speckled = Score(*evaluator_, first, noisy);
  ASSERT_TRUE(speckled.ok()) << speckled.status();
  EXPECT_GT(*speckled->speckled, 0.75);
}

}  // namespace
}  // namespace gd::eval
