// What DDPM and DDIM share: a request's run over a respaced process of the model ("250",
// "ddim25", ...; the processes are built once per respacing and shared by requests), the checks
// of the fields that only DPM-Solver++ takes, and the per-row gather of the process's coefficient
// rows into one table for the batched step.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "core/diffusion/gaussian_diffusion.h"
#include "core/engine/sampler.h"

namespace gd {

// Respaced processes of one model, by respacing string; bounded, since callers choose the keys.
class ProcessCache {
 public:
  explicit ProcessCache(DiffusionConfig config) : config_(std::move(config)) {}
  // "" = the model's own respacing (its flags' --timestep_respacing; every step when they give
  // none). INVALID_ARGUMENT for a malformed respacing.
  absl::StatusOr<std::shared_ptr<const GaussianDiffusion>> Get(const std::string& requested) const;
  const DiffusionConfig& config() const { return config_; }

 private:
  static constexpr size_t kMaxProcesses = 64;
  DiffusionConfig config_;
  mutable std::mutex mu_;
  mutable std::map<std::string, std::shared_ptr<const GaussianDiffusion>> processes_;
};

class RespacedRun : public SamplerRun {
 public:
  RespacedRun(std::shared_ptr<const GaussianDiffusion> process, double eta)
      : process_(std::move(process)), eta_(eta) {}
  int64_t total_steps() const override { return process_->num_timesteps(); }
  double network_timestep(int64_t step) const override;
  double model_timestep(int64_t step) const override;
  bool uses_noise() const override { return noise_; }

  const GaussianDiffusion& process() const { return *process_; }
  // The respaced index of `step`: T' - 1 - step.
  int64_t index(int64_t step) const { return total_steps() - 1 - step; }
  double eta() const { return eta_; }
  void set_uses_noise(bool noise) { noise_ = noise; }

 private:
  std::shared_ptr<const GaussianDiffusion> process_;
  double eta_;
  bool noise_ = true;
};

// Checks what DDPM and DDIM share: no DPM-Solver++ fields, a valid respacing within max_steps.
absl::StatusOr<std::shared_ptr<const GaussianDiffusion>> StartRespaced(const ProcessCache& cache,
                                                                       const SampleJob& job,
                                                                       int64_t max_steps);

// One table for the batched step, [rows x (Coef::kCount + extra)] on the rows' device: each run's
// coefficient row at its current step, then the `extra` values `fill_extra` writes for it (e.g.
// DDIM's eta). Its first Coef::kCount columns are the StepCoefficients.
torch::Tensor GatherCoefficients(const SamplerRows& rows, int64_t extra,
                                 const std::function<void(const RespacedRun&, float*)>& fill_extra);

// p_mean_variance of the rows from the UNet output, with each row's x_0 correction.
MeanVar RowsMeanVariance(const SamplerRows& rows, const StepCoefficients& c,
                         const DiffusionConfig& config);

}  // namespace gd
