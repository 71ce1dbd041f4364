#include "core/diffusion/gaussian_diffusion.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/diffusion/schedule.h"
#include "core/status_macros.h"

namespace gd {

const char* ToString(ModelMeanType type) {
  switch (type) {
    case ModelMeanType::kPreviousX: return "previous_x";
    case ModelMeanType::kStartX: return "start_x";
    case ModelMeanType::kEpsilon: return "epsilon";
  }
  return "?";
}

const char* ToString(ModelVarType type) {
  switch (type) {
    case ModelVarType::kLearned: return "learned";
    case ModelVarType::kFixedSmall: return "fixed_small";
    case ModelVarType::kFixedLarge: return "fixed_large";
    case ModelVarType::kLearnedRange: return "learned_range";
  }
  return "?";
}

const char* ToString(LossType type) {
  switch (type) {
    case LossType::kMse: return "mse";
    case LossType::kRescaledMse: return "rescaled_mse";
    case LossType::kKl: return "kl";
    case LossType::kRescaledKl: return "rescaled_kl";
  }
  return "?";
}

ModelMeanType DiffusionConfig::mean_type() const {
  return predict_xstart ? ModelMeanType::kStartX : ModelMeanType::kEpsilon;
}

ModelVarType DiffusionConfig::var_type() const {
  if (learn_sigma) return ModelVarType::kLearnedRange;
  return sigma_small ? ModelVarType::kFixedSmall : ModelVarType::kFixedLarge;
}

LossType DiffusionConfig::loss_type() const {
  if (use_kl) return LossType::kRescaledKl;
  if (rescale_learned_sigmas) return LossType::kRescaledMse;
  return LossType::kMse;
}

// ---- StepCoefficients --------------------------------------------------------------------------

torch::Tensor StepCoefficients::Get(Coef c, const torch::Tensor& like) const {
  std::vector<int64_t> shape(static_cast<size_t>(like.dim()), 1);
  shape[0] = table.size(0);
  return table.select(1, static_cast<int64_t>(c)).view(shape);
}

StepCoefficients StepCoefficients::Cat(const std::vector<StepCoefficients>& parts) {
  std::vector<torch::Tensor> tables;
  tables.reserve(parts.size());
  for (const auto& p : parts) tables.push_back(p.table);
  return {torch::cat(tables, 0)};
}

// ---- Formulas ----------------------------------------------------------------------------------

torch::Tensor PredictXstartFromEps(const StepCoefficients& c, const torch::Tensor& x_t,
                                   const torch::Tensor& eps) {
  return c.Get(Coef::kSqrtRecipAlphaBar, x_t) * x_t -
         c.Get(Coef::kSqrtRecipm1AlphaBar, x_t) * eps;
}

torch::Tensor PredictEpsFromXstart(const StepCoefficients& c, const torch::Tensor& x_t,
                                   const torch::Tensor& pred_xstart) {
  return (c.Get(Coef::kSqrtRecipAlphaBar, x_t) * x_t - pred_xstart) /
         c.Get(Coef::kSqrtRecipm1AlphaBar, x_t);
}

torch::Tensor PredictXstartFromXprev(const StepCoefficients& c, const torch::Tensor& x_t,
                                     const torch::Tensor& xprev) {
  return c.Get(Coef::kRecipPosteriorMeanCoef1, x_t) * xprev -
         c.Get(Coef::kPosteriorCoef2OverCoef1, x_t) * x_t;
}

torch::Tensor QSample(const StepCoefficients& c, const torch::Tensor& x_start,
                      const torch::Tensor& noise) {
  TORCH_CHECK(noise.sizes() == x_start.sizes(), "q_sample: noise ", noise.sizes(),
              " does not match x_start ", x_start.sizes());
  return c.Get(Coef::kSqrtAlphaBar, x_start) * x_start +
         c.Get(Coef::kSqrtOneMinusAlphaBar, x_start) * noise;
}

Posterior QPosteriorMeanVariance(const StepCoefficients& c, const torch::Tensor& x_start,
                                 const torch::Tensor& x_t) {
  TORCH_CHECK(x_start.sizes() == x_t.sizes(), "q_posterior: x_start ", x_start.sizes(),
              " and x_t ", x_t.sizes(), " differ");
  Posterior out;
  out.mean = c.Get(Coef::kPosteriorMeanCoef1, x_t) * x_start +
             c.Get(Coef::kPosteriorMeanCoef2, x_t) * x_t;
  out.variance = c.Get(Coef::kPosteriorVariance, x_t).expand(x_t.sizes());
  out.log_variance_clipped = c.Get(Coef::kPosteriorLogVarianceClipped, x_t).expand(x_t.sizes());
  return out;
}

MeanVar PMeanVarianceFromOutput(ModelMeanType mean_type, ModelVarType var_type,
                                const StepCoefficients& c, const torch::Tensor& model_output,
                                const torch::Tensor& x, const MeanVarOptions& options) {
  const int64_t channels = x.size(1);
  TORCH_CHECK(c.size() == x.size(0), "p_mean_variance: ", c.size(), " timesteps for a batch of ",
              x.size(0));
  MeanVar out;
  torch::Tensor output = model_output;
  if (var_type == ModelVarType::kLearned || var_type == ModelVarType::kLearnedRange) {
    TORCH_CHECK(model_output.dim() == x.dim() && model_output.size(0) == x.size(0) &&
                    model_output.size(1) == 2 * channels,
                "p_mean_variance: a learned-variance model must output ", 2 * channels,
                " channels for ", channels, "-channel images; got ", model_output.sizes());
    auto parts = torch::split(model_output, channels, /*dim=*/1);
    output = parts[0];
    const torch::Tensor& var_values = parts[1];
    if (var_type == ModelVarType::kLearned) {
      out.log_variance = var_values;
    } else {
      // var_values in [-1, 1] interpolate between the posterior (min) and beta (max) log variance.
      const torch::Tensor min_log = c.Get(Coef::kPosteriorLogVarianceClipped, x);
      const torch::Tensor max_log = c.Get(Coef::kLogBeta, x);
      const torch::Tensor frac = (var_values + 1) / 2;
      out.log_variance = frac * max_log + (1 - frac) * min_log;
    }
    out.variance = torch::exp(out.log_variance);
  } else {
    TORCH_CHECK(model_output.sizes() == x.sizes(), "p_mean_variance: model output ",
                model_output.sizes(), " does not match x ", x.sizes());
    const bool large = var_type == ModelVarType::kFixedLarge;
    out.variance =
        c.Get(large ? Coef::kFixedLargeVariance : Coef::kPosteriorVariance, x).expand(x.sizes());
    out.log_variance =
        c.Get(large ? Coef::kFixedLargeLogVariance : Coef::kPosteriorLogVarianceClipped, x)
            .expand(x.sizes());
  }

  auto process_xstart = [&](torch::Tensor x0) {
    if (options.denoised_fn) x0 = options.denoised_fn(x0);
    return options.clip_denoised ? x0.clamp(-1, 1) : x0;
  };
  switch (mean_type) {
    case ModelMeanType::kPreviousX:
      out.pred_xstart = process_xstart(PredictXstartFromXprev(c, x, output));
      out.mean = output;
      break;
    case ModelMeanType::kStartX:
      out.pred_xstart = process_xstart(output);
      out.mean = QPosteriorMeanVariance(c, out.pred_xstart, x).mean;
      break;
    case ModelMeanType::kEpsilon:
      out.pred_xstart = process_xstart(PredictXstartFromEps(c, x, output));
      out.mean = QPosteriorMeanVariance(c, out.pred_xstart, x).mean;
      break;
  }
  return out;
}

torch::Tensor ConditionMean(const MeanVar& p_mean_var, const torch::Tensor& grad) {
  return p_mean_var.mean.to(torch::kFloat) + p_mean_var.variance * grad.to(torch::kFloat);
}

MeanVar ConditionScore(const StepCoefficients& c, const MeanVar& p_mean_var,
                       const torch::Tensor& x, const torch::Tensor& grad) {
  // sqrt(1 - abar) in float32 from the float32 abar, as the reference computes it.
  const torch::Tensor alpha_bar = c.Get(Coef::kAlphaBar, x);
  torch::Tensor eps = PredictEpsFromXstart(c, x, p_mean_var.pred_xstart);
  eps = eps - (1 - alpha_bar).sqrt() * grad;
  MeanVar out = p_mean_var;
  out.pred_xstart = PredictXstartFromEps(c, x, eps);
  out.mean = QPosteriorMeanVariance(c, out.pred_xstart, x).mean;
  return out;
}

torch::Tensor DdpmStep(const StepCoefficients& c, const torch::Tensor& mean,
                       const torch::Tensor& log_variance, const torch::Tensor& noise) {
  return mean + c.Get(Coef::kNonzero, mean) * torch::exp(0.5 * log_variance) * noise;
}

torch::Tensor DdimStep(const StepCoefficients& c, const torch::Tensor& x,
                       const torch::Tensor& pred_xstart, const torch::Tensor& eta,
                       const torch::Tensor& noise) {
  const torch::Tensor eps = PredictEpsFromXstart(c, x, pred_xstart);
  const torch::Tensor alpha_bar = c.Get(Coef::kAlphaBar, x);
  const torch::Tensor alpha_bar_prev = c.Get(Coef::kAlphaBarPrev, x);
  const torch::Tensor sigma = eta * torch::sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) *
                              torch::sqrt(1 - alpha_bar / alpha_bar_prev);
  const torch::Tensor mean_pred =
      pred_xstart * torch::sqrt(alpha_bar_prev) + torch::sqrt(1 - alpha_bar_prev - sigma * sigma) * eps;
  return mean_pred + c.Get(Coef::kNonzero, x) * sigma * noise;
}

torch::Tensor DdimReverseStep(const StepCoefficients& c, const torch::Tensor& x,
                              const torch::Tensor& pred_xstart) {
  const torch::Tensor eps = PredictEpsFromXstart(c, x, pred_xstart);
  const torch::Tensor alpha_bar_next = c.Get(Coef::kAlphaBarNext, x);
  return pred_xstart * torch::sqrt(alpha_bar_next) + torch::sqrt(1 - alpha_bar_next) * eps;
}

// ---- GaussianDiffusion -------------------------------------------------------------------------

absl::StatusOr<GaussianDiffusion> GaussianDiffusion::Create(const DiffusionConfig& config) {
  return Create(config, config.timestep_respacing);
}

absl::StatusOr<GaussianDiffusion> GaussianDiffusion::Create(const DiffusionConfig& config,
                                                            const std::string& respacing) {
  ASSIGN_OR_RETURN(auto betas, NamedBetaSchedule(config.noise_schedule, config.diffusion_steps));
  ASSIGN_OR_RETURN(auto kept, SpaceTimesteps(config.diffusion_steps, respacing));
  Types types;
  types.mean_type = config.mean_type();
  types.var_type = config.var_type();
  types.loss_type = config.loss_type();
  types.rescale_timesteps = config.rescale_timesteps;
  return FromBetas(betas, kept, types);
}

absl::StatusOr<GaussianDiffusion> GaussianDiffusion::FromBetas(
    const std::vector<double>& base_betas, const std::vector<int64_t>& use_timesteps,
    const Types& types) {
  const int64_t base_steps = static_cast<int64_t>(base_betas.size());
  for (int64_t i = 0; i < base_steps; ++i) {
    if (!(base_betas[i] > 0 && base_betas[i] <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("betas[", i, "] = ", base_betas[i], " is outside (0, 1]"));
    }
  }
  GaussianDiffusion d;
  d.types_ = types;
  d.original_num_steps_ = base_steps;
  // Respacing (respace.py): keep the cumulative alphas of the kept steps and derive new betas.
  double last_alpha_cumprod = 1.0;
  double alpha_cumprod = 1.0;
  size_t next_kept = 0;
  for (int64_t i = 0; i < base_steps && next_kept < use_timesteps.size(); ++i) {
    alpha_cumprod *= 1.0 - base_betas[i];
    if (use_timesteps[next_kept] == i) {
      d.betas_.push_back(1 - alpha_cumprod / last_alpha_cumprod);
      last_alpha_cumprod = alpha_cumprod;
      d.timestep_map_.push_back(i);
      ++next_kept;
    }
  }
  if (next_kept != use_timesteps.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kept timestep ", use_timesteps[next_kept], " is not a sorted step of a ", base_steps,
        "-step process"));
  }
  const int64_t steps = d.num_timesteps();
  if (steps < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a diffusion process needs at least 2 steps (the posterior variance at t = 0 is "
        "taken from t = 1); this one has ",
        steps));
  }

  // All derived arrays in float64, as the reference keeps them.
  const auto& betas = d.betas_;
  std::vector<double> alphas_cumprod(steps), alphas_cumprod_prev(steps), alphas_cumprod_next(steps);
  double running = 1.0;
  for (int64_t i = 0; i < steps; ++i) {
    running *= 1.0 - betas[i];
    alphas_cumprod[i] = running;
  }
  for (int64_t i = 0; i < steps; ++i) {
    alphas_cumprod_prev[i] = i == 0 ? 1.0 : alphas_cumprod[i - 1];
    alphas_cumprod_next[i] = i + 1 < steps ? alphas_cumprod[i + 1] : 0.0;
  }
  std::vector<double> posterior_variance(steps);
  for (int64_t i = 0; i < steps; ++i) {
    posterior_variance[i] = betas[i] * (1.0 - alphas_cumprod_prev[i]) / (1.0 - alphas_cumprod[i]);
  }
  const int64_t columns = static_cast<int64_t>(Coef::kCount);
  std::vector<double> table(static_cast<size_t>(steps * columns));
  for (int64_t i = 0; i < steps; ++i) {
    double* row = &table[static_cast<size_t>(i * columns)];
    auto set = [row](Coef c, double v) { row[static_cast<int64_t>(c)] = v; };
    const double abar = alphas_cumprod[i];
    const double abar_prev = alphas_cumprod_prev[i];
    const double coef1 = betas[i] * std::sqrt(abar_prev) / (1.0 - abar);
    const double coef2 = (1.0 - abar_prev) * std::sqrt(1.0 - betas[i]) / (1.0 - abar);
    // At t = 0 the posterior variance is 0: its log is clipped to the value at t = 1.
    const double log_var_clipped = std::log(i == 0 ? posterior_variance[1] : posterior_variance[i]);
    const double fixed_large = i == 0 ? posterior_variance[1] : betas[i];
    set(Coef::kBeta, betas[i]);
    set(Coef::kLogBeta, std::log(betas[i]));
    set(Coef::kAlphaBar, abar);
    set(Coef::kAlphaBarPrev, abar_prev);
    set(Coef::kAlphaBarNext, alphas_cumprod_next[i]);
    set(Coef::kSqrtAlphaBar, std::sqrt(abar));
    set(Coef::kSqrtOneMinusAlphaBar, std::sqrt(1.0 - abar));
    set(Coef::kOneMinusAlphaBar, 1.0 - abar);
    set(Coef::kLogOneMinusAlphaBar, std::log(1.0 - abar));
    set(Coef::kSqrtRecipAlphaBar, std::sqrt(1.0 / abar));
    set(Coef::kSqrtRecipm1AlphaBar, std::sqrt(1.0 / abar - 1));
    set(Coef::kPosteriorVariance, posterior_variance[i]);
    set(Coef::kPosteriorLogVarianceClipped, log_var_clipped);
    set(Coef::kPosteriorMeanCoef1, coef1);
    set(Coef::kPosteriorMeanCoef2, coef2);
    set(Coef::kRecipPosteriorMeanCoef1, 1.0 / coef1);
    set(Coef::kPosteriorCoef2OverCoef1, coef2 / coef1);
    set(Coef::kFixedLargeVariance, fixed_large);
    set(Coef::kFixedLargeLogVariance, std::log(fixed_large));
    set(Coef::kNonzero, i == 0 ? 0.0 : 1.0);
  }
  d.alphas_cumprod_ = std::move(alphas_cumprod);
  d.table_ = torch::from_blob(table.data(), {steps, columns}, torch::kFloat64)
                 .to(torch::kFloat32)
                 .contiguous();
  d.device_table_ = d.table_;
  d.timestep_map_tensor_ =
      torch::from_blob(d.timestep_map_.data(), {steps}, torch::kInt64).clone();
  d.device_timestep_map_ = d.timestep_map_tensor_;
  return d;
}

void GaussianDiffusion::To(const torch::Device& device) {
  device_table_ = table_.to(device);
  device_timestep_map_ = timestep_map_tensor_.to(device);
}

StepCoefficients GaussianDiffusion::Gather(const torch::Tensor& t) const {
  const torch::Tensor& table = t.device() == device_table_.device() ? device_table_ : table_;
  return {table.to(t.device()).index_select(0, t.to(torch::kInt64))};
}

torch::Tensor GaussianDiffusion::ModelTimesteps(const torch::Tensor& t) const {
  const torch::Tensor& map =
      t.device() == device_timestep_map_.device() ? device_timestep_map_ : timestep_map_tensor_;
  torch::Tensor mapped = map.to(t.device()).index_select(0, t.to(torch::kInt64));
  if (types_.rescale_timesteps) {
    return mapped.to(torch::kFloat) * (1000.0 / static_cast<double>(original_num_steps_));
  }
  return mapped;
}

MeanVar GaussianDiffusion::PMeanVariance(const ModelFn& model, const torch::Tensor& x,
                                         const torch::Tensor& t,
                                         const MeanVarOptions& options) const {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(0), "p_mean_variance: t ", t.sizes(),
              " for a batch of ", x.size(0));
  const torch::Tensor output = model(x, ModelTimesteps(t));
  return PMeanVarianceFromOutput(types_.mean_type, types_.var_type, Gather(t), output, x,
                                 options);
}

torch::Tensor GaussianDiffusion::QSample(const torch::Tensor& x_start, const torch::Tensor& t,
                                         const torch::Tensor& noise) const {
  return gd::QSample(Gather(t), x_start, noise);
}

Posterior GaussianDiffusion::QMeanVariance(const torch::Tensor& x_start,
                                           const torch::Tensor& t) const {
  const StepCoefficients c = Gather(t);
  Posterior out;
  out.mean = c.Get(Coef::kSqrtAlphaBar, x_start) * x_start;
  out.variance = c.Get(Coef::kOneMinusAlphaBar, x_start).expand(x_start.sizes());
  out.log_variance_clipped = c.Get(Coef::kLogOneMinusAlphaBar, x_start).expand(x_start.sizes());
  return out;
}

Posterior GaussianDiffusion::QPosteriorMeanVariance(const torch::Tensor& x_start,
                                                    const torch::Tensor& x_t,
                                                    const torch::Tensor& t) const {
  return gd::QPosteriorMeanVariance(Gather(t), x_start, x_t);
}

}  // namespace gd
