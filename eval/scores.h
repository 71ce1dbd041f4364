// What gd-eval reports for one sample batch against a reference, and its renderings: the
// human-readable table, JSON, and the rows of a sweep's CSV and Markdown tables. Plain values,
// no tensors: the sweep and the command line share it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace gd::eval {

struct ClassAgreement {
  std::string name;  // the evaluator's class name, or the index as text
  int64_t count = 0;
  double agreement = 0;  // NaN when count is 0
};

struct Scores {
  std::string samples;    // what was scored: a path and its description
  std::string reference;  // the reference batch's description
  std::string evaluator;  // the evaluator's fingerprint ("name:crc32")
  double evaluator_test_accuracy = 0;
  int64_t num_samples = 0;
  int64_t num_reference = 0;
  double fid = 0;
  double sfid = 0;
  double inception_score = 0;
  double precision = 0;
  double recall = 0;
  // Samples whose high-frequency ratio exceeds 99% of the reference's (eval/speckle.h); absent
  // when either batch is statistics cached without the ratios.
  std::optional<double> speckled;
  // When the samples carry labels (arr_1): the fraction the evaluator classifies as their label.
  std::optional<double> agreement;
  std::vector<ClassAgreement> per_class;
};

// The table gd-eval prints: one metric per line, then agreement per class.
std::string FormatTable(const Scores& scores);
nlohmann::json ToJson(const Scores& scores);

// A sweep's rows: one point (sampler, scale) and its scores.
struct SweepRow {
  std::string sampler;  // "ddim", "ddpm", "dpm++", or "real" for the ceiling row
  std::string steps;    // the respacing or step count ("ddim50", "250", "20")
  double classifier_scale = 0;
  double seconds = 0;  // sampling wall time
  Scores scores;
};
std::string SweepCsv(const std::vector<SweepRow>& rows);
std::string SweepMarkdown(const std::vector<SweepRow>& rows);

}  // namespace gd::eval
