// Timestep samplers for training (resample.py): uniform, and the loss-aware "loss-second-moment"
// importance sampler of Nichol & Dhariwal 2021 (sec. 3.3) that draws t in proportion to the RMS of
// its recent losses once every timestep has a full history.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"

namespace gd {

struct TimestepDraw {
  torch::Tensor timesteps;  // [B] int64
  torch::Tensor weights;    // [B] float32: 1 / (T p(t)), so the weighted objective is unbiased
};

class ScheduleSampler {
 public:
  explicit ScheduleSampler(int64_t num_timesteps) : num_timesteps_(num_timesteps) {}
  virtual ~ScheduleSampler() = default;

  // Unnormalised positive weights, one per timestep (float64).
  virtual std::vector<double> Weights() const = 0;
  // Feeds back per-example losses at their timesteps (a no-op for the uniform sampler).
  virtual void Update(const std::vector<int64_t>& timesteps, const std::vector<double>& losses) {}
  virtual std::string name() const = 0;

  TimestepDraw Sample(int64_t batch_size, torch::Generator& generator,
                      const torch::Device& device = torch::kCPU) const;
  int64_t num_timesteps() const { return num_timesteps_; }

 private:
  int64_t num_timesteps_;
};

class UniformSampler : public ScheduleSampler {
 public:
  using ScheduleSampler::ScheduleSampler;
  std::vector<double> Weights() const override;
  std::string name() const override { return "uniform"; }
};

class LossSecondMomentResampler : public ScheduleSampler {
 public:
  explicit LossSecondMomentResampler(int64_t num_timesteps, int64_t history_per_term = 10,
                                     double uniform_prob = 0.001);
  std::vector<double> Weights() const override;
  void Update(const std::vector<int64_t>& timesteps, const std::vector<double>& losses) override;
  std::string name() const override { return "loss-second-moment"; }
  bool WarmedUp() const;

  // History as [T x history] float64 and counts [T] int64, for checkpoints.
  torch::Tensor history() const;
  torch::Tensor counts() const;
  void Restore(const torch::Tensor& history, const torch::Tensor& counts);

 private:
  int64_t history_per_term_;
  double uniform_prob_;
  std::vector<std::vector<double>> loss_history_;  // [T][history_per_term]
  std::vector<int64_t> loss_counts_;
};

// "uniform" or "loss-second-moment".
absl::StatusOr<std::unique_ptr<ScheduleSampler>> CreateScheduleSampler(const std::string& name,
                                                                       int64_t num_timesteps);

}  // namespace gd
