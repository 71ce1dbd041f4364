// What callers hand the engine and what it gives back, in native types (decoded from the wire by
// server/codec.cc): a SampleJob in; StepUpdates and one JobResult (or an error) out.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/diffusion/dpm_solver.h"
#include "core/diffusion/sampling.h"

namespace gd {

struct SampleJob {
  std::string request_id;
  std::vector<int64_t> labels;   // one per image, or empty (then num_samples images)
  int64_t num_samples = 0;
  double classifier_scale = 0.0;  // 0 = no guidance
  SamplerKind sampler = SamplerKind::kDdpm;
  double eta = 0.0;                // DDIM only
  // DDPM/DDIM: "" = the model's own process (its flags' --timestep_respacing, else every step).
  std::string timestep_respacing;
  // DPM-Solver++ only: model calls (required), order (0 = 2) and time grid (unset = logSNR).
  int64_t steps = 0;
  int64_t solver_order = 0;
  std::optional<SkipType> skip_type;
  // Any sampler: > 0 replaces static clipping by dynamic thresholding with this ratio.
  double dynamic_thresholding_ratio = 0.0;
  uint64_t seed = 0;
  uint64_t first_image_index = 0;  // image i draws from stream (seed, first_image_index + i)
  bool clip_denoised = true;
  std::optional<torch::Tensor> noise;  // x_T [N x C x H x W], any float dtype, any device
  // Step events: every `stream_every` steps (and the last); 0 = no step events.
  int64_t stream_every = 0;
  bool stream_x_t = false;
  bool stream_pred_xstart = false;
  std::optional<std::chrono::steady_clock::time_point> deadline;

  int64_t num_images() const {
    return labels.empty() ? num_samples : static_cast<int64_t>(labels.size());
  }
};

struct StepUpdate {
  int64_t step = 0;         // 0 for the first denoising step
  int64_t total_steps = 0;
  // The networks' timestep at this step on the model's 0..T-1 scale: an integer for DDPM and
  // DDIM, fractional for DPM-Solver++.
  double timestep = 0;
  torch::Tensor x_t;        // float32 [N x C x H x W] on CPU, when asked: x after the step
  torch::Tensor pred_xstart;  // the corrected x_0 prediction of the step
  double elapsed_seconds = 0;  // since admission
};

struct JobResult {
  torch::Tensor samples;  // float32 [N x C x H x W] on CPU, clamped to [-1, 1]
  std::vector<int64_t> labels;
  int64_t steps = 0;
  double queue_seconds = 0;
  double sampling_seconds = 0;
};

}  // namespace gd
