// The Gaussian diffusion process of Ho et al. 2020 with the improvements of Nichol & Dhariwal
// 2021 (learned variance range, cosine schedule) and the respacing of respace.py, as in
// guided_diffusion/gaussian_diffusion.py.
//
// Every formula is written once, as a free function over StepCoefficients: the per-timestep
// constants gathered for each batch element. GaussianDiffusion owns the float64 schedule tables
// and gathers them; the samplers (sampling.h), the losses (losses.h) and the engine's batched
// step (which concatenates coefficients of slots on different schedules) all call the same
// functions. Pure tensor math: no threads, no I/O, no autograd of its own.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"

namespace gd {

enum class ModelMeanType { kPreviousX, kStartX, kEpsilon };
enum class ModelVarType { kLearned, kFixedSmall, kFixedLarge, kLearnedRange };
enum class LossType { kMse, kRescaledMse, kKl, kRescaledKl };

const char* ToString(ModelMeanType type);
const char* ToString(ModelVarType type);
const char* ToString(LossType type);

// The diffusion half of the reference's flags (script_util.diffusion_defaults), same defaults.
struct DiffusionConfig {
  int64_t diffusion_steps = 1000;
  std::string noise_schedule = "linear";
  bool learn_sigma = false;
  bool sigma_small = false;
  bool use_kl = false;
  bool predict_xstart = false;
  bool rescale_timesteps = false;
  bool rescale_learned_sigmas = false;
  std::string timestep_respacing;  // "" = all steps; "250", "ddim25", "10,20,30"

  ModelMeanType mean_type() const;
  ModelVarType var_type() const;
  LossType loss_type() const;
};

// Model callback: x_t [N x C x H x W] and the model's timesteps [N] (original 0..T-1 scale,
// float and rescaled to 0..1000 when rescale_timesteps) -> output [N x C' x H x W].
using ModelFn = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& model_t)>;
// Guidance callback, same arguments: the scaled gradient of log p(y | x_t) w.r.t. x_t,
// [N x C x H x W] (Dhariwal & Nichol 2021, Algorithms 1 and 2).
using GradFn = ModelFn;
// Applied to the x_0 prediction before clipping (p_mean_variance's denoised_fn).
using DenoisedFn = std::function<torch::Tensor(const torch::Tensor& pred_xstart)>;

// Columns of the per-timestep coefficient table. All derived in float64 from the betas of the
// (respaced) process, stored as float32, as _extract_into_tensor casts them.
enum class Coef : int64_t {
  kBeta,
  kLogBeta,
  kAlphaBar,
  kAlphaBarPrev,
  kAlphaBarNext,
  kSqrtAlphaBar,
  kSqrtOneMinusAlphaBar,
  kOneMinusAlphaBar,
  kLogOneMinusAlphaBar,
  kSqrtRecipAlphaBar,
  kSqrtRecipm1AlphaBar,
  kPosteriorVariance,
  kPosteriorLogVarianceClipped,
  kPosteriorMeanCoef1,
  kPosteriorMeanCoef2,
  kRecipPosteriorMeanCoef1,
  kPosteriorCoef2OverCoef1,
  kFixedLargeVariance,
  kFixedLargeLogVariance,
  kNonzero,  // 1 for t > 0, 0 at the last step (no noise is added there)
  kCount,
};

// Coefficients of a batch, one row per element at its own timestep: [N x Coef::kCount] float32.
// Rows of different processes (respacings) may be concatenated: the formulas never look at t.
struct StepCoefficients {
  torch::Tensor table;

  // Column `c` shaped [N x 1 x ... x 1] to broadcast against a tensor of `like`'s rank.
  torch::Tensor Get(Coef c, const torch::Tensor& like) const;
  int64_t size() const { return table.size(0); }
  static StepCoefficients Cat(const std::vector<StepCoefficients>& parts);
  StepCoefficients Index(const torch::Tensor& rows) const { return {table.index_select(0, rows)}; }
};

// p(x_{t-1} | x_t) and the x_0 prediction, all [N x C x H x W].
struct MeanVar {
  torch::Tensor mean;
  torch::Tensor variance;
  torch::Tensor log_variance;
  torch::Tensor pred_xstart;
};

struct Posterior {
  torch::Tensor mean;
  torch::Tensor variance;
  torch::Tensor log_variance_clipped;
};

// ---- The formulas, over gathered coefficients --------------------------------------------------

// x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps
torch::Tensor PredictXstartFromEps(const StepCoefficients& c, const torch::Tensor& x_t,
                                   const torch::Tensor& eps);
// eps = (sqrt(1/abar) x_t - x_0) / sqrt(1/abar - 1)
torch::Tensor PredictEpsFromXstart(const StepCoefficients& c, const torch::Tensor& x_t,
                                   const torch::Tensor& pred_xstart);
// x_0 = (x_{t-1} - coef2 x_t) / coef1
torch::Tensor PredictXstartFromXprev(const StepCoefficients& c, const torch::Tensor& x_t,
                                     const torch::Tensor& xprev);
// q(x_t | x_0) sample: sqrt(abar) x_0 + sqrt(1 - abar) noise.
torch::Tensor QSample(const StepCoefficients& c, const torch::Tensor& x_start,
                      const torch::Tensor& noise);
// q(x_{t-1} | x_t, x_0), Ho et al. 2020 eq. 6-7.
Posterior QPosteriorMeanVariance(const StepCoefficients& c, const torch::Tensor& x_start,
                                 const torch::Tensor& x_t);

struct MeanVarOptions {
  bool clip_denoised = true;
  DenoisedFn denoised_fn;  // optional
};

// p_mean_variance from a model output already computed for (x, t): splits the learned variance
// channels, derives the x_0 prediction for the mean type and the posterior mean.
MeanVar PMeanVarianceFromOutput(ModelMeanType mean_type, ModelVarType var_type,
                                const StepCoefficients& c, const torch::Tensor& model_output,
                                const torch::Tensor& x, const MeanVarOptions& options);

// Algorithm 1 (Sohl-Dickstein et al. 2015): guided mean = mean + variance * grad, in float32.
torch::Tensor ConditionMean(const MeanVar& p_mean_var, const torch::Tensor& grad);

// Algorithm 2 (Song et al. 2020): eps' = eps - sqrt(1 - abar) grad; x_0 and the mean rederived.
MeanVar ConditionScore(const StepCoefficients& c, const MeanVar& p_mean_var,
                       const torch::Tensor& x, const torch::Tensor& grad);

// DDPM ancestral step: mean + [t > 0] exp(log_variance / 2) noise.
torch::Tensor DdpmStep(const StepCoefficients& c, const torch::Tensor& mean,
                       const torch::Tensor& log_variance, const torch::Tensor& noise);

// DDIM step (Song et al. 2020, eq. 12) from x_t and the x_0 prediction; `eta` is a scalar or a
// per-element tensor broadcastable to [N x 1 x 1 x 1]; `noise` is ignored where sigma is 0.
torch::Tensor DdimStep(const StepCoefficients& c, const torch::Tensor& x,
                       const torch::Tensor& pred_xstart, const torch::Tensor& eta,
                       const torch::Tensor& noise);

// Deterministic DDIM inversion x_t -> x_{t+1} (eq. 12 reversed).
torch::Tensor DdimReverseStep(const StepCoefficients& c, const torch::Tensor& x,
                              const torch::Tensor& pred_xstart);

// ---- The process ---------------------------------------------------------------------------

class GaussianDiffusion {
 public:
  struct Types {
    ModelMeanType mean_type = ModelMeanType::kEpsilon;
    ModelVarType var_type = ModelVarType::kFixedLarge;
    LossType loss_type = LossType::kMse;
    bool rescale_timesteps = false;
  };

  // The process the reference's create_gaussian_diffusion builds from the same flags,
  // respaced by config.timestep_respacing.
  static absl::StatusOr<GaussianDiffusion> Create(const DiffusionConfig& config);
  // The same process with another respacing ("" = all steps).
  static absl::StatusOr<GaussianDiffusion> Create(const DiffusionConfig& config,
                                                  const std::string& timestep_respacing);
  // From explicit base betas (float64, in (0, 1]) keeping `use_timesteps` (sorted, unique).
  static absl::StatusOr<GaussianDiffusion> FromBetas(const std::vector<double>& base_betas,
                                                     const std::vector<int64_t>& use_timesteps,
                                                     const Types& types);

  int64_t num_timesteps() const { return static_cast<int64_t>(betas_.size()); }
  int64_t original_num_steps() const { return original_num_steps_; }
  const Types& types() const { return types_; }
  // betas of the respaced process, float64.
  const std::vector<double>& betas() const { return betas_; }
  const std::vector<double>& alphas_cumprod() const { return alphas_cumprod_; }
  // timestep_map()[i] = original timestep of respaced step i.
  const std::vector<int64_t>& timestep_map() const { return timestep_map_; }
  // The coefficient table [T x Coef::kCount], float32, on the CPU: row i is step i's.
  const torch::Tensor& host_table() const { return table_; }

  // Coefficients at respaced timesteps t [N] (int64), on t's device.
  StepCoefficients Gather(const torch::Tensor& t) const;
  // What the model and classifier see for respaced t [N]: the original timestep, rescaled to
  // 0..1000 as float when rescale_timesteps (respace.py _WrappedModel).
  torch::Tensor ModelTimesteps(const torch::Tensor& t) const;
  // Keeps a copy of the tables on `device` so that gathers there need no transfer.
  void To(const torch::Device& device);

  // Conveniences that call the model and then the formulas above.
  MeanVar PMeanVariance(const ModelFn& model, const torch::Tensor& x, const torch::Tensor& t,
                        const MeanVarOptions& options = {}) const;
  torch::Tensor QSample(const torch::Tensor& x_start, const torch::Tensor& t,
                        const torch::Tensor& noise) const;
  // q(x_t | x_0): mean, variance, log variance.
  Posterior QMeanVariance(const torch::Tensor& x_start, const torch::Tensor& t) const;
  Posterior QPosteriorMeanVariance(const torch::Tensor& x_start, const torch::Tensor& x_t,
                                   const torch::Tensor& t) const;

 private:
  GaussianDiffusion() = default;

  Types types_;
  int64_t original_num_steps_ = 0;
  std::vector<int64_t> timestep_map_;
  std::vector<double> betas_;
  std::vector<double> alphas_cumprod_;
  torch::Tensor table_;          // [T x Coef::kCount] float32, CPU
  torch::Tensor device_table_;   // the same on the device of the last To()
  torch::Tensor timestep_map_tensor_;  // [T] int64, CPU
  torch::Tensor device_timestep_map_;
};

}  // namespace gd
