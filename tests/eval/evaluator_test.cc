// gd-eval's evaluator (eval/evaluator.h), its trainer (gd-train evaluator) and the statistics
// cache (eval/batch_stats.h): a tiny evaluator trained on an easy synthetic task exports files
// that load back; the cache round-trips and refuses another evaluator's features.
#include "eval/evaluator.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "absl/strings/str_split.h"
#include "core/diffusion/sampling.h"
#include "core/io/npy.h"
#include "core/nn/checkpoint.h"
#include "core/train/train_common.h"
#include "eval/batch_stats.h"
#include "eval/evaluator_trainer.h"
#include "tests/testing/testing.h"

namespace gd::eval {
namespace {

namespace fs = std::filesystem;

constexpr char kTinyFlags[] =
    "--image_size 8 --in_channels 1 --num_classes 2 --evaluator_channels 4,8 "
    "--evaluator_feature_channels 16 --evaluator_spatial_stage 0 --evaluator_spatial_channels 2";

// 8x8 grey images of two classes: class 0 bright on top, class 1 bright at the bottom, noisy.
void WriteTask(const std::string& path, int64_t n, uint64_t seed) {
  torch::Generator gen = MakeGenerator(seed);
  const torch::Tensor labels = torch::arange(n) % 2;
  torch::Tensor images = torch::rand({n, 8, 8, 1}, gen) * 80;
  images.narrow(1, 0, 4).add_((1 - labels).view({n, 1, 1, 1}) * 150);
  images.narrow(1, 4, 4).add_(labels.view({n, 1, 1, 1}) * 150);
  ASSERT_TRUE(WriteNpz(path, {{"arr_0", images.to(torch::kUInt8)}, {"arr_1", labels}}).ok());
}

TrainOptions TinyOptions(const std::string& dir, int64_t max_steps) {
  TrainOptions o;
  o.kind = TrainKind::kEvaluator;
  o.data = dir + "/train.npz";
  o.val_data = dir + "/val.npz";
  o.out = dir + "/run";
  o.seed = 5;
  o.lr = 1e-2;
  o.batch_size = 16;
  o.iterations = 40;
  o.max_steps = max_steps;
  o.anneal_lr = true;
  o.noised = false;
  o.log_interval = 10;
  o.save_interval = 20;
  o.eval_interval = 20;
  o.eval_samples = 32;
  o.threads = 1;
  return o;
}

ReferenceFlags TinyFlags() {
  const std::vector<std::string> args = absl::StrSplit(kTinyFlags, ' ');
  auto flags = ReferenceFlags::Parse(args, EvaluatorFlagSpecs());
  EXPECT_TRUE(flags.ok()) << flags.status();
  return *flags;
}

class TinyEvaluator : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::TempDir("eval"));
    WriteTask(*dir_ + "/train.npz", 256, 1);
    WriteTask(*dir_ + "/val.npz", 64, 2);
    auto summary = TrainEvaluator(TinyFlags(), TinyOptions(*dir_, 0));
    ASSERT_TRUE(summary.ok()) << summary.status();
    ASSERT_EQ(summary->end_step, 40);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static std::string* dir_;
};
std::string* TinyEvaluator::dir_ = nullptr;

TEST_F(TinyEvaluator, LearnsTheTaskAndExportsALoadableEvaluator) {
  auto evaluator = Evaluator::Load(*dir_ + "/run/evaluator.json");
  ASSERT_TRUE(evaluator.ok()) << evaluator.status();
  EXPECT_EQ(evaluator->spec().name, "run");
  EXPECT_GE(evaluator->spec().test_accuracy, 0.95);
  EXPECT_EQ(ToFlagString(evaluator->config()),
            ToFlagString(*EvaluatorConfigFromFlagString(kTinyFlags)));
  auto data = LoadDataset(*dir_ + "/val.npz");
  ASSERT_TRUE(data.ok());
  auto features = evaluator->Compute(data->images, /*batch_size=*/7);
  ASSERT_TRUE(features.ok()) << features.status();
  EXPECT_EQ(features->pool.sizes(), (std::vector<int64_t>{64, 16}));
  EXPECT_EQ(features->spatial.sizes(), (std::vector<int64_t>{64, 2 * 8 * 8}));
  EXPECT_EQ(features->logits.sizes(), (std::vector<int64_t>{64, 2}));
  const double accuracy =
      (features->logits.argmax(1) == data->labels).to(torch::kFloat64).mean().item<double>();
  EXPECT_NEAR(accuracy, evaluator->spec().test_accuracy, 1e-9);
  // Batching does not change the features (inference-mode batch norm).
  auto whole = evaluator->Compute(data->images, 64);
  EXPECT_TRUE(testing::TensorsClose(whole->pool, features->pool, 1e-5));
  // Images of another size are refused with the size expected.
  auto wrong = evaluator->Compute(torch::zeros({2, 1, 28, 28}, torch::kUInt8));
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("[N x 1 x 8 x 8]"), std::string::npos) << wrong.status();
}

TEST_F(TinyEvaluator, ResumedTrainingEqualsAnUninterruptedRun) {
  const std::string dir = *dir_;
  TrainOptions half = TinyOptions(dir, 20);
  half.out = dir + "/resumed";
  ASSERT_TRUE(TrainEvaluator(TinyFlags(), half).ok());
  TrainOptions rest = TinyOptions(dir, 0);
  rest.out = dir + "/resumed";
  rest.resume_checkpoint = "latest";
  auto summary = TrainEvaluator(TinyFlags(), rest);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->start_step, 20);
  auto resumed = ReadCheckpoint(train::CheckpointPath(dir + "/resumed", "model", 40));
  auto straight = ReadCheckpoint(train::CheckpointPath(dir + "/run", "model", 40));
  ASSERT_TRUE(resumed.ok() && straight.ok());
  ASSERT_EQ(resumed->size(), straight->size());
  for (size_t i = 0; i < resumed->size(); ++i) {
    EXPECT_TRUE(torch::equal((*resumed)[i].second, (*straight)[i].second)) << (*resumed)[i].first;
  }
}

TEST_F(TinyEvaluator, StatisticsCacheRoundTripsAndKnowsItsEvaluator) {
  auto evaluator = Evaluator::Load(*dir_ + "/run/evaluator.json");
  ASSERT_TRUE(evaluator.ok());
  auto computed = LoadBatch(*evaluator, *dir_ + "/val.npz");
  ASSERT_TRUE(computed.ok()) << computed.status();
  EXPECT_EQ(computed->evaluator, evaluator->fingerprint());
  const std::string cache = *dir_ + "/val_stats.npz";
  ASSERT_TRUE(WriteStats(cache, *computed).ok());
  auto cached = LoadBatch(*evaluator, cache);
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_EQ(cached->description, computed->description);
  EXPECT_TRUE(torch::equal(cached->pool.sigma, computed->pool.sigma));
  EXPECT_TRUE(torch::equal(cached->spatial.mu, computed->spatial.mu));
  EXPECT_TRUE(torch::equal(cached->pool_features, computed->pool_features));
  EXPECT_TRUE(torch::equal(cached->labels, computed->labels));
  EXPECT_TRUE(torch::equal(cached->high_frequency, computed->high_frequency));

  auto scores = Score(*evaluator, *cached, *computed);
  ASSERT_TRUE(scores.ok()) << scores.status();
  EXPECT_NEAR(scores->fid, 0, 1e-6);
  EXPECT_EQ(scores->precision, 1);
  EXPECT_EQ(scores->recall, 1);
  ASSERT_TRUE(scores->agreement.has_value());
  EXPECT_NEAR(*scores->agreement, evaluator->spec().test_accuracy, 1e-9);
  EXPECT_EQ(scores->per_class.size(), 2u);
  EXPECT_EQ(scores->per_class[0].count, 32);

  BatchStats foreign = *cached;
  foreign.evaluator = "another:00000000";
  auto refused = Score(*evaluator, foreign, *computed);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(EvaluatorConfig, RejectsStagesAndSpatialFeaturesThatDoNotExist) {
  EXPECT_TRUE(EvaluatorConfigFromFlagString(kTinyFlags).ok());
  auto bad_stage = EvaluatorConfigFromFlagString(
      "--image_size 8 --in_channels 1 --num_classes 2 --evaluator_channels 4,8 "
      "--evaluator_spatial_stage 2");
  ASSERT_FALSE(bad_stage.ok());
  EXPECT_NE(bad_stage.status().message().find("stages are 0..1"), std::string::npos);
  EXPECT_FALSE(EvaluatorConfigFromFlagString("--image_size 8 --in_channels 1 --num_classes 2 "
                                             "--evaluator_channels 4,8 "
                                             "--evaluator_spatial_channels 9")
                   .ok());
  // 28 is not divisible by 2^3: four stages need three poolings.
  EXPECT_FALSE(EvaluatorConfigFromFlagString("--image_size 28 --in_channels 1 --num_classes 10 "
                                             "--evaluator_channels 8,8,8,8")
                   .ok());
  EXPECT_FALSE(EvaluatorConfigFromFlagString("--evaluator_channels 4,x").ok());
}

}  // namespace
}  // namespace gd::eval
