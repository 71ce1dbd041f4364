// The sample-quality numbers of the reference's evaluations/evaluator.py, over feature matrices
// (rows = images), whatever network produced them:
//   Fréchet distance of two Gaussians fitted to features (FID on pool features, sFID on spatial
//   ones; Heusel et al. 2017), the Inception Score of class probabilities (Salimans et al. 2016),
//   improved precision and recall from k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019),
//   and label agreement (evaluator prediction = the class the sample was drawn for).
// Statistics are float64, as numpy computes them; pairwise distances float32, as the reference's
// fallback path. Knows nothing of networks, files or servers.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace gd::eval {

// A Gaussian fitted to features [N x D]: mu = mean over rows, sigma = the unbiased covariance
// (np.mean(axis=0), np.cov(rowvar=False)); float64 [D] and [D x D].
struct Gaussian {
  torch::Tensor mu;
  torch::Tensor sigma;
};
// N >= 2 rows (an InvalidArgument error otherwise).
absl::StatusOr<Gaussian> FitGaussian(const torch::Tensor& features);

// tr((sigma1 sigma2)^(1/2)) for symmetric positive semi-definite sigma1, sigma2 [D x D].
// sigma1 sigma2 is not symmetric, but it is similar to M = sigma1^(1/2) sigma2 sigma1^(1/2), which
// is: the trace is the sum of sqrt(eigenvalues of M), both roots by torch::linalg_eigh in float64.
// A singular product is no special case here (its zero eigenvalues add zero). Eigenvalues below 0
// are rounding and count as 0 unless their root's imaginary part would exceed 1e-3, the
// reference's tolerance for "Imaginary component": then sigma1 or sigma2 is not PSD, an error.
absl::StatusOr<double> TraceSqrtProduct(const torch::Tensor& sigma1, const torch::Tensor& sigma2);

// ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)) (Dowson & Landau 1982).
// Like the reference, if the root fails (no convergence, non-finite result) it is retried once
// with eps added to both diagonals. Mismatched sizes and non-finite statistics are errors.
absl::StatusOr<double> FrechetDistance(const Gaussian& a, const Gaussian& b, double eps = 1e-6);

// Squared Euclidean distances [N x M] between rows of a [N x D] and b [M x D]: |a|^2 - 2 a.b +
// |b|^2 clamped at 0, in float32 (the reference's _batch_pairwise_distances).
torch::Tensor PairwiseSquaredDistances(const torch::Tensor& a, const torch::Tensor& b);

// Radius of each point's k-nearest-neighbour ball within its own set: the squared distance to its
// k-th nearest other point (the (k+1)-th smallest distance counting itself), float32 [N]. N > k.
absl::StatusOr<torch::Tensor> ManifoldRadii(const torch::Tensor& features, int64_t k = 3);

// Fraction of `points` [P x D] that lie in the manifold of `manifold` [N x D]: inside the ball of
// at least one manifold point (squared distance <= its radius, radii from ManifoldRadii).
double FractionInManifold(const torch::Tensor& manifold, const torch::Tensor& radii,
                          const torch::Tensor& points);

struct PrecisionRecall {
  double precision = 0;  // samples inside the reference manifold
  double recall = 0;     // reference points inside the sample manifold
};
absl::StatusOr<PrecisionRecall> ComputePrecisionRecall(const torch::Tensor& reference_features,
                                                       const torch::Tensor& sample_features,
                                                       int64_t k = 3);

// exp(E_x KL(p(y|x) || p(y))) over splits of `split_size` rows, averaged over the splits, with
// p(y|x) = softmax(logits) [N x C] and p(y) its mean over the split. Uniform predictions give 1;
// confident predictions spread evenly over C classes give C.
double InceptionScore(const torch::Tensor& logits, int64_t split_size = 5000);

// argmax(logits) == labels, overall and per requested class.
struct Agreement {
  double overall = 0;
  std::vector<int64_t> count;     // [num_classes]: samples drawn for class c
  std::vector<double> per_class;  // [num_classes]: their agreement (NaN where count is 0)
};
// logits [N x C], labels int64 [N] in [0, num_classes).
absl::StatusOr<Agreement> LabelAgreement(const torch::Tensor& logits, const torch::Tensor& labels,
                                         int64_t num_classes);

}  // namespace gd::eval
