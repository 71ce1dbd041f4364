// core/nn/op_profile: operator classes by name, FLOPs that agree with the layers' own count, the
// engine's phases, and the guidance backward computing input gradients only.
#include <chrono>
#include <stdexcept>
#include <vector>

#include <ATen/record_function.h>
#include <gtest/gtest.h>

#include "core/nn/flops.h"
#include "core/nn/guidance.h"
#include "core/nn/op_profile.h"
#include "core/nn/unet.h"

namespace gd {
namespace {

UNetConfig TinyNetwork(int64_t out_channels) {
  UNetConfig c;
  c.image_size = 16;
  c.in_channels = 3;
  c.model_channels = 32;
  c.out_channels = out_channels;
  c.num_res_blocks = 1;
  c.channel_mult = {1, 2};
  c.attention_ds = {2};
  c.num_heads = 2;
  c.use_scale_shift_norm = true;
  c.resblock_updown = true;
  return c;
}

int64_t Flops(const OpProfile::Table& table, const std::string& phase, OpClass c) {
  const auto it = table.find(phase);
  return it == table.end() ? 0 : it->second[static_cast<size_t>(c)].flops;
}

int64_t AllFlops(const OpProfile::Table& table) {
  int64_t sum = 0;
  for (const auto& [phase, classes] : table) {
    for (const OpStats& s : classes) sum += s.flops;
  }
  return sum;
}

TEST(OpProfile, ClassifiesOperatorsByName) {
  EXPECT_EQ(ClassifyOperator("aten::convolution"), OpClass::kConvolution);
  EXPECT_EQ(ClassifyOperator("aten::mkldnn_convolution"), OpClass::kConvolution);
  EXPECT_EQ(ClassifyOperator("aten::convolution_backward"), OpClass::kConvolution);
  EXPECT_EQ(ClassifyOperator("aten::bmm"), OpClass::kMatmul);
  EXPECT_EQ(ClassifyOperator("aten::addmm"), OpClass::kMatmul);
  EXPECT_EQ(ClassifyOperator("aten::native_group_norm_backward"), OpClass::kGroupNorm);
  EXPECT_EQ(ClassifyOperator("aten::silu_backward"), OpClass::kSiLU);
  EXPECT_EQ(ClassifyOperator("aten::_log_softmax"), OpClass::kSoftmax);
  EXPECT_EQ(ClassifyOperator("aten::avg_pool2d"), OpClass::kResample);
  EXPECT_EQ(ClassifyOperator("aten::upsample_nearest2d"), OpClass::kResample);
  EXPECT_EQ(ClassifyOperator("aten::cat"), OpClass::kMemory);
  EXPECT_EQ(ClassifyOperator("aten::to"), OpClass::kMemory);
  EXPECT_EQ(ClassifyOperator("aten::mul"), OpClass::kElementwise);
  EXPECT_EQ(ClassifyOperator("aten::topk"), OpClass::kElementwise);
  EXPECT_EQ(ClassifyOperator("autograd::engine::evaluate_function: ConvolutionBackward0"),
            OpClass::kAutograd);
  EXPECT_EQ(ClassifyOperator("ConvolutionBackward0"), OpClass::kAutograd);
  EXPECT_EQ(ClassifyOperator("gd::engine::update"), OpClass::kHost);
}

TEST(OpProfile, CountsTheSameForwardFlopsAsTheLayers) {
  auto net = CreateUNet(TinyNetwork(3));
  ASSERT_TRUE(net.ok()) << net.status();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({2, 3, 16, 16});
  const torch::Tensor t = torch::tensor({3, 700});
  FlopCounter counter;
  OpProfile profile;
  (*net)->forward(x, t);
  const OpProfile::Table table = profile.table();
  ASSERT_GT(counter.flops(), 0);
  EXPECT_EQ(AllFlops(table), counter.flops());
  EXPECT_GT(table.at("other")[static_cast<size_t>(OpClass::kConvolution)].seconds, 0);
  EXPECT_GT(table.at("other")[static_cast<size_t>(OpClass::kGroupNorm)].calls, 0);
}

// By operator name: the same operators, calls and FLOPs as the class table, most time first.
TEST(OpProfile, ListsOperatorsByNameAsTheClassTableCountsThem) {
  torch::NoGradGuard no_grad;
  const torch::Tensor a = torch::randn({64, 64}), b = torch::randn({64, 64});
  OpProfile profile;
  for (int i = 0; i < 3; ++i) torch::mm(a, b);
  torch::add(a, b);
  const OpProfile::Table table = profile.table();
  const std::vector<OpProfile::Operator> ops = profile.operators();
  int64_t calls = 0, flops = 0, mm_entries = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    calls += ops[i].stats.calls;
    flops += ops[i].stats.flops;
    if (i > 0) EXPECT_GE(ops[i - 1].stats.seconds, ops[i].stats.seconds);
    if (ops[i].name == "aten::mm") {
      ++mm_entries;
      EXPECT_EQ(ops[i].phase, "other");
      EXPECT_EQ(ops[i].stats.calls, 3);
      EXPECT_EQ(ops[i].stats.flops, 3 * 2 * 64 * 64 * 64);
    }
  }
  EXPECT_EQ(mm_entries, 1);
  int64_t table_calls = 0;
  for (const auto& [phase, classes] : table) {
    for (const OpStats& s : classes) table_calls += s.calls;
  }
  EXPECT_EQ(calls, table_calls);
  EXPECT_EQ(flops, AllFlops(table));
  EXPECT_EQ(table.at("other")[static_cast<size_t>(OpClass::kMatmul)].calls, 3);
}

TEST(OpProfile, GuidanceBackwardComputesInputGradientsOnly) {
  UNetConfig c = TinyNetwork(5);
  c.pool = "adaptive";
  auto classifier = CreateEncoderUNet(c);
  ASSERT_TRUE(classifier.ok()) << classifier.status();
  FreezeForInference(**classifier);
  OpProfile profile;
  ClassifierGradient(*classifier, torch::randn({2, 3, 16, 16}), torch::tensor({10, 500}),
                     torch::tensor({1, 4}), torch::tensor(1.0));
  const OpProfile::Table table = profile.table();
  const int64_t forward = Flops(table, "gd::classifier::forward", OpClass::kConvolution);
  const int64_t backward = Flops(table, "gd::classifier::input_gradient", OpClass::kConvolution);
  ASSERT_GT(forward, 0);
  // One pass per convolution for its input's gradient; a weight gradient would double it.
  EXPECT_EQ(backward, forward);
  EXPECT_GT(table.at("gd::classifier::input_gradient")[static_cast<size_t>(OpClass::kAutograd)].calls, 0);
}

TEST(OpProfile, ExclusiveTimesAddUpToNoMoreThanTheWallTime) {
  const torch::Tensor a = torch::randn({256, 256});
  const auto start = std::chrono::steady_clock::now();
  OpProfile profile;
  {
    RECORD_FUNCTION("gd::test::outer", std::vector<c10::IValue>());
    for (int i = 0; i < 20; ++i) torch::mm(a, a).relu_();
  }
  const OpProfile::Table table = profile.table();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double booked = 0;
  for (const auto& [phase, classes] : table) {
    for (const OpStats& s : classes) booked += s.seconds;
  }
  ASSERT_EQ(table.count("gd::test::outer"), 1u);
  const OpStats& mm = table.at("gd::test::outer")[static_cast<size_t>(OpClass::kMatmul)];
  EXPECT_EQ(mm.calls, 20);
  EXPECT_EQ(mm.flops, 20 * 2 * 256 * 256 * 256);
  EXPECT_GT(booked, 0);
  EXPECT_LE(booked, wall);
}

TEST(OpProfile, OnlyOneRecordsAtATime) {
  OpProfile first;
  EXPECT_THROW({ OpProfile second; }, std::logic_error);
}

}  // namespace
}  // namespace gd
