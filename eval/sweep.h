// gd-eval sweep: the guidance trade-off curve of a served model (the paper's Table 4 / Figure 4).
// For every sampler and classifier scale asked for, it draws N samples with balanced labels from
// a running gd-server, keeps them as an .npz (the reference's layout), scores them against a
// reference with gd-eval's metrics, and rewrites sweep.csv, sweep.md and sweep.json in the
// output folder after every point. Points whose .npz is already complete are scored, not drawn
// again, so an interrupted sweep resumes where it stopped.
//
// Every point uses the same seed: image i is drawn from noise stream (seed, i) (first_image_index
// per request), so the points differ by their sampler and scale only, not by their noise.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/gd_client.h"
#include "eval/batch_stats.h"
#include "eval/evaluator.h"
#include "eval/scores.h"

namespace gd::eval {

// One sampler setting: "ddim:ddim50" (DDIM, respacing ddim50), "ddpm:250", "dpm++:20" (steps).
struct SamplerPoint {
  std::string sampler;  // ddim, ddpm or dpm++
  std::string steps;    // the respacing (ddim, ddpm) or the step count (dpm++)
};
// "ddim:ddim50,ddpm:250": an error names a malformed item and the samplers known.
absl::StatusOr<std::vector<SamplerPoint>> ParseSamplerPoints(const std::string& text);

struct SweepOptions {
  std::string model;  // "" = the server's default model
  std::vector<SamplerPoint> samplers;
  std::vector<double> scales;
  int64_t num_samples = 2000;
  int64_t concurrency = 4;  // requests in flight
  uint64_t seed = 0;
  std::string out_dir;
  // Real images scored the same way as the first row, the ceiling ("" = none): LoadBatch's forms,
  // its `real_split`, the first num_samples images.
  std::string real_data;
  std::string real_split = "train";
};

// Draws `count` images for `point` at `scale` (labels 0, 1, ..., C-1 cycling) in requests of at
// most the model's max_images_per_request, `concurrency` at a time, retrying UNAVAILABLE and
// RESOURCE_EXHAUSTED a few times, and writes them to `path` (arr_0 uint8 [N, H, W, C], arr_1
// int64 labels). Returns the seconds it took.
absl::StatusOr<double> DrawSamples(client::SamplerClient& client, const SweepOptions& options,
                                   const SamplerPoint& point, double scale,
                                   const std::string& path);

absl::StatusOr<std::vector<SweepRow>> RunSweep(client::SamplerClient& client,
                                               const SweepOptions& options,
                                               const Evaluator& evaluator,
                                               const BatchStats& reference);

}  // namespace gd::eval
