// Timestep respacing strings ("250", "ddim25", "10,20,30"; a request's timestep_respacing):
// gd::SpaceTimesteps. The first two bytes choose the model's diffusion steps (1 to 65536), the
// rest is the string. Beyond not crashing, the steps kept are strictly increasing and within
// [0, steps), and "ddimN" keeps exactly N.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/diffusion/schedule.h"
#include "fuzz/fuzzing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int64_t num_timesteps = 1 + (data[0] | (data[1] << 8));
  const std::string spec(reinterpret_cast<const char*>(data) + 2, size - 2);
  absl::StatusOr<std::vector<int64_t>> steps = gd::SpaceTimesteps(num_timesteps, spec);
  if (!steps.ok()) return 0;
  const std::string what = absl::StrCat("\"", spec, "\" of ", num_timesteps, " steps");
  for (size_t i = 0; i < steps->size(); ++i) {
    GD_FUZZ_CHECK((*steps)[i] >= 0 && (*steps)[i] < num_timesteps, what);
    GD_FUZZ_CHECK(i == 0 || (*steps)[i - 1] < (*steps)[i], what);
  }
  int64_t ddim_count = 0;
  if (absl::StartsWith(spec, "ddim") && absl::SimpleAtoi(spec.substr(4), &ddim_count)) {
    GD_FUZZ_CHECK(static_cast<int64_t>(steps->size()) == ddim_count, what);
  }
  return 0;
}
