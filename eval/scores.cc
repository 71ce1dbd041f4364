#include "eval/scores.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gd::eval {
namespace {

// JSON has no NaN: a class nobody asked for has agreement null.
nlohmann::json NumberOrNull(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

std::string OptionalText(const std::optional<double>& value) {
  return value ? absl::StrFormat("%.4f", *value) : std::string("");
}

nlohmann::json OptionalJson(const std::optional<double>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

}  // namespace

std::string FormatTable(const Scores& s) {
  std::string out = absl::StrFormat(
      "samples    %s (%d images)\nreference  %s (%d images)\nevaluator  %s (test accuracy "
      "%.4f); numbers in its feature space, not comparable with Inception-V3 (ImageNet) ones\n\n",
      s.samples, s.num_samples, s.reference, s.num_reference, s.evaluator,
      s.evaluator_test_accuracy);
  absl::StrAppendFormat(&out, "%-12s %10s\n", "metric", "value");
  absl::StrAppendFormat(&out, "%-12s %10.3f\n", "FID", s.fid);
  absl::StrAppendFormat(&out, "%-12s %10.3f\n", "sFID", s.sfid);
  absl::StrAppendFormat(&out, "%-12s %10.3f\n", "IS", s.inception_score);
  absl::StrAppendFormat(&out, "%-12s %10.4f\n", "precision", s.precision);
  absl::StrAppendFormat(&out, "%-12s %10.4f\n", "recall", s.recall);
  if (s.speckled) {
    absl::StrAppendFormat(&out, "%-12s %10.4f   (above the reference's 99th percentile of "
                          "high-frequency energy)\n", "speckled", *s.speckled);
  } else {
    absl::StrAppend(&out,
                    "speckled     (statistics cached before gd-eval computed it: rerun gd-eval "
                    "stats)\n");
  }
  if (!s.agreement) {
    absl::StrAppend(&out, "agreement    (the samples have no labels)\n");
    return out;
  }
  absl::StrAppendFormat(&out, "%-12s %10.4f\n\n", "agreement", *s.agreement);
  absl::StrAppendFormat(&out, "%-3s %-14s %7s %10s\n", "", "class", "samples", "agreement");
  for (size_t c = 0; c < s.per_class.size(); ++c) {
    const ClassAgreement& a = s.per_class[c];
    absl::StrAppendFormat(&out, "%-3d %-14s %7d %10s\n", c, a.name, a.count,
                          a.count > 0 ? absl::StrFormat("%.4f", a.agreement) : "-");
  }
  return out;
}

nlohmann::json ToJson(const Scores& s) {
  nlohmann::json j = {
      {"samples", s.samples},
      {"reference", s.reference},
      {"evaluator", s.evaluator},
      {"evaluator_test_accuracy", s.evaluator_test_accuracy},
      {"num_samples", s.num_samples},
      {"num_reference", s.num_reference},
      {"fid", s.fid},
      {"sfid", s.sfid},
      {"inception_score", s.inception_score},
      {"precision", s.precision},
      {"recall", s.recall},
      {"speckled", OptionalJson(s.speckled)},
      {"agreement", OptionalJson(s.agreement)},
  };
  nlohmann::json per_class = nlohmann::json::array();
  for (const ClassAgreement& a : s.per_class) {
    per_class.push_back(
        {{"class", a.name}, {"count", a.count}, {"agreement", NumberOrNull(a.agreement)}});
  }
  j["per_class"] = per_class;
  return j;
}

std::string SweepCsv(const std::vector<SweepRow>& rows) {
  std::string out =
      "sampler,steps,classifier_scale,num_samples,fid,sfid,inception_score,precision,recall,"
      "agreement,speckled,sampling_seconds\n";
  for (const SweepRow& r : rows) {
    const Scores& s = r.scores;
    absl::StrAppendFormat(&out, "%s,%s,%g,%d,%.4f,%.4f,%.4f,%.4f,%.4f,%s,%s,%.1f\n", r.sampler,
                          r.steps, r.classifier_scale, s.num_samples, s.fid, s.sfid,
                          s.inception_score, s.precision, s.recall, OptionalText(s.agreement),
                          OptionalText(s.speckled), r.seconds);
  }
  return out;
}

std::string SweepMarkdown(const std::vector<SweepRow>& rows) {
  std::string out =
      "| sampler | steps | scale | samples | FID | sFID | IS | precision | recall | agreement | "
      "speckled | sampling s |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
      "---: | ---: | ---: |\n";
  for (const SweepRow& r : rows) {
    const Scores& s = r.scores;
    absl::StrAppendFormat(
        &out, "| %s | %s | %g | %d | %.2f | %.2f | %.2f | %.3f | %.3f | %s | %s | %.0f |\n",
        r.sampler, r.steps, r.classifier_scale, s.num_samples, s.fid, s.sfid, s.inception_score,
        s.precision, s.recall, OptionalText(s.agreement), OptionalText(s.speckled), r.seconds);
  }
  return out;
}

}  // namespace gd::eval
