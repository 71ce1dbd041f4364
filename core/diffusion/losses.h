// Likelihood terms and training objectives (losses.py and GaussianDiffusion.training_losses /
// _vb_terms_bpd / calc_bpd_loop of the reference). Values in bits where the reference uses bits.
#pragma once

#include <optional>

#include <torch/torch.h>

#include "core/diffusion/gaussian_diffusion.h"
#include "core/diffusion/sampling.h"

namespace gd {

// KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, broadcasting.
torch::Tensor NormalKl(const torch::Tensor& mean1, const torch::Tensor& logvar1,
                       const torch::Tensor& mean2, const torch::Tensor& logvar2);
// tanh approximation of the standard normal CDF.
torch::Tensor ApproxStandardNormalCdf(const torch::Tensor& x);
// Log-likelihood (nats) of images x in [-1,1] (uint8 rescaled) under a Gaussian discretised to
// 256 bins; elementwise like x.
torch::Tensor DiscretizedGaussianLogLikelihood(const torch::Tensor& x, const torch::Tensor& means,
                                               const torch::Tensor& log_scales);
// Mean over all non-batch dimensions: [N x ...] -> [N].
torch::Tensor MeanFlat(const torch::Tensor& x);

struct VbTerms {
  torch::Tensor output;  // [N] bits: decoder NLL at t = 0, else KL(q(x_{t-1}|x_t,x_0) || p)
  torch::Tensor pred_xstart;
};
// The variational-bound term for one timestep, from a model output computed at (x_t, t).
VbTerms VbTermsBpd(const GaussianDiffusion& diffusion, const torch::Tensor& model_output,
                   const torch::Tensor& x_start, const torch::Tensor& x_t, const torch::Tensor& t,
                   bool clip_denoised);

struct LossTerms {
  torch::Tensor loss;  // [N]
  torch::Tensor mse;   // [N], undefined for the KL losses
  torch::Tensor vb;    // [N], defined when the variance is learned or the loss is KL
};
// training_losses: q_sample x_t with `noise`, run the model at t, and score its output. MSE losses
// learn the variance through the vb term with the mean's gradient stopped (Nichol & Dhariwal).
LossTerms TrainingLosses(const GaussianDiffusion& diffusion, const ModelFn& model,
                         const torch::Tensor& x_start, const torch::Tensor& t,
                         const torch::Tensor& noise);

// KL(q(x_T | x_0) || N(0, I)) in bits per dim, [N].
torch::Tensor PriorBpd(const GaussianDiffusion& diffusion, const torch::Tensor& x_start);

struct BpdResult {
  torch::Tensor total_bpd;   // [N]
  torch::Tensor prior_bpd;   // [N]
  torch::Tensor vb;          // [N x T]
  torch::Tensor xstart_mse;  // [N x T]
  torch::Tensor mse;         // [N x T]
};
// The whole variational bound, one model call per timestep (T-1 down to 0).
BpdResult CalcBpdLoop(const GaussianDiffusion& diffusion, const ModelFn& model,
                      const torch::Tensor& x_start, bool clip_denoised, NoiseSource& noise);

}  // namespace gd
