#include "core/train/optim.h"

#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"

namespace gd {

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> named_params,
             const Options& options)
    : params_(std::move(named_params)), options_(options) {
  for (const auto& [name, p] : params_) {
    exp_avg_.push_back(torch::zeros_like(p, torch::MemoryFormat::Preserve));
    exp_avg_sq_.push_back(torch::zeros_like(p, torch::MemoryFormat::Preserve));
  }
}

void AdamW::Step() {
  torch::NoGradGuard no_grad;
  ++step_;
  const double bias_correction1 = 1 - std::pow(options_.beta1, static_cast<double>(step_));
  const double bias_correction2 = 1 - std::pow(options_.beta2, static_cast<double>(step_));
  const double step_size = options_.lr / bias_correction1;
  for (size_t i = 0; i < params_.size(); ++i) {
    torch::Tensor& p = params_[i].second;
    if (!p.grad().defined()) continue;
    const torch::Tensor& g = p.grad();
    p.mul_(1 - options_.lr * options_.weight_decay);
    exp_avg_[i].mul_(options_.beta1).add_(g, 1 - options_.beta1);
    exp_avg_sq_[i].mul_(options_.beta2).addcmul_(g, g, 1 - options_.beta2);
    const torch::Tensor denom =
        (exp_avg_sq_[i].sqrt() / std::sqrt(bias_correction2)).add_(options_.eps);
    p.addcdiv_(exp_avg_[i], denom, -step_size);
  }
}

void AdamW::ZeroGrad() {
  for (auto& [name, p] : params_) {
    if (p.grad().defined()) {
      p.grad().detach_();
      p.grad().zero_();
    }
  }
}

StateDict AdamW::State() const {
  StateDict state;
  for (size_t i = 0; i < params_.size(); ++i) {
    state.emplace_back("exp_avg." + params_[i].first, exp_avg_[i]);
    state.emplace_back("exp_avg_sq." + params_[i].first, exp_avg_sq_[i]);
  }
  state.emplace_back("step", torch::tensor({step_}, torch::kInt64));
  return state;
}

absl::Status AdamW::LoadState(const StateDict& state) {
  std::map<std::string, torch::Tensor> by_name(state.begin(), state.end());
  auto take = [&](const std::string& key, const torch::Tensor& like,
                  torch::Tensor& into) -> absl::Status {
    auto it = by_name.find(key);
    if (it == by_name.end()) {
      return absl::InvalidArgumentError(absl::StrCat("optimizer state has no \"", key, "\""));
    }
    if (it->second.sizes() != like.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat("optimizer state \"", key,
                                                     "\" does not match its parameter's shape"));
    }
    into = it->second.to(like.options()).clone();
    return absl::OkStatus();
  };
  for (size_t i = 0; i < params_.size(); ++i) {
    if (auto s = take("exp_avg." + params_[i].first, params_[i].second, exp_avg_[i]); !s.ok()) {
      return s;
    }
    if (auto s = take("exp_avg_sq." + params_[i].first, params_[i].second, exp_avg_sq_[i]);
        !s.ok()) {
      return s;
    }
  }
  auto it = by_name.find("step");
  if (it == by_name.end() || it->second.numel() != 1) {
    return absl::InvalidArgumentError("optimizer state has no \"step\"");
  }
  step_ = it->second.to(torch::kInt64).item<int64_t>();
  return absl::OkStatus();
}

Ema::Ema(double rate, const std::vector<std::pair<std::string, torch::Tensor>>& named_params)
    : rate_(rate) {
  for (const auto& [name, p] : named_params) weights_.emplace_back(name, p.detach().clone());
}

void Ema::Update(const std::vector<std::pair<std::string, torch::Tensor>>& named_params) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < weights_.size(); ++i) {
    weights_[i].second.mul_(rate_).add_(named_params[i].second.detach(), 1 - rate_);
  }
}

absl::Status Ema::Load(const StateDict& state) {
  std::map<std::string, torch::Tensor> by_name(state.begin(), state.end());
  for (auto& [name, w] : weights_) {
    auto it = by_name.find(name);
    if (it == by_name.end() || it->second.sizes() != w.sizes()) {
      return absl::InvalidArgumentError(
          absl::StrCat("EMA ", rate_, " checkpoint lacks \"", name, "\" or has another shape"));
    }
    w = it->second.to(w.options()).clone();
  }
  return absl::OkStatus();
}

double GradNorm(const std::vector<torch::Tensor>& params) {
  double sum = 0;
  for (const auto& p : params) {
    if (p.grad().defined()) sum += p.grad().to(torch::kFloat64).pow(2).sum().item<double>();
  }
  return std::sqrt(sum);
}

}  // namespace gd
