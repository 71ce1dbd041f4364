// Test helpers: where the reference's parity fixtures are, how to load them, and the tolerance
// measure their README defines.
#pragma once

#include <map>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/engine/engine.h"
#include "core/nn/model_bundle.h"

namespace gd::testing {

// The repository root and the parity fixtures folder (GD_FIXTURES env var overrides).
std::string SourceDir();
std::string FixturesDir();
// fixtures/parity-64, or "" when absent.
std::string Parity64Dir();

// max over elements of |actual - expected| / max(1, |expected|): the fixtures README's measure.
double RelativeError(const torch::Tensor& actual, const torch::Tensor& expected);

// Relative error (TensorsClose) allowed between a request's results alone and batched with other
// requests in these deterministic tests. Stricter than what the service documents under load
// (5e-3 max abs, docs/api.md), which gd-load checks: batch composition changes which kernels run.
inline constexpr double kBatchTolerance = 1e-3;

// gtest assertion: same shape and RelativeError <= tolerance, with the error in the message.
// With GD_TEST_REPORT_ERRORS=1 every comparison also prints its error to stderr (how the
// half-precision parity errors in docs/benchmarks.md were measured).
::testing::AssertionResult TensorsClose(const torch::Tensor& actual,
                                        const torch::Tensor& expected, double tolerance);

// A fresh temporary directory (the caller removes it).
std::string TempDir(const std::string& tag);

// Submits `job` to `engine` and waits for its result (or the status it failed with).
absl::StatusOr<JobResult> SampleAndWait(Engine& engine, const SampleJob& job);

// fixtures/parity-64, read once per process: fixture.json, every tensor of tensors.pt, and the
// spec of its model ("parity") with or without its classifier. Call only when Parity64Dir() is
// not empty (GD_REQUIRE_PARITY_FIXTURES).
struct ParityFixture {
  nlohmann::json json;
  std::map<std::string, torch::Tensor> tensors;
  ModelSpec Spec(bool with_classifier = true) const;
  const torch::Tensor& operator[](const std::string& key) const { return tensors.at(key); }
};
const ParityFixture& Parity64();

// fixtures/dpm-64 (DPM-Solver++ golden samples on the parity-64 checkpoints), or "" when absent.
std::string Dpm64Dir();
// Its dpm_tensors.pt, read once. Call only when Dpm64Dir() is not empty.
const std::map<std::string, torch::Tensor>& Dpm64();

}  // namespace gd::testing

// Skips the test when the parity fixtures are not there.
#define GD_REQUIRE_PARITY_FIXTURES()                                                     \
  do {                                                                                   \
    if (::gd::testing::Parity64Dir().empty()) {                                          \
      GTEST_SKIP() << "parity fixtures not found at " << ::gd::testing::FixturesDir()    \
                   << "/parity-64 (set GD_FIXTURES to the folder holding parity-64/)";   \
    }                                                                                    \
  } while (0)

// Skips the test when the DPM-Solver++ fixtures (or the parity-64 checkpoints they use) are absent.
#define GD_REQUIRE_DPM_FIXTURES()                                                          \
  do {                                                                                     \
    GD_REQUIRE_PARITY_FIXTURES();                                                          \
    if (::gd::testing::Dpm64Dir().empty()) {                                               \
      GTEST_SKIP() << "DPM-Solver++ fixtures not found at " << ::gd::testing::FixturesDir() \
                   << "/dpm-64 (set GD_FIXTURES to the folder holding dpm-64/)";           \
    }                                                                                      \
  } while (0)
