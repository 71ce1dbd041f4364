// DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
// Probabilistic Models"), multistep, in the data-prediction form, as the reference implementation
// (LuChengTHU/dpm-solver, dpm_solver_pytorch.py) runs it on a discrete-time model:
//   - DpmSchedule: the reference's NoiseScheduleVP('discrete', betas): alpha_t, sigma_t and
//     lambda_t = log(alpha_t / sigma_t) interpolated over continuous times t in [1/N, 1];
//   - the time grids (logSNR-uniform, time-uniform, time-quadratic);
//   - the multistep update of order 1-3 as coefficients of one linear combination
//     x_t = a x_s + c0 m_0 + c1 m_1 + c2 m_2 of x_s and the last data predictions, so that a batch
//     of rows at different times and orders is one fused expression (the engine's batched step);
//   - DpmSolverLoop, the whole sampler over a model callback (tests, tools).
// Pure math over host doubles and tensors: no threads, no networks of its own.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/diffusion/x0_correction.h"

namespace gd {

enum class SkipType { kLogSnr, kTimeUniform, kTimeQuadratic };
const char* ToString(SkipType type);
// "logSNR" (or "logsnr"), "time_uniform", "time_quadratic".
absl::StatusOr<SkipType> ParseSkipType(const std::string& name);

// The VP noise schedule of a discrete-time model, seen in continuous time. log(alpha_t) is
// interpolated linearly between the points (i / N, log sqrt(alphas_cumprod[i - 1])), i = 1..N.
// Like the reference, the last steps of schedules whose log-SNR falls below -5.1 (the cosine
// schedule's last 4 of 1000) are cut off for stability, so N can be below the model's T.
class DpmSchedule {
 public:
  // From the model's base betas (float64, unrespaced).
  static absl::StatusOr<DpmSchedule> FromBetas(const std::vector<double>& betas);

  int64_t total_n() const { return static_cast<int64_t>(log_alphas_.size()); }
  double t_end() const { return 1.0 / static_cast<double>(total_n()); }  // t_0 = 1/N

  double LogAlpha(double t) const;
  double Alpha(double t) const;
  double Sigma(double t) const;
  double Lambda(double t) const;
  double InverseLambda(double lambda) const;
  // The network's input time of continuous t, on a 0..`scale` scale: (t - 1/N) * scale. The
  // reference uses scale 1000 whatever N is.
  double NetworkTime(double t, double scale) const { return (t - t_end()) * scale; }

  // steps + 1 times from t_T = 1 down to t_0 = 1/N (get_time_steps).
  std::vector<double> TimeSteps(SkipType skip, int64_t steps) const;

 private:
  std::vector<double> times_;       // (i + 1) / N
  std::vector<double> log_alphas_;  // 0.5 * log(alphas_cumprod), cut as above
};

// The order used by the update that reaches grid time index `step` (1..steps) of a run of
// `steps` model calls with solver order `order` (lower_order_final=True): warm-up steps use the
// history they have, and runs of fewer than 10 steps finish with lower orders.
int64_t MultistepOrder(int64_t order, int64_t step, int64_t steps);

// x_t = a * x_s + c[0] * m_0 + c[1] * m_1 + c[2] * m_2: the multistep DPM-Solver++ update of
// `order` from s = times[0] to t, with m_j the data prediction at times[j] (times[0] = s is the
// newest). Unused coefficients are 0.
struct MultistepCoefficients {
  double a = 0;
  std::array<double, 3> c{0, 0, 0};
};
MultistepCoefficients MultistepUpdate(const DpmSchedule& schedule, int64_t order,
                                      const std::vector<double>& times, double t);

struct DpmSolverOptions {
  int64_t steps = 20;
  int64_t order = 2;
  SkipType skip = SkipType::kLogSnr;
  // x0 correction of every data prediction: static clipping, or dynamic thresholding when
  // dynamic_thresholding_ratio > 0.
  bool clip_denoised = true;
  double dynamic_thresholding_ratio = 0;
};

// The whole multistep sampler from x_T at t = 1. `eps` predicts the (guided) noise of x at
// continuous time t (the caller maps t to the network's input time). Returns x at t_0 = 1/N, not
// clipped. `on_step` (optional) sees every step's x after the update and its data prediction.
using ContinuousEpsFn = std::function<torch::Tensor(const torch::Tensor& x, double t)>;
torch::Tensor DpmSolverLoop(const DpmSchedule& schedule, const ContinuousEpsFn& eps,
                            const torch::Tensor& x_T, const DpmSolverOptions& options,
                            const std::function<void(int64_t step, const torch::Tensor& x,
                                                     const torch::Tensor& x0)>& on_step = nullptr);

// The data prediction x0 = (x - sigma_t eps) / alpha_t (data_prediction_fn, before correction);
// alpha and sigma broadcast against x ([N x 1 x 1 x 1] per row, or scalars).
torch::Tensor DataPrediction(const torch::Tensor& x, const torch::Tensor& eps,
                             const torch::Tensor& alpha, const torch::Tensor& sigma);

}  // namespace gd
