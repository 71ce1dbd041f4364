#include "core/diffusion/x0_correction.h"

namespace gd {

torch::Tensor DynamicThreshold(const torch::Tensor& x0, const torch::Tensor& ratio,
                               double max_value) {
  const int64_t rows = x0.size(0);
  const torch::Tensor sorted = std::get<0>(x0.abs().reshape({rows, -1}).sort(/*dim=*/1));
  const int64_t count = sorted.size(1);
  // torch.quantile: rank q * (n - 1), linear interpolation between the order statistics around it.
  const torch::Tensor rank = ratio.to(sorted.options()).view({rows, 1}) * static_cast<double>(count - 1);
  const torch::Tensor below = rank.floor().clamp(0, count - 1);
  const torch::Tensor above = rank.ceil().clamp(0, count - 1);
  const torch::Tensor low = sorted.gather(1, below.to(torch::kInt64));
  const torch::Tensor high = sorted.gather(1, above.to(torch::kInt64));
  torch::Tensor s = torch::lerp(low, high, rank - below).clamp_min(max_value);
  std::vector<int64_t> shape(static_cast<size_t>(x0.dim()), 1);
  shape[0] = rows;
  s = s.view(shape);
  return torch::max(torch::min(x0, s), -s) / s;
}

X0Correction X0Correction::Uniform(Mode mode, double ratio) {
  X0Correction c;
  c.mode_ = mode;
  if (mode == Mode::kDynamic) c.ratio_ = torch::full({1}, ratio, torch::kFloat32);
  return c;
}

X0Correction X0Correction::PerRow(const std::vector<Mode>& modes, const std::vector<float>& ratios,
                                  const torch::Device& device) {
  const int64_t rows = static_cast<int64_t>(modes.size());
  bool uniform = true;
  for (int64_t i = 1; i < rows; ++i) uniform &= modes[i] == modes[0] && ratios[i] == ratios[0];
  X0Correction c;
  if (rows == 0) return c;
  c.mode_ = modes[0];
  if (uniform) {
    if (c.mode_ == Mode::kDynamic) {
      c.ratio_ = torch::full({rows}, ratios[0], torch::TensorOptions().device(device));
    }
    return c;
  }
  // One host table [rows x 3] (clip, dynamic, ratio), one copy to the device.
  std::vector<float> table(static_cast<size_t>(rows * 3));
  for (int64_t i = 0; i < rows; ++i) {
    table[i * 3 + 0] = modes[i] == Mode::kClip ? 1.f : 0.f;
    table[i * 3 + 1] = modes[i] == Mode::kDynamic ? 1.f : 0.f;
    table[i * 3 + 2] = modes[i] == Mode::kDynamic ? ratios[i] : 1.f;
  }
  const torch::Tensor columns =
      torch::from_blob(table.data(), {rows, 3}, torch::kFloat32).to(device, /*non_blocking=*/false,
                                                                     /*copy=*/true);
  c.uniform_ = false;
  c.clip_ = columns.select(1, 0).gt(0).view({rows, 1, 1, 1});
  c.dynamic_ = columns.select(1, 1).gt(0).view({rows, 1, 1, 1});
  c.ratio_ = columns.select(1, 2);
  return c;
}

torch::Tensor X0Correction::Apply(const torch::Tensor& x0) const {
  if (uniform_) {
    switch (mode_) {
      case Mode::kNone: return x0;
      case Mode::kClip: return x0.clamp(-1, 1);
      case Mode::kDynamic:
        return DynamicThreshold(x0, ratio_.size(0) == x0.size(0) ? ratio_
                                                                 : ratio_.to(x0.device()).expand({x0.size(0)}));
    }
  }
  torch::Tensor out = torch::where(clip_, x0.clamp(-1, 1), x0);
  return torch::where(dynamic_, DynamicThreshold(x0, ratio_), out);
}

}  // namespace gd
