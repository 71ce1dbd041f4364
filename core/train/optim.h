// Optimisation pieces of the trainers: AdamW (Loshchilov & Hutter 2019, PyTorch's update order)
// with its state as plain named tensors so checkpoints can hold it as safetensors, and the
// exponential moving averages of the weights that the reference samples from.
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "core/nn/checkpoint.h"

namespace gd {

class AdamW {
 public:
  struct Options {
    double lr = 1e-4;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;
  };
  AdamW(std::vector<std::pair<std::string, torch::Tensor>> named_params, const Options& options);

  // One update from the parameters' .grad (parameters without a gradient are skipped).
  void Step();
  void ZeroGrad();
  void set_lr(double lr) { options_.lr = lr; }
  double lr() const { return options_.lr; }
  int64_t step_count() const { return step_; }

  // "exp_avg.<name>", "exp_avg_sq.<name>" for every parameter, and "step".
  StateDict State() const;
  // Restores what State() saved; every key must be there with the parameter's shape.
  absl::Status LoadState(const StateDict& state);

 private:
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;
  Options options_;
  int64_t step_ = 0;
};

// EMA copies of parameters: ema <- rate * ema + (1 - rate) * param after every step.
class Ema {
 public:
  Ema(double rate, const std::vector<std::pair<std::string, torch::Tensor>>& named_params);
  void Update(const std::vector<std::pair<std::string, torch::Tensor>>& named_params);
  double rate() const { return rate_; }
  const StateDict& weights() const { return weights_; }
  absl::Status Load(const StateDict& state);

 private:
  double rate_;
  StateDict weights_;
};

// L2 norm over all gradients (0 when none).
double GradNorm(const std::vector<torch::Tensor>& params);

}  // namespace gd
