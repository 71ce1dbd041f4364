#include "eval/speckle.h"

#include "absl/strings/str_cat.h"

namespace gd::eval {

absl::StatusOr<torch::Tensor> HighFrequencyRatios(const torch::Tensor& images) {
  if (images.dim() != 4 || images.scalar_type() != torch::kUInt8 || images.size(2) < 3 ||
      images.size(3) < 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("speckle: expected uint8 images [N x C x H x W] with H, W >= 3, got ",
                     images.dim(), " dimensions of ", c10::toString(images.scalar_type())));
  }
  torch::NoGradGuard no_grad;
  const torch::Tensor x = images.to(torch::kFloat64).div(255.0).mean(1);  // [N, H, W]
  const int64_t h = x.size(1), w = x.size(2);
  const torch::Tensor centre = x.slice(1, 1, h - 1).slice(2, 1, w - 1);
  const torch::Tensor laplacian = x.slice(1, 0, h - 2).slice(2, 1, w - 1) +
                                  x.slice(1, 2, h).slice(2, 1, w - 1) +
                                  x.slice(1, 1, h - 1).slice(2, 0, w - 2) +
                                  x.slice(1, 1, h - 1).slice(2, 2, w) - 4 * centre;
  const torch::Tensor energy = laplacian.pow(2).mean({1, 2});
  const torch::Tensor variance = x.flatten(1).var(/*dim=*/1, /*unbiased=*/false);
  // A flat image has variance 0 and a zero Laplacian: the clamp makes its ratio 0, not 0/0.
  return energy / variance.clamp_min(1e-300);
}

absl::StatusOr<double> SpeckledFraction(const torch::Tensor& reference_ratios,
                                        const torch::Tensor& sample_ratios, double quantile) {
  if (reference_ratios.numel() == 0 || sample_ratios.numel() == 0 || !(quantile > 0) ||
      !(quantile < 1)) {
    return absl::InvalidArgumentError(
        "speckle: both batches must be non-empty and the quantile in (0, 1)");
  }
  const double threshold =
      torch::quantile(reference_ratios.to(torch::kFloat64), quantile).item<double>();
  return (sample_ratios > threshold).to(torch::kFloat64).mean().item<double>();
}

}  // namespace gd::eval
