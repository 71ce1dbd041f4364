// core/diffusion/dpm_solver: the continuous-time schedule against closed forms, the multistep
// orders, order 1 against DDIM, and every golden case of ../shared/fixtures/dpm-64 (written by
// the reference DPM-Solver on the parity-64 checkpoints) through DpmSolverLoop and the engine.
#include <future>

#include <gtest/gtest.h>

#include "core/diffusion/dpm_solver.h"
#include "core/diffusion/schedule.h"
#include "core/engine/engine.h"
#include "core/nn/guidance.h"
#include "tests/testing/testing.h"

namespace gd {
namespace {

std::vector<double> Betas(const std::string& name) {
  auto betas = NamedBetaSchedule(name, 1000);
  EXPECT_TRUE(betas.ok()) << betas.status();
  return *betas;
}

DpmSchedule Schedule(const std::string& name) {
  auto s = DpmSchedule::FromBetas(Betas(name));
  EXPECT_TRUE(s.ok()) << s.status();
  return *s;
}

TEST(DpmScheduleTest, InterpolatesTheDiscreteScheduleAtItsGridPoints) {
  const std::vector<double> betas = Betas("linear");
  const DpmSchedule s = Schedule("linear");
  ASSERT_EQ(s.total_n(), 1000);  // the linear schedule's log-SNR stays above the cut
  double alpha_bar = 1;
  for (int64_t i = 0; i < 1000; ++i) {
    alpha_bar *= 1 - betas[i];
    const double t = static_cast<double>(i + 1) / 1000;
    // Evaluated in float32 as the reference does: lambda's 1 - exp(2 log alpha) loses digits
    // where alpha_bar is near 1 (small t).
    EXPECT_NEAR(s.LogAlpha(t), 0.5 * std::log(alpha_bar), 1e-12) << i;
    EXPECT_NEAR(s.Alpha(t), std::sqrt(alpha_bar), 1e-7) << i;
    EXPECT_NEAR(s.Sigma(t), std::sqrt(1 - alpha_bar), 2e-6) << i;
    EXPECT_NEAR(s.Lambda(t), 0.5 * std::log(alpha_bar / (1 - alpha_bar)), 2e-4) << i;
  }
  // Between grid points log(alpha) is linear in t.
  const double mid = s.LogAlpha(0.5005);
  EXPECT_NEAR(mid, 0.5 * (s.LogAlpha(0.5) + s.LogAlpha(0.501)), 1e-12);
  for (double t : {0.0123, 0.5, 0.77, 1.0}) {
    EXPECT_NEAR(s.InverseLambda(s.Lambda(t)), t, 1e-5) << t;
  }
}

TEST(DpmScheduleTest, TheCosineScheduleIsCutWhereItsLogSnrFallsBelowTheReferenceBound) {
  const DpmSchedule s = Schedule("cosine");
  EXPECT_EQ(s.total_n(), 996);  // its last 4 steps have lambda < -5.1
  EXPECT_NEAR(s.t_end(), 1.0 / 996, 1e-15);
  EXPECT_GE(s.Lambda(1.0), -5.1);
  // The reference's network time: (t - 1/N) * 1000.
  EXPECT_NEAR(s.NetworkTime(1.0, 1000), 1000.0 * 995 / 996, 1e-9);
}

TEST(DpmScheduleTest, EachSkipTypeIsUniformInItsOwnVariable) {
  const DpmSchedule s = Schedule("cosine");
  const int64_t n = 12;
  const std::vector<double> uniform = s.TimeSteps(SkipType::kTimeUniform, n);
  const std::vector<double> quadratic = s.TimeSteps(SkipType::kTimeQuadratic, n);
  const std::vector<double> logsnr = s.TimeSteps(SkipType::kLogSnr, n);
  ASSERT_EQ(uniform.size(), 13u);
  ASSERT_EQ(quadratic.size(), 13u);
  ASSERT_EQ(logsnr.size(), 13u);
  for (const auto* times : {&uniform, &quadratic, &logsnr}) {
    EXPECT_NEAR(times->front(), 1.0, 1e-6);
    // The logSNR grid's ends go through lambda in float32 and back (as the reference's do).
    EXPECT_NEAR(times->back(), s.t_end(), 1e-6);
  }
  const double t0 = s.t_end();
  const double lambda_T = s.Lambda(1.0), lambda_0 = s.Lambda(t0);
  for (int64_t k = 0; k <= n; ++k) {
    const double f = static_cast<double>(k) / n;
    EXPECT_NEAR(uniform[k], 1.0 + f * (t0 - 1.0), 1e-12) << k;
    EXPECT_NEAR(std::sqrt(quadratic[k]), 1.0 + f * (std::sqrt(t0) - 1.0), 1e-12) << k;
    EXPECT_NEAR(s.Lambda(logsnr[k]), lambda_T + f * (lambda_0 - lambda_T), 1e-4) << k;
  }
  EXPECT_FALSE(ParseSkipType("cosine").ok());
  EXPECT_EQ(*ParseSkipType("logSNR"), SkipType::kLogSnr);
  EXPECT_EQ(*ParseSkipType("time_quadratic"), SkipType::kTimeQuadratic);
}

TEST(DpmSolverTest, OrdersWarmUpAndDropAtTheEndOfShortRuns) {
  // Order 3, 6 steps (< 10): 1, 2 while warming up, 3, 3, then lower_order_final: 2, 1.
  std::vector<int64_t> orders;
  for (int64_t step = 1; step <= 6; ++step) orders.push_back(MultistepOrder(3, step, 6));
  EXPECT_EQ(orders, (std::vector<int64_t>{1, 2, 3, 3, 2, 1}));
  // 12 steps keep the order to the end.
  EXPECT_EQ(MultistepOrder(2, 12, 12), 2);
  EXPECT_EQ(MultistepOrder(2, 1, 12), 1);
}

TEST(DpmSolverTest, UpdatesIntegratePolynomialDataPredictionsExactly) {
  // The data-prediction ODE's solution is x_t = (sigma_t / sigma_s) x_s + sigma_t * int e^lambda
  // m(lambda) dlambda. Every order integrates a constant m exactly, and order 3 (phi_2 weight,
  // 3-point derivative) a linear one. Order 2's "dpmsolver" form (weight 1/2 instead of phi_2) is
  // exact for constants only, and so is order 3's second-derivative term: the reference weighs
  // D2 = h^2 m''/2 by phi_3 where the exact integral needs 2 phi_3. We match the reference.
  const DpmSchedule s = Schedule("linear");
  const std::vector<double> times = {0.5, 0.55, 0.6};  // s = 0.5, then older ones
  const double t = 0.42;
  for (int64_t order = 1; order <= 3; ++order) {
    const MultistepCoefficients c = MultistepUpdate(s, order, times, t);
    // m(lambda) = lambda^degree; midpoint quadrature of sigma_t * int_{lambda_s}^{lambda_t} e^l m(l).
    const double degree = order == 3 ? 1 : 0;
    auto m = [&](double l) { return std::pow(l, degree); };
    const double ls = s.Lambda(times[0]), lt = s.Lambda(t);
    double integral = 0;
    const int kSteps = 20000;
    for (int i = 0; i < kSteps; ++i) {
      const double l = ls + (lt - ls) * (i + 0.5) / kSteps;
      integral += std::exp(l) * m(l) * (lt - ls) / kSteps;
    }
    const double exact = s.Sigma(t) * integral;
    double combined = 0;
    for (int64_t j = 0; j < order; ++j) combined += c.c[j] * m(s.Lambda(times[j]));
    EXPECT_NEAR(combined, exact, 1e-6 * std::max(1.0, std::abs(exact))) << "order " << order;
    EXPECT_NEAR(c.a, s.Sigma(t) / s.Sigma(times[0]), 1e-15);
  }
}

TEST(DpmSolverTest, OrderOneIsDdimWithEtaZeroOnTheSameTimes) {
  // The linear schedule is not cut, so grid times k/1000 are the discrete steps k - 1 and the
  // network sees the same integer timesteps in both samplers.
  const DpmSchedule s = Schedule("linear");
  ASSERT_EQ(s.total_n(), 1000);
  auto model = [](const torch::Tensor& x, const torch::Tensor& tau) {
    return torch::tanh(x) * (0.3 + tau.to(torch::kFloat32).view({-1, 1, 1, 1}) / 2000.0);
  };
  const torch::Tensor x_T = torch::randn({2, 1, 4, 4}, torch::Generator(MakeGenerator(5)));
  DpmSolverOptions options;
  options.order = 1;
  options.steps = 9;  // times 1, 0.889, ..., 0.001: steps 999, 888, ..., 0
  options.skip = SkipType::kTimeUniform;
  options.clip_denoised = false;
  const torch::Tensor dpm = DpmSolverLoop(
      s,
      [&](const torch::Tensor& x, double t) {
        return model(x, torch::full({x.size(0)}, s.NetworkTime(t, 1000), torch::kFloat64));
      },
      x_T, options);

  std::vector<int64_t> kept;
  for (int64_t k = 0; k <= 999; k += 111) kept.push_back(k);
  GaussianDiffusion::Types types;
  types.mean_type = ModelMeanType::kEpsilon;
  auto ddim = GaussianDiffusion::FromBetas(Betas("linear"), kept, types);
  ASSERT_TRUE(ddim.ok()) << ddim.status();
  SampleOptions sample_options;
  sample_options.clip_denoised = false;
  GeneratorNoise unused(MakeGenerator(1));
  torch::Tensor after_nine;
  SampleLoop(SamplerKind::kDdim, *ddim, model, x_T.sizes(), x_T, sample_options, unused,
             [&](const StepResult& r) {
               if (r.step == 8) after_nine = r.sample;  // reached step 0 (t = 1/1000)
             });
  ASSERT_TRUE(after_nine.defined());
  EXPECT_TRUE(testing::TensorsClose(dpm, after_nine, 1e-5));
}

TEST(DynamicThresholdTest, MatchesTheQuantileDefinitionRowByRow) {
  torch::Tensor x0 = torch::randn({3, 2, 5, 5}, torch::Generator(MakeGenerator(3))) * 2;
  const torch::Tensor ratio = torch::tensor({0.995f, 0.5f, 0.9f});
  const torch::Tensor out = DynamicThreshold(x0, ratio);
  for (int64_t i = 0; i < 3; ++i) {
    const torch::Tensor flat = x0[i].abs().flatten();
    const double q = torch::quantile(flat, ratio[i].item<double>()).item<double>();
    const double s = std::max(1.0, q);
    EXPECT_TRUE(testing::TensorsClose(out[i], x0[i].clamp(-s, s) / s, 1e-6)) << i;
  }
  // Values already inside [-1, 1] with a quantile below 1 are left as they are.
  const torch::Tensor small = torch::full({1, 1, 2, 2}, 0.25);
  EXPECT_TRUE(torch::equal(DynamicThreshold(small, torch::tensor({0.995f})), small));
}

TEST(X0CorrectionTest, MixedRowsEachGetTheirOwnCorrection) {
  const torch::Tensor x0 = torch::linspace(-3, 3, 4 * 8).view({4, 2, 2, 2});
  using Mode = X0Correction::Mode;
  const X0Correction c = X0Correction::PerRow({Mode::kNone, Mode::kClip, Mode::kDynamic, Mode::kClip},
                                              {0, 0, 0.9f, 0}, torch::kCPU);
  const torch::Tensor out = c.Apply(x0);
  EXPECT_TRUE(torch::equal(out[0], x0[0]));
  EXPECT_TRUE(torch::equal(out[1], x0[1].clamp(-1, 1)));
  EXPECT_TRUE(torch::equal(out[3], x0[3].clamp(-1, 1)));
  EXPECT_TRUE(torch::allclose(out[2], DynamicThreshold(x0.narrow(0, 2, 1), torch::tensor({0.9f}))[0]));
}

// ---- The reference's golden samples -----------------------------------------------------------

struct GoldenCase {
  std::string key;
  int64_t order, steps;
  SkipType skip;
  bool guided, dynamic;
};

const std::vector<GoldenCase>& Cases() {
  static const std::vector<GoldenCase> cases = {
      {"dpmpp_2m_12_logsnr_guided_clip", 2, 12, SkipType::kLogSnr, true, false},
      {"dpmpp_3m_10_time_quadratic_guided_clip", 3, 10, SkipType::kTimeQuadratic, true, false},
      {"dpmpp_2m_8_time_uniform_unguided_clip", 2, 8, SkipType::kTimeUniform, false, false},
      {"dpmpp_1m_6_logsnr_guided_clip", 1, 6, SkipType::kLogSnr, true, false},
      {"dpmpp_2m_12_logsnr_guided_dynthresh", 2, 12, SkipType::kLogSnr, true, true},
  };
  return cases;
}

// The fixture README's tolerance: max abs difference per case.
constexpr double kGoldenTolerance = 1e-3;

double MaxAbs(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

class DpmGoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GD_REQUIRE_DPM_FIXTURES();
    static std::shared_ptr<ModelBundle> loaded = [] {
      auto b = LoadModelBundle(testing::Parity64().Spec(), torch::kCPU, Precision::kFloat32);
      EXPECT_TRUE(b.ok()) << b.status();
      return b.ok() ? *b : nullptr;
    }();
    bundle_ = loaded;
    ASSERT_NE(bundle_, nullptr);
  }
  const torch::Tensor& T(const std::string& key) { return testing::Dpm64().at(key); }
  std::vector<int64_t> Labels() {
    return {T("y")[0].item<int64_t>(), T("y")[1].item<int64_t>()};
  }
  std::shared_ptr<ModelBundle> bundle_;
};

TEST_F(DpmGoldenTest, TimeGridsAreTheReferencesTimes) {
  const DpmSchedule s = Schedule("cosine");
  for (const auto& c : Cases()) {
    const std::vector<double> times = s.TimeSteps(c.skip, c.steps);
    const torch::Tensor expected = T(c.key + "_times");
    ASSERT_EQ(static_cast<int64_t>(times.size()), expected.numel()) << c.key;
    for (size_t k = 0; k < times.size(); ++k) {
      EXPECT_NEAR(times[k], expected[static_cast<int64_t>(k)].item<double>(), 2e-6)
          << c.key << " time " << k;
    }
  }
}

TEST_F(DpmGoldenTest, EveryCaseThroughTheLoop) {
  const DpmSchedule s = Schedule("cosine");
  const torch::Tensor y = T("y");
  const double scale = T("scale").item<double>();
  torch::NoGradGuard no_grad;
  for (const auto& c : Cases()) {
    auto eps = [&](const torch::Tensor& x, double t) {
      const torch::Tensor tau = torch::full({x.size(0)}, s.NetworkTime(t, 1000), torch::kFloat32);
      torch::Tensor e = bundle_->unet->forward(x, tau, y).narrow(1, 0, x.size(1));
      if (c.guided) {
        e = e - s.Sigma(t) * ClassifierGradient(bundle_->classifier, x, tau, y,
                                                torch::full({x.size(0)}, scale));
      }
      return e;
    };
    DpmSolverOptions options;
    options.order = c.order;
    options.steps = c.steps;
    options.skip = c.skip;
    options.dynamic_thresholding_ratio = c.dynamic ? 0.995 : 0;
    const torch::Tensor x = DpmSolverLoop(s, eps, T("x_T"), options);
    EXPECT_LE(MaxAbs(x, T(c.key)), kGoldenTolerance) << c.key;
  }
}

class Waiter : public JobObserver {
 public:
  void OnStep(const StepUpdate& update) override { steps.push_back(update); }
  void OnFinished(absl::StatusOr<JobResult> r) override { done.set_value(std::move(r)); }
  std::vector<StepUpdate> steps;
  std::promise<absl::StatusOr<JobResult>> done;
};

TEST_F(DpmGoldenTest, EveryCaseThroughTheEngineAtOnce) {
  // All five cases in one engine, submitted together: they share every forward.
  EngineOptions engine_options;
  engine_options.max_batch = 10;
  auto engine = Engine::Create(bundle_, engine_options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<std::shared_ptr<Waiter>> waiters;
  for (const auto& c : Cases()) {
    SampleJob job;
    job.labels = Labels();
    job.classifier_scale = c.guided ? T("scale").item<double>() : 0;
    job.sampler = SamplerKind::kDpmSolverPP;
    job.steps = c.steps;
    job.solver_order = c.order;
    job.skip_type = c.skip;
    job.dynamic_thresholding_ratio = c.dynamic ? 0.995 : 0;
    job.noise = T("x_T");
    job.stream_every = 1;
    job.stream_x_t = true;
    waiters.push_back(std::make_shared<Waiter>());
    ASSERT_TRUE((*engine)->Submit(job, waiters.back()).ok()) << c.key;
  }
  const DpmSchedule s = Schedule("cosine");
  for (size_t i = 0; i < Cases().size(); ++i) {
    const GoldenCase& c = Cases()[i];
    auto result = waiters[i]->done.get_future().get();
    ASSERT_TRUE(result.ok()) << c.key << ": " << result.status();
    const auto& steps = waiters[i]->steps;
    ASSERT_EQ(static_cast<int64_t>(steps.size()), c.steps) << c.key;
    // The last step's x is the reference's final sample; the result is that, clamped to
    // [-1, 1] as the service promises.
    EXPECT_LE(MaxAbs(steps.back().x_t, T(c.key)), kGoldenTolerance) << c.key;
    EXPECT_LE(MaxAbs(result->samples, T(c.key).clamp(-1, 1)), kGoldenTolerance) << c.key;
    // Step events carry the networks' continuous timestep on the 0..999 scale.
    const std::vector<double> times = s.TimeSteps(c.skip, c.steps);
    for (int64_t k = 0; k < c.steps; ++k) {
      EXPECT_NEAR(steps[k].timestep, (times[k] - 1.0 / 996) * 1000, 1e-9) << c.key << " " << k;
    }
  }
  EXPECT_GE((*engine)->stats().max_requests_in_batch, 2);
}

}  // namespace
}  // namespace gd
