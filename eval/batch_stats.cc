#include "eval/batch_stats.h"

#include <cstring>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "core/io/npy.h"
#include "core/status_macros.h"
#include "eval/speckle.h"

namespace gd::eval {
namespace {

torch::Tensor StringTensor(const std::string& text) {
  torch::Tensor t = torch::empty({static_cast<int64_t>(text.size())}, torch::kUInt8);
  std::memcpy(t.data_ptr<uint8_t>(), text.data(), text.size());
  return t;
}

std::string TensorString(const torch::Tensor& t) {
  const torch::Tensor bytes = t.to(torch::kUInt8).contiguous();
  return std::string(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()),
                     static_cast<size_t>(bytes.numel()));
}

absl::StatusOr<torch::Tensor> Member(const std::map<std::string, torch::Tensor>& members,
                                     const std::string& name, const std::string& path) {
  auto it = members.find(name);
  if (it == members.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " has no \"", name,
                     "\": not a gd-eval statistics file (write one with gd-eval "
                     "stats)"));
  }
  return it->second;
}

std::string ClassName(const Evaluator& evaluator, int64_t c) {
  const auto& names = evaluator.spec().class_names;
  return c < static_cast<int64_t>(names.size()) ? names[c] : absl::StrCat(c);
}

}  // namespace

absl::StatusOr<BatchStats> ComputeStats(const Evaluator& evaluator, const ImageDataset& data) {
  ASSIGN_OR_RETURN(Features features, evaluator.Compute(data.images));
  BatchStats stats;
  stats.description = data.description;
  stats.evaluator = evaluator.fingerprint();
  ASSIGN_OR_RETURN(stats.pool, FitGaussian(features.pool));
  ASSIGN_OR_RETURN(stats.spatial, FitGaussian(features.spatial));
  stats.pool_features = features.pool;
  stats.logits = features.logits;
  if (data.has_labels) stats.labels = data.labels;
  ASSIGN_OR_RETURN(stats.high_frequency, HighFrequencyRatios(data.images));
  return stats;
}

absl::Status WriteStats(const std::string& path, const BatchStats& stats) {
  std::vector<std::pair<std::string, torch::Tensor>> arrays = {
      {"mu", stats.pool.mu},
      {"sigma", stats.pool.sigma},
      {"mu_s", stats.spatial.mu},
      {"sigma_s", stats.spatial.sigma},
      {"pool", stats.pool_features},
      {"logits", stats.logits},
      {"evaluator", StringTensor(stats.evaluator)},
      {"description", StringTensor(stats.description)},
  };
  if (stats.labels.defined()) arrays.emplace_back("labels", stats.labels);
  if (stats.high_frequency.defined()) arrays.emplace_back("high_frequency", stats.high_frequency);
  return WriteNpz(path, arrays);
}

namespace {

absl::StatusOr<BatchStats> StatsFromMembers(const std::map<std::string, torch::Tensor>& members,
                                            const std::string& path) {
  BatchStats stats;
  ASSIGN_OR_RETURN(stats.pool.mu, Member(members, "mu", path));
  ASSIGN_OR_RETURN(stats.pool.sigma, Member(members, "sigma", path));
  ASSIGN_OR_RETURN(stats.spatial.mu, Member(members, "mu_s", path));
  ASSIGN_OR_RETURN(stats.spatial.sigma, Member(members, "sigma_s", path));
  ASSIGN_OR_RETURN(stats.pool_features, Member(members, "pool", path));
  ASSIGN_OR_RETURN(stats.logits, Member(members, "logits", path));
  ASSIGN_OR_RETURN(torch::Tensor evaluator, Member(members, "evaluator", path));
  ASSIGN_OR_RETURN(torch::Tensor description, Member(members, "description", path));
  stats.evaluator = TensorString(evaluator);
  stats.description = TensorString(description);
  if (auto it = members.find("labels"); it != members.end()) stats.labels = it->second;
  if (auto it = members.find("high_frequency"); it != members.end()) {
    stats.high_frequency = it->second;
  }
  if (stats.pool_features.dim() != 2 || stats.logits.dim() != 2 ||
      stats.logits.size(0) != stats.pool_features.size(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": pool and logits must be [N x D] and [N x C] of one N"));
  }
  if (stats.high_frequency.defined() &&
      (stats.high_frequency.dim() != 1 || stats.high_frequency.size(0) != stats.num_images())) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": high_frequency must be [N], one ratio per image"));
  }
  return stats;
}

}  // namespace

absl::StatusOr<BatchStats> ReadStats(const std::string& path) {
  ASSIGN_OR_RETURN(auto list, ReadNpz(path));
  return StatsFromMembers({list.begin(), list.end()}, path);
}

absl::StatusOr<BatchStats> LoadBatch(const Evaluator& evaluator, const std::string& path,
                                     const std::string& split, int64_t limit) {
  if (std::filesystem::is_regular_file(path)) {
    ASSIGN_OR_RETURN(auto list, ReadNpz(path));
    const std::map<std::string, torch::Tensor> members(list.begin(), list.end());
    if (members.count("mu") > 0) return StatsFromMembers(members, path);
  }
  ASSIGN_OR_RETURN(ImageDataset data, LoadDataset(path, split));
  if (limit > 0 && limit < data.images.size(0)) {
    data.images = data.images.narrow(0, 0, limit);
    data.labels = data.labels.narrow(0, 0, limit);
    data.description = absl::StrCat(data.description, ", the first ", limit);
  }
  return ComputeStats(evaluator, data);
}

absl::StatusOr<Scores> Score(const Evaluator& evaluator, const BatchStats& reference,
                             const BatchStats& samples) {
  for (const BatchStats* batch : {&reference, &samples}) {
    if (batch->evaluator != evaluator.fingerprint()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the statistics of ", batch->description, " come from evaluator ", batch->evaluator,
          ", this run's is ", evaluator.fingerprint(),
          ": features of different networks are not comparable; recompute them with gd-eval "
          "stats"));
    }
  }
  Scores s;
  s.reference = reference.description;
  s.samples = samples.description;
  s.evaluator = evaluator.fingerprint();
  s.evaluator_test_accuracy = evaluator.spec().test_accuracy;
  s.num_samples = samples.num_images();
  s.num_reference = reference.num_images();
  ASSIGN_OR_RETURN(s.fid, FrechetDistance(samples.pool, reference.pool));
  ASSIGN_OR_RETURN(s.sfid, FrechetDistance(samples.spatial, reference.spatial));
  s.inception_score = InceptionScore(samples.logits);
  ASSIGN_OR_RETURN(PrecisionRecall pr,
                   ComputePrecisionRecall(reference.pool_features, samples.pool_features));
  s.precision = pr.precision;
  s.recall = pr.recall;
  if (reference.high_frequency.defined() && samples.high_frequency.defined()) {
    ASSIGN_OR_RETURN(s.speckled,
                     SpeckledFraction(reference.high_frequency, samples.high_frequency));
  }
  if (samples.labels.defined()) {
    const int64_t num_classes = evaluator.config().num_classes;
    ASSIGN_OR_RETURN(Agreement agreement,
                     LabelAgreement(samples.logits, samples.labels, num_classes));
    s.agreement = agreement.overall;
    for (int64_t c = 0; c < num_classes; ++c) {
      s.per_class.push_back({ClassName(evaluator, c), agreement.count[c], agreement.per_class[c]});
    }
  }
  return s;
}

}  // namespace gd::eval
