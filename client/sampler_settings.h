// The sampler part of a SampleRequest as the gd CLI's flags give it (--sampler, --eta,
// --timestep_respacing, --steps, --solver_order, --skip_type, --dynamic_thresholding_ratio,
// --clip_denoised), checked before any call: values out of range and flags the chosen sampler
// cannot use are usage errors that name the flag, the value and what is allowed. The server checks
// the same again (docs/api.md); finding out here never costs a sampling run.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "guided_diffusion/v1/sampler.pb.h"

namespace gd::client {

struct SamplerSettings {
  std::string sampler = "ddpm";    // ddpm, ddim or dpm++
  double eta = 0;                  // ddim only
  std::string timestep_respacing;  // ddpm and ddim: "250", "ddim25", "10,20,30"; "" = every step
  uint32_t steps = 0;              // dpm++ only, required: model calls
  uint32_t solver_order = 0;       // dpm++ only: 1, 2 or 3; 0 = the server's default (2)
  std::string skip_type;           // dpm++ only: logSNR, time_uniform, time_quadratic; "" = logSNR
  double dynamic_thresholding_ratio = 0;  // any sampler: in (0, 1]; 0 = off
  std::optional<bool> clip_denoised;      // unset = the server's default (true)
};

// Sets the sampler fields of `request` from `settings`; InvalidArgument for bad or contradictory
// values (e.g. --eta with ddpm or dpm++, --steps with ddpm or ddim, --timestep_respacing with
// dpm++, --dynamic_thresholding_ratio with --clip_denoised=false).
absl::Status ApplySamplerSettings(const SamplerSettings& settings,
                                  guided_diffusion::v1::SampleRequest& request);

// The CLI's name of a sampler kind: "ddpm", "ddim", "dpm++" (or the enum's name when unknown).
std::string SamplerName(int kind);

// A request in one line, for logs and reports:
// model "m", 2 images, dpm++ order 2, steps 15, scale 3, seed 7 (ddpm and ddim: steps "ddim25").
std::string DescribeRequest(const guided_diffusion::v1::SampleRequest& request);

// The reference's respacing forms: "", "250", "ddim25", "10,20,30"; InvalidArgument otherwise.
absl::Status CheckRespacing(absl::string_view respacing);

}  // namespace gd::client
