// The sampling engine: one worker thread per loaded model that keeps the networks resident and
// runs a continuous batch of "slots" (one slot = one image being denoised). Every iteration it
// gathers the active slots — whatever request, sampler, respacing, step, eta or guidance scale
// they have — runs ONE UNet forward for all of them, one classifier forward+backward for the
// guided ones, and the per-slot DDPM/DDIM update through the shared diffusion formulas; then it
// reports steps, retires finished slots and admits queued requests.
//
// Callers (the gRPC server, tests, gd-bench, gd-train previews) only submit native SampleJobs
// and receive events on a JobObserver; they never touch the networks. No gRPC here.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/diffusion/gaussian_diffusion.h"
#include "core/diffusion/sampling.h"
#include "core/nn/model_bundle.h"

namespace gd {

// What a caller asks for, already decoded from the wire.
struct SampleJob {
  std::string request_id;
  std::vector<int64_t> labels;   // one per image, or empty (then num_samples images)
  int64_t num_samples = 0;
  double classifier_scale = 0.0;  // 0 = no guidance
  SamplerKind sampler = SamplerKind::kDdpm;
  double eta = 0.0;               // DDIM only
  std::string timestep_respacing;  // "" = the model's own process
  uint64_t seed = 0;
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
  int64_t timestep = 0;     // the model's (original-scale) timestep of this step
  torch::Tensor x_t;        // float32 [N x C x H x W] on CPU, when asked
  torch::Tensor pred_xstart;
  double elapsed_seconds = 0;  // since admission
};

struct JobResult {
  torch::Tensor samples;  // float32 [N x C x H x W] on CPU, in [-1, 1] when clipped
  std::vector<int64_t> labels;
  int64_t steps = 0;
  double queue_seconds = 0;
  double sampling_seconds = 0;
};

// Receives a job's events, on the engine thread: implementations must return quickly and never
// block (hand the work to another thread).
class JobObserver {
 public:
  virtual ~JobObserver() = default;
  virtual void OnAdmitted(int64_t total_steps) {}
  virtual void OnStep(const StepUpdate& update) {}
  // Exactly once: the images, or why there are none (CANCELLED, DEADLINE_EXCEEDED, INTERNAL,
  // UNAVAILABLE when the engine shuts down).
  virtual void OnDone(absl::StatusOr<JobResult> result) = 0;
};

// Lets the submitter cancel; the job's slots leave the batch at the next iteration.
class JobHandle {
 public:
  void Cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  int64_t queued_images_ahead() const { return queued_images_ahead_; }
  int64_t total_steps() const { return total_steps_; }

 private:
  friend class Engine;
  std::atomic<bool> cancelled_{false};
  int64_t queued_images_ahead_ = 0;
  int64_t total_steps_ = 0;
};

struct EngineOptions {
  int64_t max_batch = 32;          // slots per UNet forward
  int64_t max_queue_images = 256;  // images waiting for a slot; beyond: RESOURCE_EXHAUSTED
  int64_t max_images_per_request = 0;  // 0: max_batch (a request's images run together)
  int64_t max_steps = 0;               // respaced steps per request (0: no limit)
  // images x height x width x steps per request, the request's cost (0: no limit).
  int64_t max_pixel_steps = 0;
  // Run the networks on channels-last (NHWC) tensors; see docs/benchmarks.md for when it pays.
  bool channels_last = false;
};

// Counters since start, for metrics, benchmarks and tests.
struct EngineStats {
  int64_t iterations = 0;          // UNet forwards
  int64_t slot_steps = 0;          // sum of batch sizes
  int64_t guided_slot_steps = 0;   // slots in classifier forward+backward calls
  int64_t classifier_calls = 0;
  int64_t max_batch_seen = 0;
  int64_t max_requests_in_batch = 0;  // distinct requests sharing one forward
  int64_t jobs_submitted = 0;
  int64_t jobs_completed = 0;
  int64_t jobs_failed = 0;
  int64_t jobs_cancelled = 0;
  int64_t images_completed = 0;
  int64_t queued_images = 0;  // now
  int64_t active_slots = 0;   // now
  std::vector<int64_t> batch_size_counts;  // [b] = iterations that ran b slots
  double forward_seconds = 0;  // in UNet forwards
  double step_seconds = 0;     // in whole iterations
  // Iteration latency histogram: counts per bucket of StepSecondsBounds(), +Inf last.
  std::vector<int64_t> step_seconds_buckets;

  static const std::vector<double>& StepSecondsBounds();
};

class Engine {
 public:
  // Starts the worker thread. The bundle's networks are used by that thread only.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::shared_ptr<ModelBundle> bundle,
                                                        const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Checks the job against the model (labels, scale, eta, respacing, noise shape, guidance
  // without classifier...) and queues it. INVALID_ARGUMENT naming the field, the value and the
  // allowed range; RESOURCE_EXHAUSTED when the queue is full; UNAVAILABLE when shutting down.
  absl::StatusOr<std::shared_ptr<JobHandle>> Submit(SampleJob job,
                                                    std::shared_ptr<JobObserver> observer);
  // The same checks without queueing.
  absl::Status Validate(const SampleJob& job) const;

  // Stops admitting; lets running and queued jobs finish until `deadline`, then fails what is
  // left with UNAVAILABLE and stops the worker. Idempotent.
  void Shutdown(std::chrono::steady_clock::time_point deadline);

  EngineStats stats() const;
  const ModelBundle& bundle() const { return *bundle_; }
  const EngineOptions& options() const { return options_; }
  int64_t max_images_per_request() const;

 private:
  struct Request;
  struct Slot;

  Engine(std::shared_ptr<ModelBundle> bundle, const EngineOptions& options);
  void Run();
  void Admit(std::unique_lock<std::mutex>& lock);
  void Iterate();
  void RetireFinished();
  void FailRequest(const std::shared_ptr<Request>& request, const absl::Status& status);
  void ReleaseLocked(Request& request);  // mu_ held
  absl::StatusOr<std::shared_ptr<const GaussianDiffusion>> Process(
      const std::string& respacing) const;

  std::shared_ptr<ModelBundle> bundle_;
  EngineOptions options_;
  torch::Device device_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Request>> queue_;  // guarded by mu_
  int64_t queued_images_ = 0;                   // guarded by mu_
  bool stopping_ = false;                       // guarded by mu_
  std::chrono::steady_clock::time_point stop_deadline_;
  EngineStats stats_;                           // guarded by mu_

  // Respaced processes by respacing string, shared by requests (guarded by process_mu_).
  mutable std::mutex process_mu_;
  mutable std::map<std::string, std::shared_ptr<const GaussianDiffusion>> processes_;

  // Worker-thread state.
  std::vector<std::shared_ptr<Request>> running_;
  std::thread worker_;
};

}  // namespace gd
