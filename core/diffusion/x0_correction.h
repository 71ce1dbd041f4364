// Corrections of the predicted x_0 that every sampler applies before using it: static clipping to
// [-1, 1] (the reference's clip_denoised) and dynamic thresholding (Imagen, Saharia et al. 2022;
// the DPM-Solver reference's dynamic_thresholding_fn), per batch row, so that rows of requests
// with different settings share one batched step.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

namespace gd {

// Imagen's dynamic thresholding of x0 [N x ...]: per row, s = max(max_value, the `ratio` quantile
// of |x0| (linear interpolation between order statistics, as torch.quantile)), then
// x0 -> clamp(x0, -s, s) / s. `ratio` is [N] (one per row), float.
torch::Tensor DynamicThreshold(const torch::Tensor& x0, const torch::Tensor& ratio,
                               double max_value = 1.0);

class X0Correction {
 public:
  enum class Mode : int8_t { kNone, kClip, kDynamic };

  X0Correction() = default;  // no correction
  static X0Correction Uniform(Mode mode, double ratio = 0);
  // One mode (and ratio, for kDynamic) per row; the tensors it needs go to `device` in one copy.
  static X0Correction PerRow(const std::vector<Mode>& modes, const std::vector<float>& ratios,
                             const torch::Device& device);

  torch::Tensor Apply(const torch::Tensor& x0) const;
  bool is_none() const { return uniform_ && mode_ == Mode::kNone; }
  bool is_clip() const { return uniform_ && mode_ == Mode::kClip; }

 private:
  bool uniform_ = true;
  Mode mode_ = Mode::kNone;
  torch::Tensor ratio_;    // [N] (kDynamic rows; 0 elsewhere)
  torch::Tensor clip_;     // [N x 1 x 1 x 1] bool: rows clamped (mixed modes only)
  torch::Tensor dynamic_;  // [N x 1 x 1 x 1] bool: rows thresholded (mixed modes only)
};

}  // namespace gd
