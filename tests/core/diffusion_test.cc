// core/diffusion beyond the parity fixture: every mean and variance type, rescaled timesteps, the
// four loss types, calc_bpd_loop and DDIM inversion against goldens the reference computed
// (scripts/make_diffusion_goldens.py), plus properties and errors of schedules, respacing and
// the schedule samplers.
#include <cmath>
#include <fstream>

#include <gtest/gtest.h>

#include "core/diffusion/gaussian_diffusion.h"
#include "core/diffusion/losses.h"
#include "core/diffusion/sampling.h"
#include "core/diffusion/schedule.h"
#include "core/diffusion/schedule_sampler.h"
#include "tests/testing/testing.h"

namespace gd {
namespace {

constexpr double kTol = 1e-5;

const c10::Dict<c10::IValue, c10::IValue>& Goldens() {
  static const auto* dict = [] {
    std::ifstream in(testing::SourceDir() + "/tests/data/reference/diffusion_goldens.pt",
                     std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return new c10::Dict<c10::IValue, c10::IValue>(torch::pickle_load(bytes).toGenericDict());
  }();
  return *dict;
}

torch::Tensor G(const std::string& key) { return Goldens().at(c10::IValue(key)).toTensor(); }

// The goldens' stand-in for a network: a fixed smooth function of (x, t).
ModelFn FakeModel(bool learned_variance) {
  return [learned_variance](const torch::Tensor& x, const torch::Tensor& t) {
    const torch::Tensor tt = t.to(torch::kFloat32).view({-1, 1, 1, 1}) * 0.001;
    const torch::Tensor a = torch::sin(x * 1.3 + tt);
    return learned_variance ? torch::cat({a, torch::tanh(x * 0.7 - tt)}, 1) : a;
  };
}

GaussianDiffusion Make(const std::string& schedule, int64_t steps, const std::string& respacing,
                       ModelMeanType mean, ModelVarType var, LossType loss, bool rescale) {
  auto betas = NamedBetaSchedule(schedule, steps);
  EXPECT_TRUE(betas.ok());
  auto kept = SpaceTimesteps(steps, respacing);
  EXPECT_TRUE(kept.ok());
  GaussianDiffusion::Types types{mean, var, loss, rescale};
  auto d = GaussianDiffusion::FromBetas(*betas, *kept, types);
  EXPECT_TRUE(d.ok()) << d.status();
  return *d;
}

const std::vector<std::pair<std::string, ModelMeanType>> kMeanTypes = {
    {"epsilon", ModelMeanType::kEpsilon},
    {"start_x", ModelMeanType::kStartX},
    {"previous_x", ModelMeanType::kPreviousX}};
const std::vector<std::pair<std::string, ModelVarType>> kVarTypes = {
    {"fixed_small", ModelVarType::kFixedSmall},
    {"fixed_large", ModelVarType::kFixedLarge},
    {"learned", ModelVarType::kLearned},
    {"learned_range", ModelVarType::kLearnedRange}};

TEST(DiffusionGoldens, BetaSchedulesAtOtherLengths) {
  for (auto [name, steps] : std::vector<std::pair<std::string, int64_t>>{{"linear", 50},
                                                                         {"cosine", 40}}) {
    auto betas = NamedBetaSchedule(name, steps);
    ASSERT_TRUE(betas.ok());
    const torch::Tensor expected = G("betas_" + name + "_" + std::to_string(steps));
    EXPECT_LE((torch::tensor(*betas, torch::kFloat64) - expected).abs().max().item<double>(),
              1e-15);
  }
}

TEST(DiffusionGoldens, PMeanVarianceEveryMeanAndVarianceType) {
  torch::NoGradGuard no_grad;
  const torch::Tensor x = G("x");
  const torch::Tensor t = torch::tensor({0, 7}, torch::kInt64);
  for (const auto& [mname, mean] : kMeanTypes) {
    for (const auto& [vname, var] : kVarTypes) {
      for (bool rescale : {false, true}) {
        const GaussianDiffusion d = Make("linear", 100, "10", mean, var, LossType::kMse, rescale);
        const bool learned = var == ModelVarType::kLearned || var == ModelVarType::kLearnedRange;
        for (bool clip : {true, false}) {
          const std::string key = "pmv_" + mname + "_" + vname + "_" +
                                  std::to_string(int(rescale)) + "_" + std::to_string(int(clip));
          const MeanVar out = d.PMeanVariance(FakeModel(learned), x, t, {clip, nullptr});
          SCOPED_TRACE(key);
          EXPECT_TRUE(testing::TensorsClose(out.mean, G(key + "_mean"), kTol));
          EXPECT_TRUE(testing::TensorsClose(out.variance, G(key + "_variance"), kTol));
          EXPECT_TRUE(testing::TensorsClose(out.log_variance, G(key + "_log_variance"), kTol));
          EXPECT_TRUE(testing::TensorsClose(out.pred_xstart, G(key + "_pred_xstart"), kTol));
        }
      }
    }
  }
}

TEST(DiffusionGoldens, TrainingLossesEveryLossType) {
  const std::vector<std::pair<std::string, LossType>> losses = {
      {"mse", LossType::kMse},
      {"rescaled_mse", LossType::kRescaledMse},
      {"kl", LossType::kKl},
      {"rescaled_kl", LossType::kRescaledKl}};
  for (const auto& [lname, loss] : losses) {
    for (const auto& [vname, var] : {kVarTypes[1], kVarTypes[3]}) {
      for (const auto& [mname, mean] : {kMeanTypes[0], kMeanTypes[1]}) {
        const std::string key = "loss_" + lname + "_" + vname + "_" + mname;
        SCOPED_TRACE(key);
        const GaussianDiffusion d = Make("cosine", 100, "", mean, var, loss, false);
        const LossTerms terms =
            TrainingLosses(d, FakeModel(var == ModelVarType::kLearnedRange), G("x_start"),
                           G("train_t"), G("train_noise"));
        EXPECT_TRUE(testing::TensorsClose(terms.loss, G(key + "_loss"), kTol));
        if (Goldens().contains(c10::IValue(key + "_mse"))) {
          ASSERT_TRUE(terms.mse.defined());
          EXPECT_TRUE(testing::TensorsClose(terms.mse, G(key + "_mse"), kTol));
        } else {
          EXPECT_FALSE(terms.mse.defined());
        }
        if (Goldens().contains(c10::IValue(key + "_vb"))) {
          ASSERT_TRUE(terms.vb.defined());
          EXPECT_TRUE(testing::TensorsClose(terms.vb, G(key + "_vb"), kTol));
        }
      }
    }
  }
}

TEST(DiffusionGoldens, CalcBpdLoop) {
  const GaussianDiffusion d = Make("linear", 100, "", ModelMeanType::kEpsilon,
                                   ModelVarType::kLearnedRange, LossType::kMse, false);
  ReplayNoise noise(G("bpd_noise"));
  const BpdResult bpd = CalcBpdLoop(d, FakeModel(true), G("x_start"), true, noise);
  EXPECT_EQ(noise.used(), 100);
  EXPECT_TRUE(testing::TensorsClose(bpd.total_bpd, G("bpd_total_bpd"), kTol));
  EXPECT_TRUE(testing::TensorsClose(bpd.prior_bpd, G("bpd_prior_bpd"), kTol));
  EXPECT_TRUE(testing::TensorsClose(bpd.vb, G("bpd_vb"), kTol));
  EXPECT_TRUE(testing::TensorsClose(bpd.xstart_mse, G("bpd_xstart_mse"), kTol));
  EXPECT_TRUE(testing::TensorsClose(bpd.mse, G("bpd_mse"), kTol));
}

TEST(DiffusionGoldens, DdimReverseAndQMeanVariance) {
  const GaussianDiffusion d = Make("cosine", 100, "ddim10", ModelMeanType::kEpsilon,
                                   ModelVarType::kFixedLarge, LossType::kMse, false);
  SampleOptions options;
  options.clip_denoised = false;
  const StepResult rev = DdimReverseSample(d, FakeModel(false), G("x"),
                                           torch::tensor({2, 5}, torch::kInt64), options);
  EXPECT_TRUE(testing::TensorsClose(rev.sample, G("ddim_reverse_sample"), kTol));
  EXPECT_TRUE(testing::TensorsClose(rev.pred_xstart, G("ddim_reverse_pred_xstart"), kTol));
  const Posterior q = d.QMeanVariance(G("x_start"), torch::tensor({1, 9}, torch::kInt64));
  EXPECT_TRUE(testing::TensorsClose(q.mean, G("q_mean"), kTol));
  EXPECT_TRUE(testing::TensorsClose(q.variance, G("q_variance"), kTol));
  EXPECT_TRUE(testing::TensorsClose(q.log_variance_clipped, G("q_log_variance"), kTol));
  options.eta = 0.5;
  EXPECT_THROW(DdimReverseSample(d, FakeModel(false), G("x"), torch::tensor({2, 5}), options),
               c10::Error);
}

TEST(Schedules, LinearEndpointsScaleWithLength) {
  auto betas = NamedBetaSchedule("linear", 4000);
  ASSERT_TRUE(betas.ok());
  EXPECT_DOUBLE_EQ(betas->front(), 0.0001 / 4);
  EXPECT_DOUBLE_EQ(betas->back(), 0.02 / 4);
}

TEST(Schedules, CosineFollowsAlphaBarAndClips) {
  auto betas = NamedBetaSchedule("cosine", 1000);
  ASSERT_TRUE(betas.ok());
  double alpha_bar = 1;
  for (int i = 0; i < 500; ++i) alpha_bar *= 1 - (*betas)[i];
  const double f0 = std::pow(std::cos(0.008 / 1.008 * M_PI / 2), 2);
  const double f = std::pow(std::cos((0.5 + 0.008) / 1.008 * M_PI / 2), 2);
  EXPECT_NEAR(alpha_bar, f / f0, 1e-12);
  EXPECT_DOUBLE_EQ(betas->back(), 0.999);
}

TEST(Schedules, ErrorsNameTheProblem) {
  auto unknown = NamedBetaSchedule("quadratic", 1000);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("quadratic"), std::string::npos);
  EXPECT_FALSE(NamedBetaSchedule("linear", 0).ok());
}

TEST(Respacing, StringsMeanWhatTheReferenceSays) {
  EXPECT_EQ(SpaceTimesteps(10, "").value().size(), 10u);
  EXPECT_EQ(SpaceTimesteps(1000, "250").value().size(), 250u);
  EXPECT_EQ(SpaceTimesteps(100, "ddim25").value(),
            (std::vector<int64_t>{0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48,
                                  52, 56, 60, 64, 68, 72, 76, 80, 84, 88, 92, 96}));
  // Python rounds half to even: the third section strides 4.5 and keeps 20, 24 (not 25), 29.
  EXPECT_EQ(SpaceTimesteps(30, "2,1,3").value(), (std::vector<int64_t>{0, 9, 10, 20, 24, 29}));
}

TEST(Respacing, ErrorsNameTheSpec) {
  for (const std::string bad : {"ddim7x", "abc", "10,,3", "2000", "-5"}) {
    auto r = SpaceTimesteps(1000, bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find(bad), std::string::npos) << r.status();
  }
  auto no_stride = SpaceTimesteps(1000, "ddim3000");
  ASSERT_FALSE(no_stride.ok());
  EXPECT_NE(no_stride.status().message().find("integer stride"), std::string::npos);
}

TEST(Respacing, KeepsCumulativeAlphasAndMapsTimesteps) {
  DiffusionConfig config;
  config.noise_schedule = "cosine";
  auto full = GaussianDiffusion::Create(config, "");
  auto spaced = GaussianDiffusion::Create(config, "ddim50");
  ASSERT_TRUE(full.ok() && spaced.ok());
  ASSERT_EQ(spaced->num_timesteps(), 50);
  for (int64_t i = 0; i < 50; ++i) {
    const int64_t original = spaced->timestep_map()[i];
    EXPECT_EQ(original, i * 20);
    EXPECT_NEAR(spaced->alphas_cumprod()[i], full->alphas_cumprod()[original], 1e-14);
  }
  const torch::Tensor model_t = spaced->ModelTimesteps(torch::tensor({0, 49}, torch::kInt64));
  EXPECT_EQ(model_t[1].item<int64_t>(), 980);
  config.rescale_timesteps = true;
  config.diffusion_steps = 500;
  auto rescaled = GaussianDiffusion::Create(config, "10");
  ASSERT_TRUE(rescaled.ok());
  const torch::Tensor scaled = rescaled->ModelTimesteps(torch::tensor({9}, torch::kInt64));
  EXPECT_EQ(scaled.scalar_type(), torch::kFloat32);
  EXPECT_FLOAT_EQ(scaled[0].item<float>(), 499 * 2.0f);
}

TEST(Respacing, ASingleStepIsRefused) {
  DiffusionConfig config;
  auto d = GaussianDiffusion::Create(config, "1");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("at least 2 steps"), std::string::npos);
}

TEST(Formulas, CoefficientsOfDifferentProcessesConcatenate) {
  // The engine's batched step gathers rows from processes with different respacings: the
  // formulas must give the same answer row by row as each process alone.
  DiffusionConfig config;
  auto a = GaussianDiffusion::Create(config, "10");
  auto b = GaussianDiffusion::Create(config, "ddim25");
  ASSERT_TRUE(a.ok() && b.ok());
  const torch::Tensor x = torch::randn({2, 3, 4, 4}, MakeGenerator(1));
  const torch::Tensor x0 = torch::randn({2, 3, 4, 4}, MakeGenerator(2)).clamp(-1, 1);
  const StepCoefficients ca = a->Gather(torch::tensor({7}, torch::kInt64));
  const StepCoefficients cb = b->Gather(torch::tensor({3}, torch::kInt64));
  const StepCoefficients both = StepCoefficients::Cat({ca, cb});
  const torch::Tensor eta = torch::tensor({0.0f, 1.0f}).view({2, 1, 1, 1});
  const torch::Tensor noise = torch::randn({2, 3, 4, 4}, MakeGenerator(3));
  const torch::Tensor joint = DdimStep(both, x, x0, eta, noise);
  const torch::Tensor first = DdimStep(ca, x.narrow(0, 0, 1), x0.narrow(0, 0, 1),
                                       torch::tensor(0.0f), noise.narrow(0, 0, 1));
  const torch::Tensor second = DdimStep(cb, x.narrow(0, 1, 1), x0.narrow(0, 1, 1),
                                        torch::tensor(1.0f), noise.narrow(0, 1, 1));
  EXPECT_TRUE(torch::allclose(joint, torch::cat({first, second}), 0, 0));
}

TEST(Formulas, EpsAndXstartPredictionsInvert) {
  DiffusionConfig config;
  auto d = GaussianDiffusion::Create(config, "");
  ASSERT_TRUE(d.ok());
  const StepCoefficients c = d->Gather(torch::tensor({10, 500}, torch::kInt64));
  const torch::Tensor x = torch::randn({2, 1, 3, 3}, MakeGenerator(4));
  const torch::Tensor eps = torch::randn({2, 1, 3, 3}, MakeGenerator(5));
  const torch::Tensor x0 = PredictXstartFromEps(c, x, eps);
  EXPECT_TRUE(torch::allclose(PredictEpsFromXstart(c, x, x0), eps, 1e-4, 1e-4));
}

TEST(ScheduleSamplers, UniformIsUnweighted) {
  auto sampler = CreateScheduleSampler("uniform", 100);
  ASSERT_TRUE(sampler.ok());
  torch::Generator gen = MakeGenerator(7);
  const TimestepDraw draw = (*sampler)->Sample(1000, gen);
  EXPECT_EQ(draw.timesteps.size(0), 1000);
  EXPECT_GE(draw.timesteps.min().item<int64_t>(), 0);
  EXPECT_LT(draw.timesteps.max().item<int64_t>(), 100);
  EXPECT_TRUE(torch::allclose(draw.weights, torch::ones({1000})));
  EXPECT_FALSE(CreateScheduleSampler("importance", 100).ok());
}

TEST(ScheduleSamplers, LossSecondMomentWeightsByRmsAfterWarmUp) {
  LossSecondMomentResampler sampler(4, /*history_per_term=*/2, /*uniform_prob=*/0.0);
  EXPECT_EQ(sampler.Weights(), std::vector<double>(4, 1.0));
  sampler.Update({0, 1, 2, 3, 0, 1, 2}, {1, 2, 2, 4, 1, 2, 2});
  EXPECT_FALSE(sampler.WarmedUp());
  sampler.Update({3}, {4});
  ASSERT_TRUE(sampler.WarmedUp());
  const std::vector<double> w = sampler.Weights();
  EXPECT_NEAR(w[0], 1.0 / 9, 1e-12);
  EXPECT_NEAR(w[3], 4.0 / 9, 1e-12);
  // A third loss shifts out the oldest.
  sampler.Update({0}, {7});
  EXPECT_NEAR(sampler.history()[0][0].item<double>(), 1.0, 0);
  EXPECT_NEAR(sampler.history()[0][1].item<double>(), 7.0, 0);
  // Importance weights keep the objective unbiased: w_i = 1 / (T p_i).
  torch::Generator gen = MakeGenerator(8);
  const TimestepDraw draw = sampler.Sample(64, gen);
  const std::vector<double> weights = sampler.Weights();
  double total = 0;
  for (double v : weights) total += v;
  for (int64_t i = 0; i < 64; ++i) {
    const int64_t t = draw.timesteps[i].item<int64_t>();
    EXPECT_NEAR(draw.weights[i].item<float>(), 1.0 / (4 * weights[t] / total), 1e-5);
  }
  LossSecondMomentResampler restored(4, 2, 0.0);
  restored.Restore(sampler.history(), sampler.counts());
  EXPECT_EQ(restored.Weights(), sampler.Weights());
}

TEST(Noise, ReplayFailsWhenExhaustedOrMisshapen) {
  ReplayNoise noise(torch::zeros({1, 2, 3}));
  EXPECT_THROW(noise.Next({3, 2}, torch::kFloat), c10::Error);
  ReplayNoise one(torch::zeros({1, 2, 3}));
  EXPECT_NO_THROW(one.Next({2, 3}, torch::kFloat));
  EXPECT_THROW(one.Next({2, 3}, torch::kFloat), c10::Error);
}

TEST(Noise, GeneratorsAreIndependentOfTheGlobalOne) {
  torch::manual_seed(1);
  GeneratorNoise a(MakeGenerator(42));
  const torch::Tensor first = a.Next({4}, torch::kFloat);
  torch::manual_seed(2);
  torch::randn({100});
  GeneratorNoise b(MakeGenerator(42));
  EXPECT_TRUE(torch::equal(first, b.Next({4}, torch::kFloat)));
}

}  // namespace
}  // namespace gd
