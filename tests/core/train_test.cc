// gd-train's trainers on a tiny synthetic set: the loss goes down, checkpoints are written and
// loadable, and a resumed run continues exactly where an uninterrupted one would be.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/io/npy.h"
#include "core/nn/checkpoint.h"
#include "core/nn/model_bundle.h"
#include "core/train/trainer.h"
#include "tests/testing/testing.h"

namespace gd {
namespace {

namespace fs = std::filesystem;

// 256 grey 16x16 images of two classes: horizontal and vertical stripes, with noise.
std::string WriteToyData(const std::string& dir) {
  torch::manual_seed(0);
  const int64_t n = 256;
  torch::Tensor labels = torch::arange(n) % 2;
  torch::Tensor ramp = (torch::arange(16) % 4 < 2).to(torch::kFloat32) * 200 + 20;
  torch::Tensor horizontal = ramp.view({16, 1}).expand({16, 16});
  torch::Tensor vertical = ramp.view({1, 16}).expand({16, 16});
  torch::Tensor images = torch::where(labels.view({n, 1, 1}) == 0, horizontal, vertical) +
                         torch::randn({n, 16, 16}) * 10;
  const std::string path = dir + "/toy.npz";
  EXPECT_TRUE(WriteNpz(path, {{"arr_0", images.clamp(0, 255).to(torch::kUInt8)},
                              {"arr_1", labels.to(torch::kInt64)}})
                  .ok());
  return path;
}

const char* kModelFlags =
    "--image_size 16 --in_channels 1 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 "
    "--attention_resolutions 8 --num_head_channels 32 --learn_sigma True --diffusion_steps 100 "
    "--noise_schedule cosine";

absl::StatusOr<TrainSummary> Train(TrainKind kind, const std::string& flags,
                                   const std::vector<std::string>& extra) {
  std::vector<std::string> args;
  std::istringstream in(flags);
  for (std::string token; in >> token;) args.push_back(token);
  args.insert(args.end(), extra.begin(), extra.end());
  auto parsed = ReferenceFlags::Parse(args, TrainFlagSpecs(kind));
  if (!parsed.ok()) return parsed.status();
  auto options = TrainOptionsFromFlags(kind, *parsed);
  if (!options.ok()) return options.status();
  return kind == TrainKind::kDiffusion ? TrainDiffusion(*parsed, *options)
                                       : TrainClassifier(*parsed, *options);
}

std::vector<nlohmann::json> Metrics(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(out + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

class TrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir("train");
    data_ = WriteToyData(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::vector<std::string> Common(const std::string& out) {
    return {"--data", data_, "--out", out, "--batch_size", "16", "--lr", "1e-3",
            "--threads", "1", "--seed", "3", "--random_flip", "false"};
  }
  std::string dir_, data_;
};

TEST_F(TrainTest, DiffusionLossFallsAndTheOutputIsAServableModelDir) {
  const std::string out = dir_ + "/diffusion";
  auto extra = Common(out);
  for (std::string s : {"--max_steps", "40", "--log_interval", "1", "--save_interval", "20",
                        "--ema_rate", "0.9,0.99", "--microbatch", "8"}) {
    extra.push_back(s);
  }
  auto summary = Train(TrainKind::kDiffusion, kModelFlags, extra);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->end_step, 40);
  const auto lines = Metrics(out);
  ASSERT_EQ(lines.size(), 40u);
  double first = 0, last = 0;
  for (int i = 0; i < 8; ++i) {
    first += lines[i]["mse"].get<double>();
    last += lines[lines.size() - 1 - i]["mse"].get<double>();
  }
  EXPECT_LT(last, 0.7 * first) << "the eps MSE falls";
  EXPECT_TRUE(lines.back().contains("loss_q0") || lines.back().contains("loss_q3"));
  for (const std::string name : {"model_000020", "model_000040", "ema_0.9_000040",
                                 "ema_0.99_000040", "opt_000040"}) {
    EXPECT_TRUE(fs::exists(out + "/" + name + ".safetensors")) << name;
  }
  // The folder is a model directory gd-server can load.
  auto spec = ReadModelDir(out);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(fs::path(spec->model_path).filename(), "ema_0.9_000040.safetensors");
  auto bundle = LoadModelBundle(*spec, torch::kCPU, Precision::kFloat32);
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  EXPECT_EQ((*bundle)->channels(), 1);
}

TEST_F(TrainTest, ResumeContinuesExactlyWithTheSameOptimizerState) {
  auto run = [&](const std::string& out, const std::string& max_steps, bool resume) {
    auto extra = Common(out);
    for (std::string s : {"--log_interval", "2", "--save_interval", "3",
                          "--schedule_sampler", "loss-second-moment", "--max_steps"}) {
      extra.push_back(s);
    }
    extra.push_back(max_steps);
    if (resume) {
      extra.push_back("--resume_checkpoint");
      extra.push_back("latest");
    }
    return Train(TrainKind::kDiffusion, kModelFlags, extra);
  };
  const std::string straight = dir_ + "/straight", split = dir_ + "/split";
  ASSERT_TRUE(run(straight, "6", false).ok());
  ASSERT_TRUE(run(split, "3", false).ok());
  auto resumed = run(split, "6", true);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->start_step, 3);
  EXPECT_EQ(resumed->end_step, 6);
  for (const std::string name : {"model_000006", "ema_0.9999_000006", "opt_000006"}) {
    auto a = ReadSafetensors(straight + "/" + name + ".safetensors");
    auto b = ReadSafetensors(split + "/" + name + ".safetensors");
    ASSERT_TRUE(a.ok() && b.ok()) << name;
    ASSERT_EQ(a->size(), b->size());
    for (size_t i = 0; i < a->size(); ++i) {
      EXPECT_EQ((*a)[i].first, (*b)[i].first);
      EXPECT_TRUE(torch::equal((*a)[i].second, (*b)[i].second)) << name << " " << (*a)[i].first;
    }
  }
}

// An exported model is a bare model_NNNNNN file: no optimizer state, no EMA beside it. Resuming
// from it (to train a shipped model further) starts fresh AdamW moments, as the reference does.
TEST_F(TrainTest, ResumesFromBareWeightsWithFreshOptimizerMoments) {
  auto run = [&](const std::string& out, const std::string& max_steps,
                 const std::string& resume) {
    auto extra = Common(out);
    for (std::string s : {"--log_interval", "2", "--save_interval", "3", "--max_steps"}) {
      extra.push_back(s);
    }
    extra.push_back(max_steps);
    if (!resume.empty()) {
      extra.push_back("--resume_checkpoint");
      extra.push_back(resume);
    }
    return Train(TrainKind::kDiffusion, kModelFlags, extra);
  };
  const std::string first = dir_ + "/first", bare = dir_ + "/bare";
  ASSERT_TRUE(run(first, "3", "").ok());
  fs::create_directories(bare);
  fs::copy_file(first + "/model_000003.safetensors", bare + "/model_000003.safetensors");
  auto resumed = run(bare, "5", bare + "/model_000003.safetensors");
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->start_step, 3);
  EXPECT_EQ(resumed->end_step, 5);
  for (const std::string name : {"model_000005", "ema_0.9999_000005", "opt_000005"}) {
    EXPECT_TRUE(fs::exists(bare + "/" + name + ".safetensors")) << name;
  }
  auto start = ReadSafetensors(bare + "/model_000003.safetensors");
  auto end = ReadSafetensors(bare + "/model_000005.safetensors");
  ASSERT_TRUE(start.ok() && end.ok());
  bool moved = false;
  for (size_t i = 0; i < start->size(); ++i) {
    moved = moved || !torch::equal((*start)[i].second, (*end)[i].second);
  }
  EXPECT_TRUE(moved) << "two more steps were trained from the bare weights";
}

TEST_F(TrainTest, ClassifierLearnsAndEvaluatesOnHeldOutData) {
  const std::string out = dir_ + "/classifier";
  auto extra = Common(out);
  for (std::string s : {"--iterations", "30", "--log_interval", "10", "--eval_interval", "10",
                        "--eval_samples", "32", "--val_data", data_.c_str(), "--anneal_lr", "true",
                        "--num_classes", "2", "--classifier_width", "32",
                        "--classifier_depth", "1", "--classifier_channel_mult", "1,2",
                        "--classifier_attention_resolutions", "8",
                        "--classifier_num_head_channels", "32", "--noised", "false"}) {
    extra.push_back(s);
  }
  auto summary = Train(TrainKind::kClassifier,
                       "--image_size 16 --in_channels 1 --diffusion_steps 100", extra);
  ASSERT_TRUE(summary.ok()) << summary.status();
  const auto lines = Metrics(out);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_TRUE(lines.back().contains("eval_acc@1"));
  EXPECT_GT(lines.back()["eval_acc@1"].get<double>(), 0.9) << "stripes are easy";
  EXPECT_LT(lines.back()["lr"].get<double>(), 1e-3) << "annealed";
  EXPECT_TRUE(fs::exists(out + "/model_000030.safetensors"));
}

TEST_F(TrainTest, BadInputsAreClearErrors) {
  auto extra = Common(dir_ + "/x");
  extra.push_back("--max_steps");
  extra.push_back("1");
  auto wrong_size = Train(TrainKind::kDiffusion,
                          "--image_size 32 --in_channels 1 --num_channels 32 --channel_mult 1,2",
                          extra);
  ASSERT_FALSE(wrong_size.ok());
  EXPECT_NE(wrong_size.status().message().find("16x16"), std::string::npos) << wrong_size.status();
  auto missing = Train(TrainKind::kDiffusion, kModelFlags,
                       {"--data", dir_ + "/nothing.npz", "--out", dir_ + "/y"});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("nothing.npz"), std::string::npos);
  auto unknown = Train(TrainKind::kDiffusion, kModelFlags, {"--learning_rate", "1"});
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("--learning_rate"), std::string::npos);
  auto no_resume = Train(TrainKind::kDiffusion, kModelFlags,
                         {"--data", data_, "--out", dir_ + "/z", "--resume_checkpoint",
                          dir_ + "/model_000100.safetensors"});
  EXPECT_EQ(no_resume.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace gd
