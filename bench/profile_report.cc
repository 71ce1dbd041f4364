#include "bench/profile_report.h"

#include <algorithm>
#include <array>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace gd::bench {
namespace {

// The engine's scopes, as columns; every other scope goes to the last column.
constexpr std::array<const char*, 4> kPhaseScopes = {
    "gd::unet::forward", "gd::classifier::forward", "gd::classifier::input_gradient",
    "gd::engine::update"};
constexpr std::array<const char*, 5> kPhaseTitles = {"UNet fwd", "clf fwd", "input grad", "update",
                                                     "rest"};
constexpr size_t kPhases = kPhaseTitles.size();

size_t PhaseColumn(const std::string& scope) {
  for (size_t i = 0; i < kPhaseScopes.size(); ++i) {
    if (scope == kPhaseScopes[i]) return i;
  }
  return kPhases - 1;
}

// The profile folded into classes x phases, per step.
struct Folded {
  std::array<std::array<double, kPhases>, kOpClassCount> ms{};  // per step
  std::array<double, kOpClassCount> gflop{};                    // per step
  std::array<double, kPhases> phase_ms{};
  double total_ms = 0;
  double total_gflop = 0;
};

Folded Fold(const ProfileRun& run, const OpProfile::Table& table) {
  Folded f;
  const double per_step = 1.0 / static_cast<double>(std::max<int64_t>(1, run.steps));
  for (const auto& [scope, classes] : table) {
    const size_t column = PhaseColumn(scope);
    for (int c = 0; c < kOpClassCount; ++c) {
      const double ms = 1e3 * classes[static_cast<size_t>(c)].seconds * per_step;
      const double gflop = 1e-9 * static_cast<double>(classes[static_cast<size_t>(c)].flops) * per_step;
      f.ms[static_cast<size_t>(c)][column] += ms;
      f.gflop[static_cast<size_t>(c)] += gflop;
      f.phase_ms[column] += ms;
      f.total_ms += ms;
      f.total_gflop += gflop;
    }
  }
  return f;
}

double RowMs(const Folded& f, int c) {
  double sum = 0;
  for (double v : f.ms[static_cast<size_t>(c)]) sum += v;
  return sum;
}

// GFLOP/s and percent of peak of `gflop` done in `ms`, or empty cells when no FLOPs are counted.
std::pair<std::string, std::string> Rate(double gflop, double ms, double peak) {
  if (gflop <= 0 || ms <= 0) return {"", ""};
  const double rate = gflop / (ms / 1e3);
  return {absl::StrFormat("%.1f", rate), peak > 0 ? absl::StrFormat("%.1f%%", 100 * rate / peak) : ""};
}

std::string Header(const ProfileRun& run, const Folded& f) {
  const double step_ms = 1e3 * run.seconds / static_cast<double>(std::max<int64_t>(1, run.steps));
  const auto [rate, of_peak] = Rate(f.total_gflop, step_ms, run.peak_gflops);
  return absl::StrFormat(
      "%s: %d steps in %.2f s, %.1f ms/step (%.1f ms/step inside operators), %.3f GFLOP/step, "
      "%s GFLOP/s = %s of the %.1f GFLOP/s matrix-product peak",
      run.title, run.steps, run.seconds, step_ms, f.total_ms, f.total_gflop, rate, of_peak,
      run.peak_gflops);
}

// The table as cells: a header row, one row per class that took time, and the phases' totals.
std::vector<std::vector<std::string>> Cells(const ProfileRun& run, const Folded& f) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"ms/step"});
  rows[0].insert(rows[0].end(), kPhaseTitles.begin(), kPhaseTitles.end());
  rows[0].insert(rows[0].end(), {"total", "share", "GFLOP/step", "GFLOP/s", "of peak"});
  for (int c = 0; c < kOpClassCount; ++c) {
    const double row_ms = RowMs(f, c);
    if (row_ms <= 0) continue;
    std::vector<std::string> row = {std::string(ToString(static_cast<OpClass>(c)))};
    for (double v : f.ms[static_cast<size_t>(c)]) row.push_back(absl::StrFormat("%.2f", v));
    const double gflop = f.gflop[static_cast<size_t>(c)];
    const auto [rate, of_peak] = Rate(gflop, row_ms, run.peak_gflops);
    row.insert(row.end(), {absl::StrFormat("%.2f", row_ms),
                           absl::StrFormat("%.1f%%", 100 * row_ms / f.total_ms),
                           gflop > 0 ? absl::StrFormat("%.3f", gflop) : "", rate, of_peak});
    rows.push_back(std::move(row));
  }
  std::vector<std::string> all = {"all"};
  for (double v : f.phase_ms) all.push_back(absl::StrFormat("%.2f", v));
  all.insert(all.end(), {absl::StrFormat("%.2f", f.total_ms), "",
                         absl::StrFormat("%.3f", f.total_gflop), "", ""});
  rows.push_back(std::move(all));
  return rows;
}

// Aligned text: the first column left-aligned, the others right-aligned, each as wide as its
// widest cell.
std::string RenderText(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    absl::StrAppendFormat(&out, "  %-*s", static_cast<int>(widths[0]), row[0]);
    for (size_t i = 1; i < row.size(); ++i) {
      absl::StrAppendFormat(&out, "  %*s", static_cast<int>(std::max<size_t>(widths[i], 8)), row[i]);
    }
    out += "\n";
  }
  return out;
}

std::string RenderMarkdown(const std::vector<std::vector<std::string>>& rows) {
  std::string out;
  for (size_t r = 0; r < rows.size(); ++r) {
    absl::StrAppend(&out, "| ", absl::StrJoin(rows[r], " | "), " |\n");
    if (r != 0) continue;
    absl::StrAppend(&out, "| --- |");
    for (size_t i = 1; i < rows[0].size(); ++i) absl::StrAppend(&out, " --: |");
    absl::StrAppend(&out, "\n");
  }
  return out;
}

// The `count` operators that took the most time, with their phase, per step.
std::vector<std::vector<std::string>> OperatorCells(const ProfileRun& run,
                                                    const std::vector<OpProfile::Operator>& ops,
                                                    size_t count) {
  const double per_step = 1.0 / static_cast<double>(std::max<int64_t>(1, run.steps));
  double total = 0;
  for (const auto& op : ops) total += op.stats.seconds;
  std::vector<std::vector<std::string>> rows = {
      {"operator", "phase", "class", "calls/step", "ms/step", "share"}};
  for (size_t i = 0; i < std::min(count, ops.size()); ++i) {
    const OpProfile::Operator& op = ops[i];
    const size_t column = PhaseColumn(op.phase);
    rows.push_back({op.name, column + 1 < kPhases ? kPhaseTitles[column] : op.phase,
                    std::string(ToString(ClassifyOperator(op.name))),
                    absl::StrFormat("%.1f", static_cast<double>(op.stats.calls) * per_step),
                    absl::StrFormat("%.2f", 1e3 * op.stats.seconds * per_step),
                    absl::StrFormat("%.1f%%", total > 0 ? 100 * op.stats.seconds / total : 0.0)});
  }
  return rows;
}

}  // namespace

std::string FormatProfileText(const ProfileRun& run, const OpProfile::Table& table) {
  const Folded f = Fold(run, table);
  return Header(run, f) + "\n" + RenderText(Cells(run, f));
}

std::string FormatProfileMarkdown(const ProfileRun& run, const OpProfile::Table& table) {
  const Folded f = Fold(run, table);
  return absl::StrCat("**", Header(run, f), "**\n\n", RenderMarkdown(Cells(run, f)));
}

std::string FormatTopOperatorsText(const ProfileRun& run,
                                   const std::vector<OpProfile::Operator>& operators, size_t count) {
  return absl::StrCat("The ", std::min(count, operators.size()),
                      " operators that took the most time (exclusive):\n",
                      RenderText(OperatorCells(run, operators, count)));
}

std::string FormatTopOperatorsMarkdown(const ProfileRun& run,
                                       const std::vector<OpProfile::Operator>& operators,
                                       size_t count) {
  return RenderMarkdown(OperatorCells(run, operators, count));
}

}  // namespace gd::bench
