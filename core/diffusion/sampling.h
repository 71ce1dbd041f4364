// Samplers over a GaussianDiffusion and a model callback: DDPM ancestral sampling (p_sample,
// Ho et al. 2020 Algorithm 2) and DDIM (Song et al. 2020), each optionally guided by a
// classifier gradient (Dhariwal & Nichol 2021: Algorithm 1 for DDPM, Algorithm 2 for DDIM), in a
// single-step form, a loop, and a progressive loop that reports every step.
//
// Randomness comes from an injectable NoiseSource: a seeded generator in production, recorded
// noise in parity tests. One Next() call per step, whether or not the step uses the noise.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include <torch/torch.h>

#include "core/diffusion/gaussian_diffusion.h"

namespace gd {

class NoiseSource {
 public:
  virtual ~NoiseSource() = default;
  // Standard normal noise of `shape` with `options` (dtype and device).
  virtual torch::Tensor Next(at::IntArrayRef shape, const torch::TensorOptions& options) = 0;
};

// Draws from a torch generator (CPU or the device's).
class GeneratorNoise : public NoiseSource {
 public:
  explicit GeneratorNoise(torch::Generator generator) : generator_(std::move(generator)) {}
  torch::Tensor Next(at::IntArrayRef shape, const torch::TensorOptions& options) override;

 private:
  torch::Generator generator_;
};

// Replays recorded rows [S x ...] in order (the fixture's per-step noise). Fails when exhausted or
// when a row's shape differs from the one asked for.
class ReplayNoise : public NoiseSource {
 public:
  explicit ReplayNoise(torch::Tensor rows) : rows_(std::move(rows)) {}
  torch::Tensor Next(at::IntArrayRef shape, const torch::TensorOptions& options) override;
  int64_t used() const { return next_; }

 private:
  torch::Tensor rows_;
  int64_t next_ = 0;
};

// A seeded generator on `device` (CPU or CUDA), independent of the global one.
torch::Generator MakeGenerator(uint64_t seed, const torch::Device& device = torch::kCPU);
// A well-mixed seed for stream `stream` of a run seeded with `seed` (SplitMix64 of both): image i
// of a request, step s of a training run.
uint64_t DeriveSeed(uint64_t seed, uint64_t stream);

struct SampleOptions {
  bool clip_denoised = true;
  DenoisedFn denoised_fn;  // optional
  GradFn cond_fn;          // optional classifier guidance (scaled gradient)
  double eta = 0.0;        // DDIM only
  torch::Device device = torch::kCPU;  // where SampleLoop draws x_T when none is given
};

struct StepResult {
  int64_t step = 0;        // 0 for the first denoising step
  int64_t t = 0;           // respaced timestep index of this step (T-1 .. 0)
  torch::Tensor sample;    // x_{t-1}
  torch::Tensor pred_xstart;
};
using StepCallback = std::function<void(const StepResult&)>;

// One DDPM step from x_t at respaced timesteps t [N].
StepResult PSample(const GaussianDiffusion& diffusion, const ModelFn& model, const torch::Tensor& x,
                   const torch::Tensor& t, const SampleOptions& options, NoiseSource& noise);
// One DDIM step (eta from options).
StepResult DdimSample(const GaussianDiffusion& diffusion, const ModelFn& model,
                      const torch::Tensor& x, const torch::Tensor& t, const SampleOptions& options,
                      NoiseSource& noise);
// One deterministic DDIM inversion step x_t -> x_{t+1} (eta must be 0).
StepResult DdimReverseSample(const GaussianDiffusion& diffusion, const ModelFn& model,
                             const torch::Tensor& x, const torch::Tensor& t,
                             const SampleOptions& options);

// The reverse processes the service offers; DPM-Solver++ lives in dpm_solver.h.
enum class SamplerKind { kDdpm, kDdim, kDpmSolverPP };
const char* ToString(SamplerKind kind);  // "ddpm", "ddim", "dpm++"

// Full DDPM or DDIM loops from x_T (drawn from `noise` when not given) down to x_0. `on_step`, when set, sees
// every step's x_{t-1} and pred_xstart (the reference's *_progressive generators).
torch::Tensor SampleLoop(SamplerKind kind, const GaussianDiffusion& diffusion, const ModelFn& model,
                         at::IntArrayRef shape, const std::optional<torch::Tensor>& x_T,
                         const SampleOptions& options, NoiseSource& noise,
                         const StepCallback& on_step = nullptr);

}  // namespace gd
