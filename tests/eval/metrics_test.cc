// gd-eval's numbers (eval/metrics.h): closed forms, constructed point sets and logits, and
// goldens that numpy/scipy computed the reference's way (scripts/make_eval_goldens.py).
#include "eval/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/diffusion/sampling.h"
#include "core/io/npy.h"
#include "tests/testing/testing.h"

namespace gd::eval {
namespace {

const std::map<std::string, torch::Tensor>& Goldens() {
  static const auto* goldens = [] {
    auto list = ReadNpz(testing::SourceDir() + "/tests/data/eval/goldens.npz");
    EXPECT_TRUE(list.ok()) << list.status();
    auto* map = new std::map<std::string, torch::Tensor>();
    if (list.ok()) map->insert(list->begin(), list->end());
    return map;
  }();
  return *goldens;
}

double Scalar(const std::string& key) { return Goldens().at(key).item<double>(); }

Gaussian Diagonal(const std::vector<double>& mu, const std::vector<double>& variances) {
  return {torch::tensor(mu, torch::kFloat64),
          torch::diag(torch::tensor(variances, torch::kFloat64))};
}

// Points 0, 1, ..., n-1 on a line, as features [n x 1].
torch::Tensor Line(int64_t begin, int64_t end) {
  return torch::arange(begin, end, torch::kFloat32).unsqueeze(1);
}

TEST(FitGaussian, IsTheMeanAndTheUnbiasedCovariance) {
  const torch::Tensor x = torch::tensor({{1.0, 2.0}, {3.0, 0.0}, {5.0, 4.0}}, torch::kFloat64);
  auto g = FitGaussian(x);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_TRUE(testing::TensorsClose(g->mu, torch::tensor({3.0, 2.0}, torch::kFloat64), 1e-12));
  // np.cov: sum of outer products of the deviations / (N - 1).
  const torch::Tensor expected = torch::tensor({{4.0, 2.0}, {2.0, 4.0}}, torch::kFloat64);
  EXPECT_TRUE(testing::TensorsClose(g->sigma, expected, 1e-12));
  EXPECT_FALSE(FitGaussian(x.narrow(0, 0, 1)).ok());
}

TEST(FrechetDistance, OfDiagonalGaussiansIsTheClosedForm) {
  // For commuting covariances: |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
  const Gaussian a = Diagonal({0, 1, 2}, {1, 4, 9});
  const Gaussian b = Diagonal({1, 1, 0}, {4, 1, 0.25});
  const double expected =
      1 + 0 + 4 + std::pow(1 - 2, 2) + std::pow(2 - 1, 2) + std::pow(3 - 0.5, 2);
  auto fd = FrechetDistance(a, b);
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_NEAR(*fd, expected, 1e-10);
  EXPECT_NEAR(*FrechetDistance(b, a), expected, 1e-10);
  EXPECT_NEAR(*FrechetDistance(a, a), 0, 1e-10);
}

TEST(FrechetDistance, MatchesScipySqrtmOnFullRankCovariances) {
  const Gaussian a{Goldens().at("full_mu1"), Goldens().at("full_sigma1")};
  const Gaussian b{Goldens().at("full_mu2"), Goldens().at("full_sigma2")};
  auto fd = FrechetDistance(a, b);
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_NEAR(*fd, Scalar("full_fd"), 1e-8 * Scalar("full_fd"));
}

TEST(FrechetDistance, MatchesScipySqrtmOnSingularCovariances) {
  // D = 12 from 6 and 9 points: both covariances and their product are singular.
  auto a = FitGaussian(Goldens().at("singular_features1"));
  auto b = FitGaussian(Goldens().at("singular_features2"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(testing::TensorsClose(a->sigma, Goldens().at("singular_sigma1"), 1e-12));
  auto fd = FrechetDistance(*a, *b);
  ASSERT_TRUE(fd.ok()) << fd.status();
  // scipy's Schur-based sqrtm is itself accurate to ~1e-8 relative on singular products.
  EXPECT_NEAR(*fd, Scalar("singular_fd"), 1e-6 * Scalar("singular_fd"));
}

TEST(FrechetDistance, OfSamplesOfOneGaussianApproachesZero) {
  torch::Generator gen = MakeGenerator(7);
  const torch::Tensor mix = torch::randn({6, 6}, gen, torch::kFloat64);
  const torch::Tensor x = torch::matmul(torch::randn({20000, 6}, gen, torch::kFloat64), mix);
  auto first = FitGaussian(x.narrow(0, 0, 10000));
  auto second = FitGaussian(x.narrow(0, 10000, 10000));
  const double spread = first->sigma.trace().item<double>();
  auto fd = FrechetDistance(*first, *second);
  ASSERT_TRUE(fd.ok());
  EXPECT_GE(*fd, 0);
  EXPECT_LT(*fd, 0.01 * spread);
  // Shifting one half by 1 in every coordinate adds 6.
  auto shifted = FitGaussian(x.narrow(0, 10000, 10000) + 1);
  EXPECT_NEAR(*FrechetDistance(*first, *shifted), *fd + 6, 0.05 * 6);
}

TEST(FrechetDistance, RejectsMismatchedNonFiniteAndIndefiniteInput) {
  const Gaussian a = Diagonal({0, 0}, {1, 1});
  EXPECT_EQ(FrechetDistance(a, Diagonal({0, 0, 0}, {1, 1, 1})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(FrechetDistance(a, Diagonal({0, std::nan("")}, {1, 1})).ok());
  // A "covariance" with eigenvalue -1: the reference's "Imaginary component" error.
  auto indefinite = FrechetDistance(a, Diagonal({0, 0}, {1, -1}));
  ASSERT_FALSE(indefinite.ok());
  EXPECT_NE(indefinite.status().message().find("imaginary"), std::string::npos)
      << indefinite.status();
}

TEST(TraceSqrtProduct, OfACovarianceWithItselfIsItsTrace) {
  torch::Generator gen = MakeGenerator(3);
  const torch::Tensor m = torch::randn({5, 5}, gen, torch::kFloat64);
  const torch::Tensor sigma = torch::matmul(m, m.transpose(0, 1));
  auto trace = TraceSqrtProduct(sigma, sigma);
  ASSERT_TRUE(trace.ok());
  EXPECT_NEAR(*trace, sigma.trace().item<double>(), 1e-9 * sigma.trace().item<double>());
}

TEST(ManifoldRadii, AreSquaredDistancesToTheThirdNeighbour) {
  auto radii = ManifoldRadii(Line(0, 100), 3);
  ASSERT_TRUE(radii.ok()) << radii.status();
  EXPECT_FLOAT_EQ((*radii)[0].item<float>(), 9);   // 0's third neighbour is 3
  EXPECT_FLOAT_EQ((*radii)[1].item<float>(), 4);   // 0, 2, 3
  EXPECT_FLOAT_EQ((*radii)[50].item<float>(), 4);  // 49, 51, then 48 or 52
  EXPECT_FALSE(ManifoldRadii(Line(0, 3), 3).ok());
}

TEST(PrecisionRecall, OfASetAgainstItselfAreOne) {
  auto pr = ComputePrecisionRecall(Line(0, 100), Line(0, 100));
  ASSERT_TRUE(pr.ok());
  EXPECT_EQ(pr->precision, 1);
  EXPECT_EQ(pr->recall, 1);
}

TEST(PrecisionRecall, OfDisjointSetsAreZero) {
  auto pr = ComputePrecisionRecall(Line(0, 100), Line(1000, 1100));
  ASSERT_TRUE(pr.ok());
  EXPECT_EQ(pr->precision, 0);
  EXPECT_EQ(pr->recall, 0);
}

TEST(PrecisionRecall, HalfTheReferenceCoversOnlyItsNeighbourhood) {
  // Samples 0..49 lie on reference points: precision 1. Reference points 0..49 are samples;
  // 50, 51 and 52 are within sample 49's radius (its third neighbour, 46: 9), 53 is not.
  auto pr = ComputePrecisionRecall(Line(0, 100), Line(0, 50));
  ASSERT_TRUE(pr.ok());
  EXPECT_EQ(pr->precision, 1);
  EXPECT_DOUBLE_EQ(pr->recall, 0.53);
}

TEST(PrecisionRecall, ModeCollapseKeepsPrecisionAndLosesRecall) {
  // Ten copies of one reference point: all realistic, none diverse (radius 0).
  auto pr = ComputePrecisionRecall(Line(0, 100), torch::full({10, 1}, 50.0f));
  ASSERT_TRUE(pr.ok());
  EXPECT_EQ(pr->precision, 1);
  EXPECT_DOUBLE_EQ(pr->recall, 0.01);
}

TEST(PrecisionRecall, MatchesTheReferenceAlgorithmOnRandomClouds) {
  const torch::Tensor ref = Goldens().at("pr_ref");
  auto radii = ManifoldRadii(ref, 3);
  ASSERT_TRUE(radii.ok());
  EXPECT_TRUE(testing::TensorsClose(*radii, Goldens().at("pr_ref_radii"), 1e-5));
  auto pr = ComputePrecisionRecall(ref, Goldens().at("pr_sample"), 3);
  ASSERT_TRUE(pr.ok());
  EXPECT_DOUBLE_EQ(pr->precision, Scalar("pr_precision"));
  EXPECT_DOUBLE_EQ(pr->recall, Scalar("pr_recall"));
}

TEST(InceptionScore, OfUniformPredictionsIsOne) {
  EXPECT_NEAR(InceptionScore(torch::zeros({50, 10})), 1.0, 1e-12);
}

TEST(InceptionScore, OfConfidentDistinctPredictionsIsTheClassCount) {
  // 3 images per class, each predicted with certainty.
  const torch::Tensor labels = torch::arange(10).repeat({3});
  const torch::Tensor logits = torch::one_hot(labels, 10).to(torch::kFloat32) * 1000;
  EXPECT_NEAR(InceptionScore(logits), 10.0, 1e-9);
  // All confident in one class: no diversity, score 1.
  EXPECT_NEAR(InceptionScore(torch::one_hot(torch::zeros({30}, torch::kInt64), 10) * 1000.0), 1.0,
              1e-9);
}

TEST(InceptionScore, MatchesTheReferenceFormulaWithSplits) {
  const torch::Tensor logits = Goldens().at("is_logits");
  EXPECT_NEAR(InceptionScore(logits), Scalar("is_score"), 1e-6);
  EXPECT_NEAR(InceptionScore(logits, 10), Scalar("is_score_split10"), 1e-6);
}

TEST(LabelAgreement, CountsPredictionsEqualToTheAskedClass) {
  // Predictions 0, 1, 2, 2, 1 for labels 0, 1, 2, 0, 0: hits at 0, 1, 2.
  const torch::Tensor predicted = torch::tensor({0, 1, 2, 2, 1});
  const torch::Tensor logits = torch::one_hot(predicted, 4).to(torch::kFloat32);
  const torch::Tensor labels = torch::tensor({0, 1, 2, 0, 0});
  auto a = LabelAgreement(logits, labels, 4);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_DOUBLE_EQ(a->overall, 0.6);
  EXPECT_EQ(a->count, (std::vector<int64_t>{3, 1, 1, 0}));
  EXPECT_DOUBLE_EQ(a->per_class[0], 1.0 / 3);
  EXPECT_DOUBLE_EQ(a->per_class[1], 1.0);
  EXPECT_DOUBLE_EQ(a->per_class[2], 1.0);
  EXPECT_TRUE(std::isnan(a->per_class[3]));
  EXPECT_FALSE(LabelAgreement(logits, torch::tensor({0, 1, 2, 0, 4}), 4).ok());
  EXPECT_FALSE(LabelAgreement(logits, labels.narrow(0, 0, 4), 4).ok());
}

}  // namespace
}  // namespace gd::eval
