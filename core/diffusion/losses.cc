#include "core/diffusion/losses.h"

#include <cmath>

namespace gd {

torch::Tensor NormalKl(const torch::Tensor& mean1, const torch::Tensor& logvar1,
                       const torch::Tensor& mean2, const torch::Tensor& logvar2) {
  return 0.5 * (-1.0 + logvar2 - logvar1 + torch::exp(logvar1 - logvar2) +
                (mean1 - mean2).pow(2) * torch::exp(-logvar2));
}

torch::Tensor ApproxStandardNormalCdf(const torch::Tensor& x) {
  return 0.5 * (1.0 + torch::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * torch::pow(x, 3))));
}

torch::Tensor DiscretizedGaussianLogLikelihood(const torch::Tensor& x, const torch::Tensor& means,
                                               const torch::Tensor& log_scales) {
  TORCH_CHECK(x.sizes() == means.sizes() && x.sizes() == log_scales.sizes(),
              "discretized_gaussian_log_likelihood: shapes ", x.sizes(), ", ", means.sizes(), ", ",
              log_scales.sizes(), " differ");
  const torch::Tensor centered_x = x - means;
  const torch::Tensor inv_stdv = torch::exp(-log_scales);
  const torch::Tensor cdf_plus = ApproxStandardNormalCdf(inv_stdv * (centered_x + 1.0 / 255.0));
  const torch::Tensor cdf_min = ApproxStandardNormalCdf(inv_stdv * (centered_x - 1.0 / 255.0));
  const torch::Tensor log_cdf_plus = torch::log(cdf_plus.clamp_min(1e-12));
  const torch::Tensor log_one_minus_cdf_min = torch::log((1.0 - cdf_min).clamp_min(1e-12));
  const torch::Tensor cdf_delta = cdf_plus - cdf_min;
  // The edge bins extend to -inf and +inf.
  return torch::where(x < -0.999, log_cdf_plus,
                      torch::where(x > 0.999, log_one_minus_cdf_min,
                                   torch::log(cdf_delta.clamp_min(1e-12))));
}

torch::Tensor MeanFlat(const torch::Tensor& x) {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < x.dim(); ++d) dims.push_back(d);
  return x.mean(dims);
}

VbTerms VbTermsBpd(const GaussianDiffusion& diffusion, const torch::Tensor& model_output,
                   const torch::Tensor& x_start, const torch::Tensor& x_t, const torch::Tensor& t,
                   bool clip_denoised) {
  const StepCoefficients c = diffusion.Gather(t);
  const Posterior truth = QPosteriorMeanVariance(c, x_start, x_t);
  const MeanVar out = PMeanVarianceFromOutput(diffusion.types().mean_type,
                                              diffusion.types().var_type, c, model_output, x_t,
                                              {clip_denoised, nullptr});
  const double log2 = std::log(2.0);
  const torch::Tensor kl =
      MeanFlat(NormalKl(truth.mean, truth.log_variance_clipped, out.mean, out.log_variance)) /
      log2;
  const torch::Tensor decoder_nll =
      MeanFlat(-DiscretizedGaussianLogLikelihood(x_start, out.mean, 0.5 * out.log_variance)) /
      log2;
  return {torch::where(t == 0, decoder_nll, kl), out.pred_xstart};
}

LossTerms TrainingLosses(const GaussianDiffusion& diffusion, const ModelFn& model,
                         const torch::Tensor& x_start, const torch::Tensor& t,
                         const torch::Tensor& noise) {
  const auto& types = diffusion.types();
  const torch::Tensor x_t = diffusion.QSample(x_start, t, noise);
  const torch::Tensor model_output = model(x_t, diffusion.ModelTimesteps(t));
  LossTerms terms;
  if (types.loss_type == LossType::kKl || types.loss_type == LossType::kRescaledKl) {
    terms.vb = VbTermsBpd(diffusion, model_output, x_start, x_t, t, /*clip_denoised=*/false).output;
    if (types.loss_type == LossType::kRescaledKl) {
      terms.vb = terms.vb * static_cast<double>(diffusion.num_timesteps());
    }
    terms.loss = terms.vb;
    return terms;
  }
  torch::Tensor mean_output = model_output;
  const int64_t channels = x_t.size(1);
  if (types.var_type == ModelVarType::kLearned || types.var_type == ModelVarType::kLearnedRange) {
    TORCH_CHECK(model_output.size(1) == 2 * channels, "a learned-variance model must output ",
                2 * channels, " channels; got ", model_output.sizes());
    auto parts = torch::split(model_output, channels, /*dim=*/1);
    mean_output = parts[0];
    // The vb term trains the variance only: the mean's gradient is stopped.
    const torch::Tensor frozen = torch::cat({parts[0].detach(), parts[1]}, 1);
    terms.vb = VbTermsBpd(diffusion, frozen, x_start, x_t, t, /*clip_denoised=*/false).output;
    if (types.loss_type == LossType::kRescaledMse) {
      // Divide by 1000 for equivalence with the initial implementation.
      terms.vb = terms.vb * (static_cast<double>(diffusion.num_timesteps()) / 1000.0);
    }
  }
  torch::Tensor target;
  switch (types.mean_type) {
    case ModelMeanType::kPreviousX:
      target = diffusion.QPosteriorMeanVariance(x_start, x_t, t).mean;
      break;
    case ModelMeanType::kStartX:
      target = x_start;
      break;
    case ModelMeanType::kEpsilon:
      target = noise;
      break;
  }
  terms.mse = MeanFlat((target - mean_output).pow(2));
  terms.loss = terms.vb.defined() ? terms.mse + terms.vb : terms.mse;
  return terms;
}

torch::Tensor PriorBpd(const GaussianDiffusion& diffusion, const torch::Tensor& x_start) {
  const torch::Tensor t =
      torch::full({x_start.size(0)}, diffusion.num_timesteps() - 1,
                  torch::TensorOptions().dtype(torch::kInt64).device(x_start.device()));
  const Posterior q = diffusion.QMeanVariance(x_start, t);
  const torch::Tensor zero = torch::zeros({}, x_start.options());
  return MeanFlat(NormalKl(q.mean, q.log_variance_clipped, zero, zero)) / std::log(2.0);
}

BpdResult CalcBpdLoop(const GaussianDiffusion& diffusion, const ModelFn& model,
                      const torch::Tensor& x_start, bool clip_denoised, NoiseSource& noise) {
  torch::NoGradGuard no_grad;
  const int64_t n = x_start.size(0);
  std::vector<torch::Tensor> vb, xstart_mse, mse;
  for (int64_t i = diffusion.num_timesteps() - 1; i >= 0; --i) {
    const torch::Tensor t = torch::full(
        {n}, i, torch::TensorOptions().dtype(torch::kInt64).device(x_start.device()));
    const torch::Tensor eps = noise.Next(x_start.sizes(), x_start.options());
    const torch::Tensor x_t = diffusion.QSample(x_start, t, eps);
    const torch::Tensor output = model(x_t, diffusion.ModelTimesteps(t));
    const VbTerms out = VbTermsBpd(diffusion, output, x_start, x_t, t, clip_denoised);
    vb.push_back(out.output);
    xstart_mse.push_back(MeanFlat((out.pred_xstart - x_start).pow(2)));
    const torch::Tensor pred_eps = PredictEpsFromXstart(diffusion.Gather(t), x_t, out.pred_xstart);
    mse.push_back(MeanFlat((pred_eps - eps).pow(2)));
  }
  BpdResult result;
  result.vb = torch::stack(vb, 1);
  result.xstart_mse = torch::stack(xstart_mse, 1);
  result.mse = torch::stack(mse, 1);
  result.prior_bpd = PriorBpd(diffusion, x_start);
  result.total_bpd = result.vb.sum(1) + result.prior_bpd;
  return result;
}

}  // namespace gd
