// Speckle: how much of a sample batch is high-frequency texture rather than an object. The
// bundled model's failure mode is grainy, salt-and-pepper images; FID sees them only blurred into
// its mean. Defined per image, without any network:
//
//   ratio(x) = mean(Laplacian(x)^2) / var(x)
//
// over the image in [0, 1] (channels averaged), with the 4-neighbour Laplacian on the interior
// pixels (no padding). Smooth shapes with a few edges score low; a constant image or a linear
// ramp scores 0; independent pixel noise scores 20 (four neighbours and -4 times the centre:
// 4 + 16 times the pixel variance). A sample is *speckled* when its ratio exceeds the reference
// batch's 99th percentile: 1% of real images count as speckled by construction, and a sampler
// that draws like the data scores about 0.01.
#pragma once

#include <torch/torch.h>

#include "absl/status/statusor.h"

namespace gd::eval {

// ratio(x) for each image of a uint8 [N x C x H x W] batch (H, W >= 3): float64 [N].
absl::StatusOr<torch::Tensor> HighFrequencyRatios(const torch::Tensor& images);

// The share of `sample_ratios` above the `quantile` of `reference_ratios` (both float64 [N],
// reference non-empty, quantile in (0, 1)).
absl::StatusOr<double> SpeckledFraction(const torch::Tensor& reference_ratios,
                                        const torch::Tensor& sample_ratios,
                                        double quantile = 0.99);

}  // namespace gd::eval
