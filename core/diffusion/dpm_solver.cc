#include "core/diffusion/dpm_solver.h"

#include <algorithm>
#include <cmath>
#include <deque>

#include "absl/strings/str_cat.h"

namespace gd {
namespace {

// The reference cuts the schedule where the half log-SNR falls below this (numerical_clip_alpha).
constexpr double kClippedLambda = -5.1;

// Piecewise-linear y(x) through ascending `xs`, extended linearly beyond both ends (the
// reference's interpolate_fn).
double Interpolate(double x, const std::vector<double>& xs, const std::vector<double>& ys) {
  const size_t n = xs.size();
  size_t hi = static_cast<size_t>(std::upper_bound(xs.begin(), xs.end(), x) - xs.begin());
  hi = std::clamp<size_t>(hi, 1, n - 1);
  const size_t lo = hi - 1;
  return ys[lo] + (x - xs[lo]) * (ys[hi] - ys[lo]) / (xs[hi] - xs[lo]);
}

// torch.linspace's values: the first half counted from `start`, the second from `end`.
std::vector<double> Linspace(double start, double end, int64_t count) {
  std::vector<double> out(static_cast<size_t>(count));
  const double step = count > 1 ? (end - start) / static_cast<double>(count - 1) : 0;
  for (int64_t i = 0; i < count; ++i) {
    out[i] = i < count / 2 ? start + step * static_cast<double>(i)
                           : end - step * static_cast<double>(count - 1 - i);
  }
  return out;
}

}  // namespace

const char* ToString(SkipType type) {
  switch (type) {
    case SkipType::kLogSnr: return "logSNR";
    case SkipType::kTimeUniform: return "time_uniform";
    case SkipType::kTimeQuadratic: return "time_quadratic";
  }
  return "?";
}

absl::StatusOr<SkipType> ParseSkipType(const std::string& name) {
  if (name == "logSNR" || name == "logsnr") return SkipType::kLogSnr;
  if (name == "time_uniform") return SkipType::kTimeUniform;
  if (name == "time_quadratic") return SkipType::kTimeQuadratic;
  return absl::InvalidArgumentError(absl::StrCat(
      "skip_type \"", name.substr(0, 64), "\" is not one of logSNR, time_uniform, time_quadratic"));
}

absl::StatusOr<DpmSchedule> DpmSchedule::FromBetas(const std::vector<double>& betas) {
  if (betas.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("DPM-Solver needs at least 2 diffusion steps, got ", betas.size()));
  }
  DpmSchedule s;
  double log_alpha = 0;
  size_t kept = 0;
  for (double beta : betas) {
    if (!(beta > 0 && beta < 1)) {
      return absl::InvalidArgumentError(absl::StrCat("DPM-Solver: beta = ", beta,
                                                     " is outside (0, 1)"));
    }
    log_alpha += 0.5 * std::log(1.0 - beta);
    s.log_alphas_.push_back(log_alpha);
    const double lambda = log_alpha - 0.5 * std::log(1.0 - std::exp(2.0 * log_alpha));
    if (lambda >= kClippedLambda) kept = s.log_alphas_.size();
  }
  // log-SNR decreases along the schedule: everything after the last step above the cut goes.
  s.log_alphas_.resize(std::max<size_t>(kept, 2));
  const double n = static_cast<double>(s.log_alphas_.size());
  for (size_t i = 0; i < s.log_alphas_.size(); ++i) {
    s.times_.push_back(static_cast<double>(i + 1) / n);
  }
  return s;
}

// alpha, sigma and lambda in float32, as the reference computes them. Near t_0 = 1/N,
// 1 - exp(2 log alpha) cancels: the reference's lambda(1/N) on the cosine schedule is 5.04723
// where float64 gives 5.04749, and its logSNR grid and last step sizes carry that rounding.
// Reproducing it keeps the samples within 1e-4 of the reference's instead of 2.5e-3.
double DpmSchedule::LogAlpha(double t) const { return Interpolate(t, times_, log_alphas_); }

double DpmSchedule::Alpha(double t) const {
  return std::exp(static_cast<float>(LogAlpha(t)));
}

double DpmSchedule::Sigma(double t) const {
  const float log_alpha = static_cast<float>(LogAlpha(t));
  return std::sqrt(1.0f - std::exp(2.0f * log_alpha));
}

double DpmSchedule::Lambda(double t) const {
  const float log_alpha = static_cast<float>(LogAlpha(t));
  return log_alpha - 0.5f * std::log(1.0f - std::exp(2.0f * log_alpha));
}

double DpmSchedule::InverseLambda(double lambda) const {
  // log alpha = -0.5 log(1 + exp(-2 lambda)), then t by interpolation on the reversed table.
  const double log_alpha = -0.5 * (std::max(0.0, -2.0 * lambda) +
                                   std::log1p(std::exp(-std::abs(-2.0 * lambda))));
  const std::vector<double> xs(log_alphas_.rbegin(), log_alphas_.rend());
  const std::vector<double> ys(times_.rbegin(), times_.rend());
  return Interpolate(log_alpha, xs, ys);
}

std::vector<double> DpmSchedule::TimeSteps(SkipType skip, int64_t steps) const {
  const double t_T = 1.0;
  const double t_0 = t_end();
  switch (skip) {
    case SkipType::kLogSnr: {
      std::vector<double> times = Linspace(Lambda(t_T), Lambda(t_0), steps + 1);
      for (double& t : times) t = InverseLambda(t);
      return times;
    }
    case SkipType::kTimeUniform: return Linspace(t_T, t_0, steps + 1);
    case SkipType::kTimeQuadratic: {
      std::vector<double> times = Linspace(std::sqrt(t_T), std::sqrt(t_0), steps + 1);
      for (double& t : times) t = t * t;
      return times;
    }
  }
  return {};
}

int64_t MultistepOrder(int64_t order, int64_t step, int64_t steps) {
  if (step < order) return step;  // warm-up: only `step` data predictions exist yet
  if (steps < 10) return std::min(order, steps + 1 - step);  // lower_order_final
  return order;
}

MultistepCoefficients MultistepUpdate(const DpmSchedule& schedule, int64_t order,
                                      const std::vector<double>& times, double t) {
  const double lambda_t = schedule.Lambda(t);
  const double lambda_s = schedule.Lambda(times[0]);
  const double h = lambda_t - lambda_s;
  const double alpha_t = schedule.Alpha(t);
  const double phi_1 = std::expm1(-h);
  const double A = alpha_t * phi_1;
  MultistepCoefficients k;
  k.a = schedule.Sigma(t) / schedule.Sigma(times[0]);
  if (order == 1) {
    k.c[0] = -A;
    return k;
  }
  const double r0 = (lambda_s - schedule.Lambda(times[1])) / h;
  if (order == 2) {
    // x_t = a x - A m0 - A/2 D1_0, D1_0 = (m0 - m1) / r0.
    k.c[0] = -A - 0.5 * A / r0;
    k.c[1] = 0.5 * A / r0;
    return k;
  }
  // Order 3: D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1), with
  // D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1; x_t = a x - A m0 + B D1 - C D2.
  const double r1 = (schedule.Lambda(times[1]) - schedule.Lambda(times[2])) / h;
  const double phi_2 = phi_1 / h + 1.0;
  const double phi_3 = phi_2 / h - 0.5;
  const double B = alpha_t * phi_2;
  const double C = alpha_t * phi_3;
  const double P = B * (1.0 + r0 / (r0 + r1)) - C / (r0 + r1);  // weight of D1_0
  const double Q = -B * r0 / (r0 + r1) + C / (r0 + r1);         // weight of D1_1
  k.c[0] = -A + P / r0;
  k.c[1] = -P / r0 + Q / r1;
  k.c[2] = -Q / r1;
  return k;
}

torch::Tensor DataPrediction(const torch::Tensor& x, const torch::Tensor& eps,
                             const torch::Tensor& alpha, const torch::Tensor& sigma) {
  return (x - sigma * eps) / alpha;
}

torch::Tensor DpmSolverLoop(const DpmSchedule& schedule, const ContinuousEpsFn& eps,
                            const torch::Tensor& x_T, const DpmSolverOptions& options,
                            const std::function<void(int64_t, const torch::Tensor&,
                                                     const torch::Tensor&)>& on_step) {
  TORCH_CHECK(options.order >= 1 && options.order <= 3, "DPM-Solver++ order must be 1, 2 or 3");
  TORCH_CHECK(options.steps >= options.order, "DPM-Solver++ needs steps >= order");
  const X0Correction correct =
      options.dynamic_thresholding_ratio > 0
          ? X0Correction::Uniform(X0Correction::Mode::kDynamic, options.dynamic_thresholding_ratio)
          : X0Correction::Uniform(options.clip_denoised ? X0Correction::Mode::kClip
                                                        : X0Correction::Mode::kNone);
  const std::vector<double> times = schedule.TimeSteps(options.skip, options.steps);
  std::deque<torch::Tensor> predictions;  // newest first
  std::vector<double> prediction_times;
  torch::Tensor x = x_T;
  for (int64_t k = 0; k < options.steps; ++k) {
    const double s = times[k];
    const auto scalar = [&](double v) { return torch::full({}, v, x.options()); };
    const torch::Tensor x0 = correct.Apply(
        DataPrediction(x, eps(x, s), scalar(schedule.Alpha(s)), scalar(schedule.Sigma(s))));
    predictions.push_front(x0);
    prediction_times.insert(prediction_times.begin(), s);
    if (static_cast<int64_t>(predictions.size()) > options.order) {
      predictions.pop_back();
      prediction_times.pop_back();
    }
    const int64_t order = MultistepOrder(options.order, k + 1, options.steps);
    const MultistepCoefficients c = MultistepUpdate(schedule, order, prediction_times, times[k + 1]);
    torch::Tensor next = x * c.a;
    for (int64_t j = 0; j < order; ++j) next = next + predictions[j] * c.c[j];
    x = next;
    if (on_step) on_step(k, x, x0);
  }
  return x;
}

}  // namespace gd
