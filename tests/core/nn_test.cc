// core/nn: the reference's flag strings, the networks' structure and key names for every option
// (pools, resampling kinds, attention orders, class conditioning), mixed precision, and errors.
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/nn/config.h"
#include "core/nn/guidance.h"
#include "core/nn/unet.h"
#include "tests/testing/testing.h"

namespace gd {
namespace {

std::vector<std::string> Keys(const torch::nn::Module& m) {
  std::vector<std::string> keys;
  for (const auto& p : m.named_parameters()) keys.push_back(p.key());
  return keys;
}

bool HasKey(const torch::nn::Module& m, const std::string& key) {
  return m.named_parameters().contains(key);
}

// The reference README's ImageNet 256x256 classifier-guided sampling flags, verbatim.
const char* kImagenetModelFlags =
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True";
const char* kImagenetClassifierFlags =
    "--classifier_scale 1.0 --classifier_path models/256x256_classifier.pt --classifier_depth 2 "
    "--classifier_width 128 --classifier_pool attention --classifier_resblock_updown True "
    "--classifier_use_scale_shift_norm True --classifier_attention_resolutions 32,16,8";

TEST(ReferenceFlags, ReadmeFlagsVerbatim) {
  auto flags = ReferenceFlags::ParseStrings(
      {kImagenetModelFlags, kImagenetClassifierFlags, "--batch_size 4 --num_samples 50000 "
                                                      "--timestep_respacing 250"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  auto unet = flags->UNet();
  ASSERT_TRUE(unet.ok()) << unet.status();
  EXPECT_EQ(unet->image_size, 256);
  EXPECT_EQ(unet->out_channels, 6);
  EXPECT_EQ(unet->num_classes, 1000);
  EXPECT_EQ(unet->channel_mult, (std::vector<double>{1, 1, 2, 2, 4, 4}));
  EXPECT_EQ(unet->attention_ds, (std::vector<int64_t>{8, 16, 32}));
  EXPECT_EQ(unet->num_head_channels, 64);
  EXPECT_EQ(unet->num_heads, 4);  // the reference's default, unused with num_head_channels
  EXPECT_EQ(unet->precision, Precision::kFloat16);
  auto classifier = flags->Classifier();
  ASSERT_TRUE(classifier.ok()) << classifier.status();
  EXPECT_EQ(classifier->model_channels, 128);
  EXPECT_EQ(classifier->num_res_blocks, 2);
  EXPECT_EQ(classifier->pool, "attention");
  EXPECT_EQ(classifier->out_channels, 1000);
  EXPECT_EQ(classifier->num_head_channels, 64);
  const DiffusionConfig diffusion = flags->Diffusion();
  EXPECT_EQ(diffusion.var_type(), ModelVarType::kLearnedRange);
  EXPECT_EQ(diffusion.timestep_respacing, "250");
  EXPECT_DOUBLE_EQ(flags->GetFloat("classifier_scale"), 1.0);
  EXPECT_EQ(flags->GetInt("batch_size"), 4);
}

TEST(ReferenceFlags, DefaultsAreTheReferences) {
  const ReferenceFlags flags = ReferenceFlags::Defaults();
  EXPECT_EQ(flags.GetInt("num_channels"), 128);
  EXPECT_EQ(flags.GetInt("num_heads"), 4);
  EXPECT_EQ(flags.Get("attention_resolutions"), "16,8");
  EXPECT_TRUE(flags.GetBool("use_scale_shift_norm"));
  EXPECT_EQ(flags.Get("noise_schedule"), "linear");
  EXPECT_EQ(flags.GetInt("classifier_width"), 128);
  EXPECT_EQ(flags.Get("classifier_pool"), "attention");
  EXPECT_EQ(flags.GetInt("in_channels"), 3);
  EXPECT_EQ(flags.GetInt("num_classes"), 1000);
  EXPECT_EQ(flags.ToFlagString(), "");
}

TEST(ReferenceFlags, ErrorsNameTheFlag) {
  auto expect_error = [](const std::string& text, const std::string& needle) {
    auto flags = ReferenceFlags::ParseStrings({text});
    ASSERT_FALSE(flags.ok()) << text;
    EXPECT_EQ(flags.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(flags.status().message().find(needle), std::string::npos) << flags.status();
  };
  expect_error("--num_chanels 64", "--num_chanels");
  expect_error("--num_channels sixty", "--num_channels");
  expect_error("--class_cond maybe", "--class_cond");
  expect_error("--dropout 0.1 --image_size", "--image_size needs a value");
  expect_error("--image_size 64 --image_size 128", "--image_size is given twice");
  expect_error("image_size 64", "expected a flag");
  auto no_mult = ReferenceFlags::ParseStrings({"--image_size 28"});
  ASSERT_TRUE(no_mult.ok());
  auto unet = no_mult->UNet();
  ASSERT_FALSE(unet.ok());
  EXPECT_NE(unet.status().message().find("--channel_mult"), std::string::npos);
  auto bad_mult = ReferenceFlags::ParseStrings({"--image_size 28 --channel_mult 1,x"});
  ASSERT_TRUE(bad_mult.ok());
  EXPECT_FALSE(bad_mult->UNet().ok());
  for (const char* mult : {"1,inf", "nan", "1,-2", "1e400"}) {
    auto parsed =
        ReferenceFlags::ParseStrings({absl::StrCat("--image_size 28 --channel_mult ", mult)});
    ASSERT_TRUE(parsed.ok());
    auto refused = parsed->UNet();
    ASSERT_FALSE(refused.ok()) << mult;
    EXPECT_NE(refused.status().message().find("positive finite multiplier"), std::string::npos)
        << refused.status();
  }
  auto zero = ReferenceFlags::ParseStrings({"--num_res_blocks 0 --num_channels 0"});
  ASSERT_TRUE(zero.ok());
  EXPECT_FALSE(zero->UNet().ok());
}

TEST(ReferenceFlags, EqualsFormAndStr2BoolSpellings) {
  auto flags = ReferenceFlags::ParseStrings({"--class_cond=yes --learn_sigma 1 --use_fp16 F"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_TRUE(flags->GetBool("class_cond"));
  EXPECT_TRUE(flags->GetBool("learn_sigma"));
  EXPECT_FALSE(flags->GetBool("use_fp16"));
  EXPECT_TRUE(flags->IsSet("use_fp16"));
  EXPECT_FALSE(flags->IsSet("dropout"));
}

TEST(ReferenceFlags, JsonRoundTrip) {
  auto flags = ReferenceFlags::ParseStrings({kImagenetModelFlags, "--dropout 0.1"});
  ASSERT_TRUE(flags.ok());
  const nlohmann::json json = flags->ToJson();
  EXPECT_EQ(json["image_size"], 256);
  EXPECT_EQ(json["class_cond"], true);
  EXPECT_DOUBLE_EQ(json["dropout"].get<double>(), 0.1);
  auto back = ReferenceFlags::FromJson(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(), json);
  auto text_back = ReferenceFlags::ParseStrings({flags->ToFlagString()});
  ASSERT_TRUE(text_back.ok()) << text_back.status() << " from " << flags->ToFlagString();
  EXPECT_EQ(text_back->ToJson(), json);
  auto unknown = ReferenceFlags::FromJson({{"imagesize", 64}});
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("imagesize"), std::string::npos);
  EXPECT_FALSE(ReferenceFlags::FromJson({{"image_size", "big"}}).ok());
  EXPECT_FALSE(ReferenceFlags::FromJson(nlohmann::json::array()).ok());
}

// Found by fuzz/model_flags_fuzzer.cc: an empty value was written back as `--name ""`, which
// parses as the two quote characters, so a model without attention (gd-train records its flags with
// ToFlagString) read back with attention_resolutions "\"\"" and failed to load.
TEST(ReferenceFlags, EmptyValuesRoundTripThroughTheFlagString) {
  auto flags = ReferenceFlags::ParseStrings({"--attention_resolutions= --image_size 32"});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_EQ(flags->Get("attention_resolutions"), "");
  for (bool reference_only : {false, true}) {
    const std::string written = flags->ToFlagString(reference_only);
    EXPECT_EQ(written, "--image_size 32 --attention_resolutions=");
    auto back = ReferenceFlags::ParseStrings({written});
    ASSERT_TRUE(back.ok()) << back.status() << " from " << written;
    EXPECT_EQ(back->ToJson(), flags->ToJson());
    auto unet = back->UNet();
    ASSERT_FALSE(unet.ok());  // image_size 32 has no default channel_mult
    auto with_mult = ReferenceFlags::ParseStrings({written, "--channel_mult 1,2"});
    ASSERT_TRUE(with_mult.ok());
    unet = with_mult->UNet();
    ASSERT_TRUE(unet.ok()) << unet.status();
    EXPECT_TRUE(unet->attention_ds.empty());
  }
}

// Found by fuzz/model_flags_fuzzer.cc (UBSan): --learn_sigma with a huge --in_channels overflowed
// 2 * in_channels. Sizes and counts are bounded to [1, 2^24].
TEST(ReferenceFlags, SizesAreBoundedSoTheirArithmeticCannotOverflow) {
  auto huge = ReferenceFlags::ParseStrings(
      {"--image_size 9223372036854775807 --learn_sigma true --in_channels 4611686018427387904"});
  ASSERT_TRUE(huge.ok()) << huge.status();
  EXPECT_EQ(huge->UNet().status().message(), "--image_size = 9223372036854775807 must be at most "
                                             "16777216");
  for (const char* flag : {"in_channels", "num_channels", "num_res_blocks", "num_classes",
                           "diffusion_steps", "classifier_width", "classifier_depth"}) {
    SCOPED_TRACE(flag);
    auto at_limit = ReferenceFlags::ParseStrings(
        {absl::StrCat("--learn_sigma true --", flag, " 16777216")});
    auto over = ReferenceFlags::ParseStrings(
        {absl::StrCat("--learn_sigma true --", flag, " 16777217")});
    ASSERT_TRUE(at_limit.ok() && over.ok());
    const bool classifier = absl::StartsWith(flag, "classifier_");
    const absl::Status at_limit_status =
        classifier ? at_limit->Classifier().status() : at_limit->UNet().status();
    const absl::Status over_status =
        classifier ? over->Classifier().status() : over->UNet().status();
    EXPECT_TRUE(at_limit_status.ok()) << at_limit_status;
    EXPECT_EQ(over_status.message(),
              absl::StrCat("--", flag, " = 16777217 must be at most 16777216"));
  }
  auto in_channels = ReferenceFlags::ParseStrings({"--in_channels 16777216 --learn_sigma true"});
  ASSERT_TRUE(in_channels.ok());
  EXPECT_EQ(in_channels->UNet()->out_channels, 2 * 16777216);
}

TEST(ReferenceFlags, ExtraSpecsJoinTheCommandLine) {
  auto flags = ReferenceFlags::Parse({"--lr", "3e-4", "--batch_size", "64"},
                                     {{"lr", FlagSpec::Type::kFloat, "1e-4", "learning rate"},
                                      {"batch_size", FlagSpec::Type::kInt, "1", "batch"}});
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_DOUBLE_EQ(flags->GetFloat("lr"), 3e-4);
  EXPECT_EQ(flags->GetInt("batch_size"), 64);
}

UNetConfig SmallConfig() {
  UNetConfig c;
  c.image_size = 16;
  c.in_channels = 3;
  c.model_channels = 32;
  c.out_channels = 3;
  c.num_res_blocks = 1;
  c.channel_mult = {1, 2};
  c.attention_ds = {2};
  c.num_heads = 2;
  return c;
}

TEST(UNet, ConvResampleKeysAndShapes) {
  UNetConfig c = SmallConfig();
  c.resblock_updown = false;
  auto net = CreateUNet(c);
  ASSERT_TRUE(net.ok()) << net.status();
  EXPECT_TRUE(HasKey(**net, "input_blocks.2.0.op.weight"));   // Downsample with a convolution
  EXPECT_TRUE(HasKey(**net, "output_blocks.1.2.conv.weight"));  // Upsample after attention
  EXPECT_TRUE(HasKey(**net, "output_blocks.0.1.qkv.weight"));
  EXPECT_TRUE(HasKey(**net, "output_blocks.0.0.skip_connection.weight"));
  EXPECT_FALSE(HasKey(**net, "label_emb.weight"));
  torch::NoGradGuard no_grad;
  const torch::Tensor out = (*net)->forward(torch::randn({2, 3, 16, 16}), torch::tensor({1, 999}));
  EXPECT_EQ(out.sizes(), torch::IntArrayRef({2, 3, 16, 16}));
}

TEST(UNet, ResblockUpdownClassConditionalAndOddSizes) {
  // The bundled Fashion-MNIST layout: 28x28 grey, levels 28/14/7, attention at 7x7.
  UNetConfig c;
  c.image_size = 28;
  c.in_channels = 1;
  c.model_channels = 32;
  c.out_channels = 2;
  c.num_res_blocks = 2;
  c.channel_mult = {1, 2, 2};
  c.attention_ds = {4};
  c.num_head_channels = 32;
  c.resblock_updown = true;
  c.use_scale_shift_norm = true;
  c.num_classes = 10;
  auto net = CreateUNet(c);
  ASSERT_TRUE(net.ok()) << net.status();
  EXPECT_TRUE(HasKey(**net, "label_emb.weight"));
  EXPECT_TRUE(HasKey(**net, "input_blocks.3.0.in_layers.2.weight"));  // down ResBlock
  EXPECT_TRUE(HasKey(**net, "input_blocks.7.1.proj_out.weight"));
  EXPECT_TRUE(HasKey(**net, "output_blocks.2.2.emb_layers.1.weight"));  // up ResBlock
  torch::NoGradGuard no_grad;
  (*net)->eval();
  const torch::Tensor out = (*net)->forward(torch::randn({3, 1, 28, 28}), torch::tensor({0, 5, 9}),
                                            torch::tensor({0, 4, 9}));
  EXPECT_EQ(out.sizes(), torch::IntArrayRef({3, 2, 28, 28}));
  EXPECT_THROW((*net)->forward(torch::randn({1, 1, 28, 28}), torch::tensor({0})), c10::Error);
}

TEST(UNet, AttentionOrdersShareKeysButNotResults) {
  UNetConfig legacy = SmallConfig();
  UNetConfig modern = SmallConfig();
  modern.use_new_attention_order = true;
  auto a = CreateUNet(legacy);
  auto b = CreateUNet(modern);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(Keys(**a), Keys(**b));
  const torch::Tensor qkv = torch::randn({1, 3 * 2 * 4, 5});
  EXPECT_FALSE(torch::allclose(QKVAttention(qkv, 2, true), QKVAttention(qkv, 2, false)));
  EXPECT_TRUE(torch::allclose(QKVAttention(qkv.narrow(1, 0, 12), 1, true),
                              QKVAttention(qkv.narrow(1, 0, 12), 1, false)));
}

TEST(UNet, AttentionInBlocksMatchesOneBlockWithGradients) {
  // 5 heads in groups of 2 (block_bytes fits 2 x 16 rows x 70 keys), 50 queries in 16-row blocks.
  const auto make = [] { return torch::randn({5, 8, 50}, torch::kFloat64).requires_grad_(true); };
  const torch::Tensor q = make(), k = torch::randn({5, 8, 70}, torch::kFloat64).requires_grad_(true),
                      v = torch::randn({5, 8, 70}, torch::kFloat64).requires_grad_(true);
  const torch::Tensor whole = torch::bmm(v, torch::softmax(torch::bmm(q.transpose(1, 2), k), -1)
                                                .transpose(1, 2));
  const torch::Tensor blocked = AttendInBlocks(q, k, v, /*max_rows=*/16,
                                               /*block_bytes=*/2 * 16 * 70 * 4);
  EXPECT_TRUE(torch::allclose(blocked, whole, 1e-12, 1e-12));
  const torch::Tensor up = torch::randn_like(whole);
  const auto g_whole = torch::autograd::grad({whole}, {q, k, v}, {up});
  const auto g_blocked = torch::autograd::grad({blocked}, {q, k, v}, {up});
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(torch::allclose(g_blocked[i], g_whole[i], 1e-12, 1e-12)) << i;
}

TEST(UNet, HalfPrecisionConvertsOnlyTorsoConvolutions) {
  UNetConfig c = SmallConfig();
  c.precision = Precision::kFloat16;
  auto net = CreateUNet(c);
  ASSERT_TRUE(net.ok());
  const auto params = (*net)->named_parameters();
  EXPECT_EQ(params["input_blocks.0.0.weight"].scalar_type(), torch::kFloat16);
  EXPECT_EQ(params["input_blocks.1.0.in_layers.2.weight"].scalar_type(), torch::kFloat16);
  EXPECT_EQ(params["middle_block.1.qkv.weight"].scalar_type(), torch::kFloat16);
  EXPECT_EQ(params["input_blocks.1.0.in_layers.0.weight"].scalar_type(), torch::kFloat32);
  EXPECT_EQ(params["input_blocks.1.0.emb_layers.1.weight"].scalar_type(), torch::kFloat32);
  EXPECT_EQ(params["time_embed.0.weight"].scalar_type(), torch::kFloat32);
  EXPECT_EQ(params["out.2.weight"].scalar_type(), torch::kFloat32);
  (*net)->SetPrecision(Precision::kFloat32);
  EXPECT_EQ((*net)->named_parameters()["input_blocks.0.0.weight"].scalar_type(), torch::kFloat32);
}

TEST(UNet, Bfloat16ForwardStaysCloseToFloat32) {
  UNetConfig c = SmallConfig();
  torch::manual_seed(5);
  auto net = CreateUNet(c);
  ASSERT_TRUE(net.ok());
  torch::NoGradGuard no_grad;
  (*net)->eval();
  for (auto& p : (*net)->parameters()) p.normal_(0, 0.05);
  const torch::Tensor x = torch::randn({1, 3, 16, 16});
  const torch::Tensor t = torch::tensor({300});
  const torch::Tensor full = (*net)->forward(x, t);
  (*net)->SetPrecision(Precision::kBFloat16);
  torch::Tensor half;
  try {
    half = (*net)->forward(x, t);
  } catch (const c10::Error& e) {
    GTEST_SKIP() << "bfloat16 convolutions are not available on this CPU build: "
                 << e.what_without_backtrace();
  }
  EXPECT_EQ(half.scalar_type(), torch::kFloat32);
  EXPECT_LT(testing::RelativeError(half, full), 0.1);
  EXPECT_GT(testing::RelativeError(half, full), 0.0);
}

TEST(UNet, DropoutOnlyWhileTraining) {
  UNetConfig c = SmallConfig();
  c.dropout = 0.5;
  auto net = CreateUNet(c);
  ASSERT_TRUE(net.ok());
  torch::NoGradGuard no_grad;
  for (auto& p : (*net)->parameters()) p.normal_(0, 0.1);
  const torch::Tensor x = torch::randn({1, 3, 16, 16});
  const torch::Tensor t = torch::tensor({10});
  (*net)->eval();
  EXPECT_TRUE(torch::equal((*net)->forward(x, t), (*net)->forward(x, t)));
  (*net)->train();
  EXPECT_FALSE(torch::equal((*net)->forward(x, t), (*net)->forward(x, t)));
}

TEST(UNet, ConfigErrorsAreStatuses) {
  UNetConfig c = SmallConfig();
  c.model_channels = 40;  // not a multiple of GroupNorm's 32 groups
  auto bad_width = CreateUNet(c);
  ASSERT_FALSE(bad_width.ok());
  EXPECT_NE(bad_width.status().message().find("multiple of 32"), std::string::npos);
  c = SmallConfig();
  c.num_head_channels = 48;
  auto bad_heads = CreateUNet(c);
  ASSERT_FALSE(bad_heads.ok());
  EXPECT_NE(bad_heads.status().message().find("num_head_channels"), std::string::npos);
}

class EncoderPoolTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EncoderPoolTest, EveryPoolBuildsRunsAndNamesItsHead) {
  UNetConfig c = SmallConfig();
  c.out_channels = 7;
  c.num_head_channels = 32;
  c.use_scale_shift_norm = true;
  c.resblock_updown = true;
  c.pool = GetParam();
  auto net = CreateEncoderUNet(c);
  ASSERT_TRUE(net.ok()) << net.status();
  torch::NoGradGuard no_grad;
  const torch::Tensor logits = (*net)->forward(torch::randn({2, 3, 16, 16}), torch::tensor({5, 6}));
  EXPECT_EQ(logits.sizes(), torch::IntArrayRef({2, 7}));
  EXPECT_EQ(logits.scalar_type(), torch::kFloat32);
  const std::map<std::string, std::vector<std::string>> head_keys = {
      {"adaptive", {"out.0.weight", "out.3.weight"}},
      {"attention", {"out.0.weight", "out.2.positional_embedding", "out.2.qkv_proj.weight",
                     "out.2.c_proj.weight"}},
      {"spatial", {"out.0.weight", "out.2.weight"}},
      {"spatial_v2", {"out.0.weight", "out.1.weight", "out.3.weight"}}};
  for (const auto& key : head_keys.at(GetParam())) EXPECT_TRUE(HasKey(**net, key)) << key;
  // Gradients reach the input through every head (guidance needs them).
  const torch::Tensor grad = ClassifierGradient(*net, torch::randn({2, 3, 16, 16}),
                                                torch::tensor({5, 6}), torch::tensor({1, 2}),
                                                torch::tensor(2.0));
  EXPECT_EQ(grad.sizes(), torch::IntArrayRef({2, 3, 16, 16}));
  EXPECT_GT(grad.abs().sum().item<double>(), 0);
}

INSTANTIATE_TEST_SUITE_P(Pools, EncoderPoolTest,
                         ::testing::Values("adaptive", "attention", "spatial", "spatial_v2"));

TEST(Encoder, UnknownPoolIsAnError) {
  UNetConfig c = SmallConfig();
  c.pool = "max";
  auto net = CreateEncoderUNet(c);
  ASSERT_FALSE(net.ok());
  EXPECT_NE(net.status().message().find("\"max\""), std::string::npos);
}

TEST(Guidance, ScalesPerElementAndKeepsNoParameterGradients) {
  UNetConfig c = SmallConfig();
  c.out_channels = 4;
  c.pool = "adaptive";
  auto net = CreateEncoderUNet(c);
  ASSERT_TRUE(net.ok());
  for (auto& p : (*net)->parameters()) p.data().normal_(0, 0.1);
  const torch::Tensor x = torch::randn({2, 3, 16, 16});
  const torch::Tensor t = torch::tensor({3, 3});
  const torch::Tensor y = torch::tensor({1, 2});
  const torch::Tensor g1 = ClassifierGradient(*net, x, t, y, torch::tensor(1.0));
  const torch::Tensor g = ClassifierGradient(*net, x, t, y, torch::tensor({2.0, 0.0}));
  EXPECT_TRUE(torch::allclose(g[0], 2 * g1[0]));
  EXPECT_EQ(g[1].abs().sum().item<double>(), 0.0);
  for (const auto& p : (*net)->parameters()) EXPECT_FALSE(p.grad().defined());
}

}  // namespace
}  // namespace gd
