// The bundled Fashion-MNIST model (models/fashion-mnist): it loads as gd-server loads it, samples
// through the engine, and classifier guidance picks the class an unconditional model draws.
#include <filesystem>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/engine/engine.h"
#include "core/nn/model_bundle.h"
#include "core/status_macros.h"
#include "tests/testing/testing.h"

namespace gd {
namespace {

absl::StatusOr<std::shared_ptr<ModelBundle>> LoadBundled(Precision precision) {
  ASSIGN_OR_RETURN(ModelSpec spec, ReadModelDir(testing::SourceDir() + "/models/fashion-mnist"));
  return LoadModelBundle(spec, torch::kCPU, precision);
}

std::shared_ptr<ModelBundle> Bundled() {
  auto bundle = LoadBundled(Precision::kFloat32);
  EXPECT_TRUE(bundle.ok()) << bundle.status();
  return bundle.ok() ? *bundle : nullptr;
}

bool CpuHasHalfConvolutions() {
  try {
    const auto half = torch::TensorOptions().dtype(torch::kFloat16);
    torch::conv2d(torch::zeros({1, 1, 4, 4}, half), torch::zeros({1, 1, 3, 3}, half));
    return true;
  } catch (const c10::Error&) {
    return false;
  }
}

// A precision this LibTorch cannot run on the CPU is refused when the model loads, not by every
// request (gd-server would otherwise serve, and fail, each one).
TEST(BundledModel, APrecisionWithoutKernelsOnTheDeviceIsRefusedAtLoad) {
  if (CpuHasHalfConvolutions()) GTEST_SKIP() << "this LibTorch has float16 convolutions on CPU";
  auto bundle = LoadBundled(Precision::kFloat16);
  ASSERT_FALSE(bundle.ok());
  EXPECT_EQ(bundle.status().code(), absl::StatusCode::kInvalidArgument);
  using ::testing::HasSubstr;
  EXPECT_THAT(std::string(bundle.status().message()),
              ::testing::AllOf(HasSubstr("fp16 on cpu is not supported by this LibTorch"),
                               HasSubstr("use bf16 or fp32 on CPU"),
                               ::testing::Not(HasSubstr("frame #"))));
}

TEST(BundledModel, LoadsInBFloat16OnTheCpu) {
  auto bundle = LoadBundled(Precision::kBFloat16);
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  EXPECT_EQ((*bundle)->precision, Precision::kBFloat16);
}

TEST(BundledModel, DescribesAnUnconditionalGreyModelWithANoisyClassifier) {
  auto m = Bundled();
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->name, "fashion-mnist");
  EXPECT_EQ(m->image_size(), 28);
  EXPECT_EQ(m->channels(), 1);
  EXPECT_FALSE(m->class_conditional());
  EXPECT_TRUE(m->has_classifier());
  EXPECT_EQ(m->num_classes(), 10);
  EXPECT_EQ(m->class_names.front(), "T-shirt/top");
  EXPECT_EQ(m->diffusion.var_type(), ModelVarType::kLearnedRange);
  const int64_t parameters = CountParameters(*m->unet);
  EXPECT_GT(parameters, 1'500'000);
  EXPECT_LT(parameters, 2'500'000);
  // Small enough to live in the repository.
  const auto dir = std::filesystem::path(testing::SourceDir()) / "models/fashion-mnist";
  EXPECT_LT(std::filesystem::file_size(dir / "model.safetensors") +
                std::filesystem::file_size(dir / "classifier.safetensors"),
            20u << 20);
}

TEST(BundledModel, GuidanceDrawsTheAskedClasses) {
  auto m = Bundled();
  ASSERT_NE(m, nullptr);
  auto engine = Engine::Create(m, {});
  ASSERT_TRUE(engine.ok());
  SampleJob job;
  job.labels = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  job.classifier_scale = 5;
  job.sampler = SamplerKind::kDdim;
  job.timestep_respacing = "ddim20";
  job.seed = 11;
  auto result = testing::SampleAndWait(**engine, job);
  ASSERT_TRUE(result.ok()) << result.status();
  const torch::Tensor x = result->samples;
  EXPECT_EQ(x.sizes(), torch::IntArrayRef({10, 1, 28, 28}));
  // Guided DDIM re-derives x_0 from the shifted eps without clipping (as the reference): close
  // to [-1, 1], not inside it.
  EXPECT_LE(x.abs().max().item<float>(), 1.1f);
  // The classifier, shown the clean samples (t = 0), names the class each was guided to.
  torch::NoGradGuard no_grad;
  const torch::Tensor logits = m->classifier->forward(x, torch::zeros({10}, torch::kInt64));
  const torch::Tensor hits = logits.argmax(1) == torch::arange(10);
  EXPECT_GE(hits.sum().item<int64_t>(), 8) << "predicted " << logits.argmax(1);
  // Backgrounds are dark, as in Fashion-MNIST: the samples are images, not noise.
  EXPECT_LT(x.mean().item<float>(), 0.0f);
}

}  // namespace
}  // namespace gd
