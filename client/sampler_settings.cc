#include "client/sampler_settings.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/engine/solver_order.h"
#include "core/status_macros.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

constexpr std::pair<absl::string_view, v1::SamplerKind> kSamplers[] = {
    {"ddpm", v1::SAMPLER_KIND_DDPM},
    {"ddim", v1::SAMPLER_KIND_DDIM},
    {"dpm++", v1::SAMPLER_KIND_DPM_SOLVER_PP},
};

constexpr std::pair<absl::string_view, v1::SkipType> kSkipTypes[] = {
    {"logSNR", v1::SKIP_TYPE_LOGSNR},
    {"time_uniform", v1::SKIP_TYPE_TIME_UNIFORM},
    {"time_quadratic", v1::SKIP_TYPE_TIME_QUADRATIC},
};

bool IsPositiveInteger(absl::string_view text) {
  uint32_t value = 0;
  return !text.empty() && absl::ascii_isdigit(static_cast<unsigned char>(text[0])) &&
         absl::SimpleAtoi(text, &value) && value > 0;
}

// The flags of the other samplers, refused with the one chosen.
absl::Status CheckNoForeignFlags(const SamplerSettings& settings, bool dpm_solver) {
  const std::string& sampler = settings.sampler;
  if (settings.eta != 0 && sampler != "ddim") {
    return absl::InvalidArgumentError(
        absl::StrCat("--eta = ", settings.eta, " needs --sampler ddim (", sampler, " has no eta)"));
  }
  if (dpm_solver) {
    if (!settings.timestep_respacing.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--timestep_respacing = \"", settings.timestep_respacing,
                       "\" does not apply to --sampler dpm++: give its model calls as --steps N"));
    }
    return absl::OkStatus();
  }
  const std::pair<absl::string_view, bool> dpm_only[] = {
      {"--steps", settings.steps != 0},
      {"--solver_order", settings.solver_order != 0},
      {"--skip_type", !settings.skip_type.empty()}};
  for (const auto& [flag, given] : dpm_only) {
    if (given) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " applies to --sampler dpm++ only; ", sampler,
                       " takes its steps from --timestep_respacing (e.g. 250, ddim25)"));
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyDpmSolverSettings(const SamplerSettings& settings, v1::SampleRequest& request) {
  if (settings.steps == 0) {
    return absl::InvalidArgumentError(
        "--sampler dpm++ needs --steps N: its model calls, e.g. 15 (10 to 20 is typical)");
  }
  if (settings.solver_order > kMaxSolverOrder) {
    return absl::InvalidArgumentError(absl::StrCat("--solver_order = ", settings.solver_order,
                                                   " is not 1, 2 or 3 (0 = the server's: ",
                                                   kDefaultSolverOrder, ")"));
  }
  request.set_steps(settings.steps);
  request.set_solver_order(settings.solver_order);
  if (settings.skip_type.empty()) return absl::OkStatus();
  for (const auto& [name, kind] : kSkipTypes) {
    if (absl::EqualsIgnoreCase(name, settings.skip_type)) {
      request.set_skip_type(kind);
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--skip_type = \"", settings.skip_type,
                   "\" is not one of logSNR, time_uniform, time_quadratic"));
}

absl::Status ApplyThresholding(const SamplerSettings& settings, v1::SampleRequest& request) {
  const double ratio = settings.dynamic_thresholding_ratio;
  if (!(ratio >= 0 && ratio <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("--dynamic_thresholding_ratio = ", ratio,
                                                   " is outside (0, 1] (0 = off; 0.995 is usual)"));
  }
  if (ratio > 0 && settings.clip_denoised == false) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--dynamic_thresholding_ratio = ", ratio,
        " corrects the predicted x_0, which --clip_denoised=false asks to leave alone"));
  }
  request.set_dynamic_thresholding_ratio(ratio);
  if (settings.clip_denoised.has_value()) {
    request.mutable_clip_denoised()->set_value(*settings.clip_denoised);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckRespacing(absl::string_view respacing) {
  if (respacing.empty()) return absl::OkStatus();
  bool valid = true;
  if (absl::StartsWith(respacing, "ddim")) {
    valid = IsPositiveInteger(respacing.substr(4));
  } else {
    for (absl::string_view section : absl::StrSplit(respacing, ',')) {
      valid &= IsPositiveInteger(section);
    }
  }
  if (valid) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("--timestep_respacing = \"", respacing,
                   "\" is not N, ddimN or N1,N2,... (e.g. 250, ddim25, 10,20,30)"));
}

absl::Status ApplySamplerSettings(const SamplerSettings& settings, v1::SampleRequest& request) {
  const auto* sampler =
      std::find_if(std::begin(kSamplers), std::end(kSamplers),
                   [&](const auto& entry) { return entry.first == settings.sampler; });
  if (sampler == std::end(kSamplers)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--sampler = \"", settings.sampler, "\" is not one of ddpm, ddim, dpm++"));
  }
  request.set_sampler(sampler->second);
  const bool dpm_solver = sampler->second == v1::SAMPLER_KIND_DPM_SOLVER_PP;
  if (!(settings.eta >= 0 && settings.eta <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("--eta = ", settings.eta, " is outside [0, 1]"));
  }
  RETURN_IF_ERROR(CheckNoForeignFlags(settings, dpm_solver));
  request.set_eta(settings.eta);
  if (dpm_solver) {
    if (absl::Status status = ApplyDpmSolverSettings(settings, request); !status.ok())
      return status;
  } else {
    if (absl::Status status = CheckRespacing(settings.timestep_respacing); !status.ok()) {
      return status;
    }
    request.set_timestep_respacing(settings.timestep_respacing);
  }
  return ApplyThresholding(settings, request);
}

std::string SamplerName(int kind) {
  if (kind == v1::SAMPLER_KIND_UNSPECIFIED) return "ddpm";
  for (const auto& [name, sampler] : kSamplers) {
    if (sampler == kind) return std::string(name);
  }
  return v1::SamplerKind_IsValid(kind) ? v1::SamplerKind_Name(static_cast<v1::SamplerKind>(kind))
                                       : absl::StrCat("sampler ", kind);
}

std::string DescribeRequest(const v1::SampleRequest& request) {
  const int64_t images = request.labels_size() > 0 ? request.labels_size() : request.num_samples();
  std::string sampler = SamplerName(request.sampler());
  std::string steps = absl::StrCat("\"", request.timestep_respacing(), "\"");
  if (request.sampler() == v1::SAMPLER_KIND_DPM_SOLVER_PP) {
    absl::StrAppend(&sampler, " order ", EffectiveSolverOrder(request.solver_order()));
    steps = absl::StrCat(request.steps());
  }
  return absl::StrFormat("model \"%s\", %d image%s, %s, steps %s, scale %g, seed %d",
                         request.model().empty() ? "(default)" : request.model(), images,
                         images == 1 ? "" : "s", sampler, steps, request.classifier_scale(),
                         request.seed());
}

}  // namespace gd::client
