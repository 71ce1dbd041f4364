#include "eval/metrics.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"

namespace gd::eval {
namespace {

// Rows per block of pairwise distances: a block against 50,000 points is 200 MB of float32.
constexpr int64_t kDistanceBlockRows = 1000;

// The reference accepts a square root whose diagonal has imaginary parts up to 1e-3
// (np.allclose(..., atol=1e-3)); a negative eigenvalue -l contributes an imaginary sqrt(l).
constexpr double kImaginaryTolerance = 1e-3;

std::string Shape(const torch::Tensor& t) { return absl::StrJoin(t.sizes().vec(), "x"); }

struct SymmetricRoot {
  torch::Tensor root;     // V diag(sqrt(max(lambda, 0))) V^T
  double min_eigenvalue;  // before clamping
};

// The PSD square root of a symmetric float64 matrix by its eigendecomposition.
SymmetricRoot SqrtSymmetric(const torch::Tensor& symmetric) {
  auto [eigenvalues, eigenvectors] = torch::linalg_eigh(symmetric);
  const torch::Tensor roots = eigenvalues.clamp_min(0).sqrt();
  return {torch::matmul(eigenvectors * roots.unsqueeze(0), eigenvectors.transpose(0, 1)),
          eigenvalues.min().item<double>()};
}

absl::Status CheckNotImaginary(double min_eigenvalue, const char* what) {
  if (min_eigenvalue < 0 && std::sqrt(-min_eigenvalue) > kImaginaryTolerance) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Fréchet distance: %s has eigenvalue %g < 0, so the square root has an imaginary "
        "component %g > %g: the covariances are not positive semi-definite",
        what, min_eigenvalue, std::sqrt(-min_eigenvalue), kImaginaryTolerance));
  }
  return absl::OkStatus();
}

absl::Status CheckFinite(const torch::Tensor& t, const char* what) {
  if (!torch::isfinite(t).all().item<bool>()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Fréchet distance: ", what, " holds NaN or infinite values"));
  }
  return absl::OkStatus();
}

// Calls `visit(begin, distances)` for blocks of rows of PairwiseSquaredDistances(rows, columns).
template <typename Visit>
void ForDistanceBlocks(const torch::Tensor& rows, const torch::Tensor& columns, Visit visit) {
  for (int64_t begin = 0; begin < rows.size(0); begin += kDistanceBlockRows) {
    const int64_t n = std::min(kDistanceBlockRows, rows.size(0) - begin);
    visit(begin, PairwiseSquaredDistances(rows.narrow(0, begin, n), columns));
  }
}

}  // namespace

absl::StatusOr<Gaussian> FitGaussian(const torch::Tensor& features) {
  if (features.dim() != 2 || features.size(0) < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("a Gaussian needs features [N x D] with N >= 2; got ", Shape(features)));
  }
  torch::NoGradGuard no_grad;
  const torch::Tensor x = features.to(torch::kFloat64);
  const torch::Tensor mu = x.mean(0);
  const torch::Tensor centered = x - mu;
  const torch::Tensor sigma =
      torch::matmul(centered.transpose(0, 1), centered) / static_cast<double>(x.size(0) - 1);
  return Gaussian{mu, sigma};
}

absl::StatusOr<double> TraceSqrtProduct(const torch::Tensor& sigma1, const torch::Tensor& sigma2) {
  torch::NoGradGuard no_grad;
  const torch::Tensor s1 = sigma1.to(torch::kFloat64);
  const torch::Tensor s2 = sigma2.to(torch::kFloat64);
  const SymmetricRoot root1 = SqrtSymmetric((s1 + s1.transpose(0, 1)) / 2);
  RETURN_IF_ERROR(CheckNotImaginary(root1.min_eigenvalue, "sigma1"));
  torch::Tensor m = torch::matmul(torch::matmul(root1.root, s2), root1.root);
  m = (m + m.transpose(0, 1)) / 2;
  const torch::Tensor eigenvalues = torch::linalg_eigvalsh(m);
  if (auto s = CheckNotImaginary(eigenvalues.min().item<double>(), "sigma1 sigma2"); !s.ok()) {
    return s;
  }
  const double trace = eigenvalues.clamp_min(0).sqrt().sum().item<double>();
  if (!std::isfinite(trace)) {
    return absl::InternalError("tr((sigma1 sigma2)^(1/2)) is not finite");
  }
  return trace;
}

absl::StatusOr<double> FrechetDistance(const Gaussian& a, const Gaussian& b, double eps) {
  const int64_t d = a.mu.numel();
  if (a.mu.dim() != 1 || b.mu.sizes() != a.mu.sizes() || a.sigma.sizes() != b.sigma.sizes() ||
      a.sigma.dim() != 2 || a.sigma.size(0) != d || a.sigma.size(1) != d) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Fréchet distance of Gaussians of different sizes: mu %s and %s, sigma %s and %s",
        Shape(a.mu), Shape(b.mu), Shape(a.sigma), Shape(b.sigma)));
  }
  const std::pair<torch::Tensor, const char*> statistics[] = {
      {a.mu, "mu1"}, {b.mu, "mu2"}, {a.sigma, "sigma1"}, {b.sigma, "sigma2"}};
  for (const auto& [t, what] : statistics) {
    RETURN_IF_ERROR(CheckFinite(t, what));
  }
  torch::NoGradGuard no_grad;
  const torch::Tensor s1 = a.sigma.to(torch::kFloat64);
  const torch::Tensor s2 = b.sigma.to(torch::kFloat64);
  absl::StatusOr<double> trace_root;
  try {
    trace_root = TraceSqrtProduct(s1, s2);
  } catch (const c10::Error& e) {
    trace_root = absl::InternalError(e.what_without_backtrace());
  }
  if (!trace_root.ok() && absl::IsInternal(trace_root.status())) {
    // The reference's retry for a nearly singular product: eps on both diagonals.
    const torch::Tensor offset = torch::eye(d, torch::kFloat64) * eps;
    try {
      trace_root = TraceSqrtProduct(s1 + offset, s2 + offset);
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("Fréchet distance: the square root of sigma1 "
                       "sigma2 failed, also with eps = ",
                       eps, " on the diagonals: ", e.what_without_backtrace()));
    }
  }
  if (!trace_root.ok()) return trace_root.status();
  const torch::Tensor diff = a.mu.to(torch::kFloat64) - b.mu.to(torch::kFloat64);
  return diff.dot(diff).item<double>() + s1.trace().item<double>() + s2.trace().item<double>() -
         2 * *trace_root;
}

torch::Tensor PairwiseSquaredDistances(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor u = a.to(torch::kFloat32);
  const torch::Tensor v = b.to(torch::kFloat32);
  const torch::Tensor norm_u = u.square().sum(1, /*keepdim=*/true);  // [N x 1]
  const torch::Tensor norm_v = v.square().sum(1).unsqueeze(0);       // [1 x M]
  return (norm_u - 2 * torch::matmul(u, v.transpose(0, 1)) + norm_v).clamp_min(0);
}

absl::StatusOr<torch::Tensor> ManifoldRadii(const torch::Tensor& features, int64_t k) {
  if (features.dim() != 2 || k < 1 || features.size(0) <= k) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "k-nearest-neighbour radii with k = %d need features [N x D] with N > k; got %s", k,
        Shape(features)));
  }
  torch::NoGradGuard no_grad;
  torch::Tensor radii = torch::empty({features.size(0)}, torch::kFloat32);
  ForDistanceBlocks(features, features, [&](int64_t begin, const torch::Tensor& distances) {
    // The smallest distance is the point's own 0; the (k+1)-th smallest is its k-th neighbour.
    radii.narrow(0, begin, distances.size(0))
        .copy_(std::get<0>(distances.kthvalue(k + 1, /*dim=*/1)));
  });
  return radii;
}

double FractionInManifold(const torch::Tensor& manifold, const torch::Tensor& radii,
                          const torch::Tensor& points) {
  torch::NoGradGuard no_grad;
  int64_t inside = 0;
  const torch::Tensor radii_row = radii.to(torch::kFloat32).unsqueeze(0);  // [1 x N]
  ForDistanceBlocks(points, manifold, [&](int64_t, const torch::Tensor& distances) {
    inside += (distances <= radii_row).any(/*dim=*/1).sum().item<int64_t>();
  });
  return static_cast<double>(inside) / static_cast<double>(points.size(0));
}

absl::StatusOr<PrecisionRecall> ComputePrecisionRecall(const torch::Tensor& reference_features,
                                                       const torch::Tensor& sample_features,
                                                       int64_t k) {
  if (reference_features.dim() != 2 || sample_features.dim() != 2 ||
      reference_features.size(1) != sample_features.size(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("precision and recall need features [N x D] of one D; got reference ",
                     Shape(reference_features), " and samples ", Shape(sample_features)));
  }
  ASSIGN_OR_RETURN(auto reference_radii, ManifoldRadii(reference_features, k));
  ASSIGN_OR_RETURN(auto sample_radii, ManifoldRadii(sample_features, k));
  return PrecisionRecall{FractionInManifold(reference_features, reference_radii, sample_features),
                         FractionInManifold(sample_features, sample_radii, reference_features)};
}

double InceptionScore(const torch::Tensor& logits, int64_t split_size) {
  torch::NoGradGuard no_grad;
  const torch::Tensor log_p = torch::log_softmax(logits.to(torch::kFloat64), /*dim=*/1);
  double sum = 0;
  int64_t splits = 0;
  for (int64_t begin = 0; begin < log_p.size(0); begin += split_size) {
    const torch::Tensor part = log_p.narrow(0, begin, std::min(split_size, log_p.size(0) - begin));
    const torch::Tensor p = part.exp();
    const torch::Tensor log_marginal = p.mean(0, /*keepdim=*/true).log();
    // p * (log p - log p(y)), with 0 where p underflows to 0: its limit, where numpy's form
    // gives 0 * inf = NaN for a class no sample predicts (p(y) = 0).
    const torch::Tensor terms =
        torch::where(p > 0, p * (part - log_marginal), torch::zeros_like(p));
    const torch::Tensor kl = terms.sum(1).mean();
    sum += std::exp(kl.item<double>());
    ++splits;
  }
  return splits > 0 ? sum / static_cast<double>(splits) : std::nan("");
}

absl::StatusOr<Agreement> LabelAgreement(const torch::Tensor& logits, const torch::Tensor& labels,
                                         int64_t num_classes) {
  if (logits.dim() != 2 || labels.dim() != 1 || labels.size(0) != logits.size(0) ||
      logits.size(0) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("label agreement needs logits [N x C] and "
                     "labels [N], N >= 1; got ",
                     Shape(logits), " and ", Shape(labels)));
  }
  const torch::Tensor y = labels.to(torch::kInt64);
  const int64_t min_label = y.min().item<int64_t>();
  const int64_t max_label = y.max().item<int64_t>();
  if (min_label < 0 || max_label >= num_classes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("label %d is outside [0, %d) of the evaluator's classes",
                        min_label < 0 ? min_label : max_label, num_classes));
  }
  const torch::Tensor hits = (logits.argmax(1) == y).to(torch::kFloat64);
  const torch::Tensor counts = torch::bincount(y, {}, num_classes);
  const torch::Tensor hit_counts = torch::bincount(y, hits, num_classes);
  Agreement agreement;
  agreement.overall = hits.mean().item<double>();
  for (int64_t c = 0; c < num_classes; ++c) {
    const int64_t n = counts[c].item<int64_t>();
    agreement.count.push_back(n);
    agreement.per_class.push_back(n > 0 ? hit_counts[c].item<double>() / static_cast<double>(n)
                                        : std::nan(""));
  }
  return agreement;
}

}  // namespace gd::eval
