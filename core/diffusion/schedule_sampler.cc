#include "core/diffusion/schedule_sampler.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace gd {

TimestepDraw ScheduleSampler::Sample(int64_t batch_size, torch::Generator& generator,
                                     const torch::Device& device) const {
  const std::vector<double> w = Weights();
  torch::Tensor p = torch::tensor(w, torch::kFloat64);
  p = p / p.sum();
  const torch::Tensor indices =
      torch::multinomial(p, batch_size, /*replacement=*/true, generator);
  TimestepDraw draw;
  draw.weights = (1.0 / (static_cast<double>(w.size()) * p.index_select(0, indices)))
                     .to(torch::kFloat32)
                     .to(device);
  draw.timesteps = indices.to(device);
  return draw;
}

std::vector<double> UniformSampler::Weights() const {
  return std::vector<double>(static_cast<size_t>(num_timesteps()), 1.0);
}

LossSecondMomentResampler::LossSecondMomentResampler(int64_t num_timesteps,
                                                     int64_t history_per_term,
                                                     double uniform_prob)
    : ScheduleSampler(num_timesteps),
      history_per_term_(history_per_term),
      uniform_prob_(uniform_prob),
      loss_history_(static_cast<size_t>(num_timesteps),
                    std::vector<double>(static_cast<size_t>(history_per_term), 0.0)),
      loss_counts_(static_cast<size_t>(num_timesteps), 0) {}

bool LossSecondMomentResampler::WarmedUp() const {
  for (int64_t count : loss_counts_) {
    if (count != history_per_term_) return false;
  }
  return true;
}

std::vector<double> LossSecondMomentResampler::Weights() const {
  const size_t n = loss_history_.size();
  if (!WarmedUp()) return std::vector<double>(n, 1.0);
  std::vector<double> weights(n);
  double total = 0;
  for (size_t t = 0; t < n; ++t) {
    double sum_sq = 0;
    for (double loss : loss_history_[t]) sum_sq += loss * loss;
    weights[t] = std::sqrt(sum_sq / static_cast<double>(history_per_term_));
    total += weights[t];
  }
  for (double& w : weights) {
    w = w / total * (1 - uniform_prob_) + uniform_prob_ / static_cast<double>(n);
  }
  return weights;
}

void LossSecondMomentResampler::Update(const std::vector<int64_t>& timesteps,
                                       const std::vector<double>& losses) {
  for (size_t i = 0; i < timesteps.size() && i < losses.size(); ++i) {
    const int64_t t = timesteps[i];
    if (t < 0 || t >= num_timesteps()) continue;
    auto& history = loss_history_[static_cast<size_t>(t)];
    int64_t& count = loss_counts_[static_cast<size_t>(t)];
    if (count == history_per_term_) {
      // Shift out the oldest loss.
      history.erase(history.begin());
      history.push_back(losses[i]);
    } else {
      history[static_cast<size_t>(count)] = losses[i];
      ++count;
    }
  }
}

torch::Tensor LossSecondMomentResampler::history() const {
  torch::Tensor out = torch::zeros({num_timesteps(), history_per_term_}, torch::kFloat64);
  auto acc = out.accessor<double, 2>();
  for (int64_t t = 0; t < num_timesteps(); ++t) {
    for (int64_t k = 0; k < history_per_term_; ++k) acc[t][k] = loss_history_[t][k];
  }
  return out;
}

torch::Tensor LossSecondMomentResampler::counts() const {
  return torch::tensor(loss_counts_, torch::kInt64);
}

void LossSecondMomentResampler::Restore(const torch::Tensor& history, const torch::Tensor& counts) {
  TORCH_CHECK(history.sizes() == torch::IntArrayRef({num_timesteps(), history_per_term_}) &&
                  counts.numel() == num_timesteps(),
              "loss-second-moment state has shape ", history.sizes(), " / ", counts.sizes(),
              ", expected [", num_timesteps(), ", ", history_per_term_, "] / [", num_timesteps(),
              "]");
  const torch::Tensor h = history.to(torch::kFloat64).contiguous();
  const torch::Tensor c = counts.to(torch::kInt64).contiguous();
  auto hacc = h.accessor<double, 2>();
  auto cacc = c.accessor<int64_t, 1>();
  for (int64_t t = 0; t < num_timesteps(); ++t) {
    for (int64_t k = 0; k < history_per_term_; ++k) loss_history_[t][k] = hacc[t][k];
    loss_counts_[t] = cacc[t];
  }
}

absl::StatusOr<std::unique_ptr<ScheduleSampler>> CreateScheduleSampler(const std::string& name,
                                                                       int64_t num_timesteps) {
  if (name == "uniform") return std::make_unique<UniformSampler>(num_timesteps);
  if (name == "loss-second-moment") {
    return std::make_unique<LossSecondMomentResampler>(num_timesteps);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "schedule_sampler \"", name, "\" is unknown (allowed: uniform, loss-second-moment)"));
}

}  // namespace gd
