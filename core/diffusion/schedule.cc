#include "core/diffusion/schedule.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"

namespace gd {
namespace {

double CosineAlphaBar(double t) {
  const double v = std::cos((t + 0.008) / 1.008 * M_PI / 2);
  return v * v;
}

absl::StatusOr<int64_t> ParseCount(absl::string_view text, const std::string& spec) {
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value) || value < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "timestep_respacing \"", spec, "\": \"", text,
        "\" is not a step count (expected \"N\", \"N1,N2,...\" or \"ddimN\")"));
  }
  return value;
}

}  // namespace

std::vector<double> BetasForAlphaBar(int64_t num_diffusion_timesteps, double (*alpha_bar)(double),
                                     double max_beta) {
  std::vector<double> betas;
  betas.reserve(num_diffusion_timesteps);
  for (int64_t i = 0; i < num_diffusion_timesteps; ++i) {
    const double t1 = static_cast<double>(i) / num_diffusion_timesteps;
    const double t2 = static_cast<double>(i + 1) / num_diffusion_timesteps;
    betas.push_back(std::min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta));
  }
  return betas;
}

absl::StatusOr<std::vector<double>> NamedBetaSchedule(const std::string& name,
                                                      int64_t num_diffusion_timesteps) {
  if (num_diffusion_timesteps < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "diffusion_steps = ", num_diffusion_timesteps, " must be at least 1"));
  }
  if (name == "linear") {
    const double scale = 1000.0 / num_diffusion_timesteps;
    const double beta_start = scale * 0.0001;
    const double beta_end = scale * 0.02;
    std::vector<double> betas(num_diffusion_timesteps);
    // np.linspace: start + i * step, with the last point exactly the end.
    const int64_t n = num_diffusion_timesteps;
    if (n == 1) {
      betas[0] = beta_start;
    } else {
      const double step = (beta_end - beta_start) / static_cast<double>(n - 1);
      for (int64_t i = 0; i < n; ++i) betas[i] = beta_start + static_cast<double>(i) * step;
      betas[n - 1] = beta_end;
    }
    return betas;
  }
  if (name == "cosine") return BetasForAlphaBar(num_diffusion_timesteps, &CosineAlphaBar);
  return absl::InvalidArgumentError(
      absl::StrCat("noise_schedule \"", name, "\" is unknown (allowed: linear, cosine)"));
}

absl::StatusOr<std::vector<int64_t>> SpaceTimesteps(int64_t num_timesteps,
                                                    const std::string& spec) {
  if (spec.empty()) {
    std::vector<int64_t> all(num_timesteps);
    for (int64_t i = 0; i < num_timesteps; ++i) all[i] = i;
    return all;
  }
  absl::string_view rest = spec;
  if (absl::ConsumePrefix(&rest, "ddim")) {
    ASSIGN_OR_RETURN(auto desired, ParseCount(rest, spec));
    for (int64_t stride = 1; stride < num_timesteps; ++stride) {
      if ((num_timesteps + stride - 1) / stride == desired) {
        std::vector<int64_t> steps;
        for (int64_t t = 0; t < num_timesteps; t += stride) steps.push_back(t);
        return steps;
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("timestep_respacing \"", spec, "\": cannot create exactly ", desired,
                     " steps from ", num_timesteps, " with an integer stride"));
  }
  std::vector<int64_t> section_counts;
  for (absl::string_view part : absl::StrSplit(spec, ',')) {
    ASSIGN_OR_RETURN(auto count, ParseCount(part, spec));
    section_counts.push_back(count);
  }
  const int64_t sections = static_cast<int64_t>(section_counts.size());
  const int64_t size_per = num_timesteps / sections;
  const int64_t extra = num_timesteps % sections;
  int64_t start_idx = 0;
  std::set<int64_t> all_steps;
  for (int64_t i = 0; i < sections; ++i) {
    const int64_t size = size_per + (i < extra ? 1 : 0);
    const int64_t count = section_counts[i];
    if (size < count) {
      return absl::InvalidArgumentError(
          absl::StrCat("timestep_respacing \"", spec, "\": cannot divide section ", i, " of ",
                       size, " steps into ", count));
    }
    const double frac_stride =
        count <= 1 ? 1.0 : static_cast<double>(size - 1) / static_cast<double>(count - 1);
    double cur_idx = 0.0;
    for (int64_t k = 0; k < count; ++k) {
      // Python's round() is round-half-to-even, as is std::nearbyint in the default mode.
      all_steps.insert(start_idx + static_cast<int64_t>(std::nearbyint(cur_idx)));
      cur_idx += frac_stride;
    }
    start_idx += size;
  }
  if (all_steps.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("timestep_respacing \"", spec, "\" keeps no steps"));
  }
  return std::vector<int64_t>(all_steps.begin(), all_steps.end());
}

}  // namespace gd
