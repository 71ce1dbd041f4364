// Many samples in one call: N images split into requests of at most K images, `concurrency` of
// them in flight at once, retried with backoff when the server is unavailable or its queue is
// full, and (with an .npz path) kept on disk as they finish so that an interrupted run resumes
// where it stopped (run_state.h). What the reference's classifier_sample.py --num_samples
// --batch_size does, over the service:
//
//   gd::client::BulkSampleOptions options;
//   options.base.set_classifier_scale(3);                 // every setting but the images
//   options.num_images = 5000;
//   options.label_choice = gd::client::LabelChoice::kBalanced;
//   options.npz_path = "samples.npz";                     // arr_0 uint8 NHWC, arr_1 int64 labels
//   absl::StatusOr<gd::client::BulkResult> result = gd::client::BulkSample(*client, options,
//       [](const gd::client::BulkProgress& p) { ... });   // on the calling thread
//
// Image i of the run is requested with first_image_index = i (and the run's seed), so it draws
// from the server's stream (seed, i): the images do not depend on K, on the concurrency, on
// retries or on resuming. Labels are the caller's, or balanced (image i gets class i mod C), or
// random (RandomLabels: a function of the seed and i). Torch-free, like the rest of the client.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/gd_client.h"
#include "client/sample_set.h"
#include "core/io/formats/formats.h"

namespace gd::client {

// Requests per run kept in flight at once, at most.
inline constexpr int kMaxConcurrency = 64;
// K when neither the caller nor the server (ModelInfo.max_images_per_request = 0) says.
inline constexpr int64_t kFallbackImagesPerRequest = 16;

enum class LabelChoice {
  kGiven,     // BulkSampleOptions.labels: one per image, or none for unlabelled images
  kBalanced,  // image i: class i mod C (C = the model's num_classes)
  kRandom,    // image i: RandomLabels(seed, ...)[i]
};

// Retries of one request that failed with UNAVAILABLE or RESOURCE_EXHAUSTED (other codes fail the
// run at once). Before retry r (1-based) the request waits initial_backoff_ms * 2^(r - 1), at most
// max_backoff_ms, times a random factor in [0.75, 1.25] so that the requests of a run (and of
// several clients) do not come back in step.
struct RetryPolicy {
  int max_retries = 5;
  int64_t initial_backoff_ms = 1000;
  int64_t max_backoff_ms = 30'000;
};

struct BulkSampleOptions {
  // Every setting the images share: model, classifier_scale, sampler and its settings, seed,
  // clip_denoised. Its labels, num_samples, noise, first_image_index, stream and output are
  // ignored: each request gets its own.
  guided_diffusion::v1::SampleRequest base;
  int64_t num_images = 0;
  LabelChoice label_choice = LabelChoice::kGiven;
  std::vector<int64_t> labels;  // kGiven: num_images labels, or none (unlabelled images)
  // Starting noise x_T of every image: float32 [num_images, C, H, W]; requests get their rows.
  std::optional<formats::Array> noise;
  KeptOutputs kept;  // what the result holds (and what crosses the wire)
  // K: images per request; 0 = the model's max_images_per_request (kFallbackImagesPerRequest when
  // the server does not say). More than the model's limit is an error.
  int64_t images_per_request = 0;
  int concurrency = 2;  // requests in flight, 1 to kMaxConcurrency
  RetryPolicy retry;
  // When set: the run's .npz (arr_0, arr_1), written when every image is in, with its parts kept
  // in RunStateDir(npz_path) meanwhile and deleted after. Needs kept.images.
  std::string npz_path;
  // Continue the run whose parts are in RunStateDir(npz_path): only the missing images are
  // sampled. Without it, a parts directory left by an unfinished run is an error.
  bool resume = false;
  // Call StreamSample with progress-only step events rather than Sample, so that
  // BulkProgress.images_partial moves while requests run (a few bytes per step).
  bool stream_steps = false;
};

struct BulkProgress {
  int64_t images_total = 0;
  int64_t images_done = 0;     // finished, resumed ones included
  int64_t images_resumed = 0;  // found on disk when the run started
  // Requests in flight: their steps done / total steps x their image count (stream_steps only).
  double images_partial = 0;
  int requests_in_flight = 0;
  int64_t retries = 0;      // so far
  absl::Status last_retry;  // the error that caused the latest retry
};

struct BulkResult {
  guided_diffusion::v1::ModelInfo model;  // as GetModel described it
  SampleSet samples;                      // all num_images, in image order
  int64_t images_per_request = 0;         // K as used
  int64_t images_resumed = 0;
  int64_t requests = 0;  // made by this call and answered
  int64_t retries = 0;
  uint32_t steps = 0;                    // denoising steps per image (0 when nothing was sampled)
  std::vector<std::string> request_ids;  // of this call's requests, in the order they finished
  double seconds = 0;                    // wall time of the call
};

// Called on BulkSample's calling thread when something changed (and at least every 250 ms).
using BulkProgressCallback = std::function<void(const BulkProgress&)>;

// Runs the whole sampling run: GetModel, then the requests. Errors: InvalidArgument for bad
// options (before any request); the first failed request's status, with the images it was for
// and, with npz_path, how many images are kept for a resume. After a failure no new request
// starts; those in flight finish (and are kept).
absl::StatusOr<BulkResult> BulkSample(SamplerClient& client, const BulkSampleOptions& options,
                                      const BulkProgressCallback& on_progress = nullptr);

// Image i's class: i mod num_classes.
std::vector<int64_t> BalancedLabels(int64_t count, int64_t num_classes);
// Image i's class: SplitMix64(seed + (i + 1) * 0x9E3779B97F4A7C15) mod num_classes (a counter-
// based generator, so label i depends on the seed and i alone).
std::vector<int64_t> RandomLabels(uint64_t seed, int64_t count, int64_t num_classes);

}  // namespace gd::client
