// Beta schedules and timestep respacing (gaussian_diffusion.py get_named_beta_schedule,
// respace.py space_timesteps). Pure float64 arithmetic on std::vector: no tensors, no threads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gd {

// Betas of a named schedule for `num_diffusion_timesteps` steps, in float64.
//   "linear": Ho et al.'s 1e-4..0.02, scaled by 1000 / T so that any T keeps the same shape.
//   "cosine": Nichol & Dhariwal 2021, alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2),
//             betas clipped at 0.999.
absl::StatusOr<std::vector<double>> NamedBetaSchedule(const std::string& name,
                                                      int64_t num_diffusion_timesteps);

// Discretises a cumulative alpha_bar function on [0, 1] into T betas, each at most max_beta.
std::vector<double> BetasForAlphaBar(int64_t num_diffusion_timesteps, double (*alpha_bar)(double),
                                     double max_beta = 0.999);

// The sorted set of original timesteps kept by a respacing spec, as the reference reads it:
//   ""            -> every step;
//   "250"         -> 250 steps strided evenly over [0, T);
//   "10,20,30"    -> T split into 3 equal sections, 10, 20 and 30 steps taken in each;
//   "ddim25"      -> the DDIM paper's fixed integer stride giving exactly 25 steps.
// Errors name the spec and why it cannot be honoured (a section smaller than its count, no
// integer stride for ddimN, a non-number).
absl::StatusOr<std::vector<int64_t>> SpaceTimesteps(int64_t num_timesteps, const std::string& spec);

}  // namespace gd
