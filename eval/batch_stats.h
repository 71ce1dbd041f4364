// Feature statistics of an image batch, what the reference's evaluator keeps of a batch: the
// Gaussians of its pool and spatial features (FIDStatistics: mu, sigma, mu_s, sigma_s), the pool
// features themselves (precision and recall), and the logits (IS, label agreement). Computed by an
// Evaluator, cached in an .npz, and scored against a reference batch.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "core/io/dataset.h"
#include "eval/evaluator.h"
#include "eval/metrics.h"
#include "eval/scores.h"

namespace gd::eval {

struct BatchStats {
  std::string description;      // what the images were, e.g. "fashion-mnist test, 10000 images"
  std::string evaluator;        // Evaluator::fingerprint() of the network that saw them
  Gaussian pool;                // FID
  Gaussian spatial;             // sFID
  torch::Tensor pool_features;  // float32 [N x D]: precision and recall
  torch::Tensor logits;         // float32 [N x C]: IS and agreement
  torch::Tensor labels;         // int64 [N] (arr_1), undefined when the batch has none
  // float64 [N]: HighFrequencyRatios of the images (eval/speckle.h); undefined in caches written
  // before gd-eval computed it.
  torch::Tensor high_frequency;
  int64_t num_images() const { return pool_features.size(0); }
};

absl::StatusOr<BatchStats> ComputeStats(const Evaluator& evaluator, const ImageDataset& data);

// The cache: an uncompressed .npz with the reference's names mu, sigma, mu_s, sigma_s (so its
// evaluator.py would read the Gaussians too), plus pool, logits, labels (when labelled), and
// evaluator and description as UTF-8 bytes (uint8 [L]), and high_frequency.
absl::Status WriteStats(const std::string& path, const BatchStats& stats);
absl::StatusOr<BatchStats> ReadStats(const std::string& path);

// A batch to score or compare against: a cache written by WriteStats (it has "mu"), or images
// LoadDataset reads (an .npz sample batch, an IDX folder's `split`, a PNG folder), run through
// `evaluator` now. `limit` > 0 keeps the first `limit` images.
absl::StatusOr<BatchStats> LoadBatch(const Evaluator& evaluator, const std::string& path,
                                     const std::string& split = "test", int64_t limit = 0);

// Every metric of `samples` against `reference`; both must come from `evaluator` (same
// fingerprint), else an error says to recompute the cache. Agreement when samples has labels;
// the speckled fraction when both have high_frequency.
absl::StatusOr<Scores> Score(const Evaluator& evaluator, const BatchStats& reference,
                             const BatchStats& samples);

}  // namespace gd::eval
