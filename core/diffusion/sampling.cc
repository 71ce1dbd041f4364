#include "core/diffusion/sampling.h"

#include "absl/strings/str_cat.h"

namespace gd {

torch::Tensor GeneratorNoise::Next(at::IntArrayRef shape, const torch::TensorOptions& options) {
  return torch::randn(shape, generator_, options);
}

torch::Tensor ReplayNoise::Next(at::IntArrayRef shape, const torch::TensorOptions& options) {
  TORCH_CHECK(next_ < rows_.size(0), "recorded noise exhausted after ", next_, " rows");
  torch::Tensor row = rows_[next_++];
  TORCH_CHECK(row.sizes() == shape, "recorded noise row ", next_ - 1, " has shape ", row.sizes(),
              ", the sampler asked for ", shape);
  return row.to(options);
}

torch::Generator MakeGenerator(uint64_t seed, const torch::Device& device) {
  torch::Generator generator = at::globalContext().defaultGenerator(device).clone();
  generator.set_current_seed(seed);
  return generator;
}

uint64_t DeriveSeed(uint64_t seed, uint64_t stream) {
  auto mix = [](uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
  };
  return mix(mix(seed) + stream);
}

const char* ToString(SamplerKind kind) {
  switch (kind) {
    case SamplerKind::kDdpm: return "ddpm";
    case SamplerKind::kDdim: return "ddim";
    case SamplerKind::kDpmSolverPP: return "dpm++";
  }
  return "?";
}

namespace {

torch::Tensor FullSteps(int64_t value, int64_t n, const torch::Device& device) {
  return torch::full({n}, value, torch::TensorOptions().dtype(torch::kInt64).device(device));
}

}  // namespace

StepResult PSample(const GaussianDiffusion& diffusion, const ModelFn& model, const torch::Tensor& x,
                   const torch::Tensor& t, const SampleOptions& options, NoiseSource& noise) {
  const StepCoefficients c = diffusion.Gather(t);
  const torch::Tensor output = model(x, diffusion.ModelTimesteps(t));
  MeanVar out = PMeanVarianceFromOutput(diffusion.types().mean_type, diffusion.types().var_type, c,
                                        output, x, {options.clip_denoised, options.denoised_fn});
  const torch::Tensor z = noise.Next(x.sizes(), x.options());
  if (options.cond_fn) {
    out.mean = ConditionMean(out, options.cond_fn(x, diffusion.ModelTimesteps(t)));
  }
  StepResult result;
  result.sample = DdpmStep(c, out.mean, out.log_variance, z);
  result.pred_xstart = out.pred_xstart;
  return result;
}

StepResult DdimSample(const GaussianDiffusion& diffusion, const ModelFn& model,
                      const torch::Tensor& x, const torch::Tensor& t, const SampleOptions& options,
                      NoiseSource& noise) {
  const StepCoefficients c = diffusion.Gather(t);
  const torch::Tensor output = model(x, diffusion.ModelTimesteps(t));
  MeanVar out = PMeanVarianceFromOutput(diffusion.types().mean_type, diffusion.types().var_type, c,
                                        output, x, {options.clip_denoised, options.denoised_fn});
  if (options.cond_fn) {
    out = ConditionScore(c, out, x, options.cond_fn(x, diffusion.ModelTimesteps(t)));
  }
  const torch::Tensor z = noise.Next(x.sizes(), x.options());
  const torch::Tensor eta = torch::full({}, options.eta, x.options());
  StepResult result;
  result.sample = DdimStep(c, x, out.pred_xstart, eta, z);
  result.pred_xstart = out.pred_xstart;
  return result;
}

StepResult DdimReverseSample(const GaussianDiffusion& diffusion, const ModelFn& model,
                             const torch::Tensor& x, const torch::Tensor& t,
                             const SampleOptions& options) {
  TORCH_CHECK(options.eta == 0.0, "the reverse DDIM ODE is deterministic: eta must be 0, got ",
              options.eta);
  const StepCoefficients c = diffusion.Gather(t);
  const torch::Tensor output = model(x, diffusion.ModelTimesteps(t));
  const MeanVar out =
      PMeanVarianceFromOutput(diffusion.types().mean_type, diffusion.types().var_type, c, output,
                              x, {options.clip_denoised, options.denoised_fn});
  StepResult result;
  result.sample = DdimReverseStep(c, x, out.pred_xstart);
  result.pred_xstart = out.pred_xstart;
  return result;
}

torch::Tensor SampleLoop(SamplerKind kind, const GaussianDiffusion& diffusion, const ModelFn& model,
                         at::IntArrayRef shape, const std::optional<torch::Tensor>& x_T,
                         const SampleOptions& options, NoiseSource& noise,
                         const StepCallback& on_step) {
  TORCH_CHECK(kind != SamplerKind::kDpmSolverPP, "SampleLoop runs DDPM and DDIM; DPM-Solver++ is "
              "DpmSolverLoop");
  torch::NoGradGuard no_grad;
  torch::Tensor img;
  if (x_T.has_value()) {
    TORCH_CHECK(x_T->sizes() == shape, "x_T has shape ", x_T->sizes(), ", expected ", shape);
    img = *x_T;
  } else {
    img = noise.Next(shape, torch::TensorOptions().dtype(torch::kFloat).device(options.device));
  }
  const int64_t steps = diffusion.num_timesteps();
  for (int64_t i = steps - 1; i >= 0; --i) {
    const torch::Tensor t = FullSteps(i, shape[0], img.device());
    StepResult out = kind == SamplerKind::kDdpm
                         ? PSample(diffusion, model, img, t, options, noise)
                         : DdimSample(diffusion, model, img, t, options, noise);
    out.step = steps - 1 - i;
    out.t = i;
    if (on_step) on_step(out);
    img = out.sample;
  }
  return img;
}

}  // namespace gd
