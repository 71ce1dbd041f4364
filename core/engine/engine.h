// The sampling engine: one worker thread per loaded model that keeps the networks resident and
// runs a continuous batch of "slots" (one slot = one image being denoised). Every iteration it
// gathers the active slots — whatever request, sampler, respacing, step, eta or guidance scale
// they have — runs ONE UNet forward for all of them, one classifier forward+backward for the
// guided ones, and each sampler's batched update over its rows (sampler.h: DDPM, DDIM,
// DPM-Solver++); then it reports steps, retires finished slots and admits queued requests.
// Work outside the networks is a fixed number of tensor operations per iteration, whatever the
// batch: per-row constants travel as one table, noise is drawn for the whole batch at once.
//
// On the CPU the networks of a batch can run as several sub-batches ("lanes",
// EngineOptions::lanes) side by side, each on its share of the intra-op threads: on a few cores
// the operators of a small batch are too short to keep several threads busy, and two batches of
// 4 on one thread each do more than one batch of 8 on two (docs/benchmarks.md, "Lanes").
//
// Callers (the gRPC server, tests, gd-bench, gd-train previews) only submit native SampleJobs
// and receive events on a JobObserver; they never touch the networks. No gRPC here.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
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
#include "core/engine/sample_job.h"
#include "core/engine/sampler.h"
#include "core/nn/model_bundle.h"

namespace gd {

// Receives a job's events, on the engine thread: implementations must return quickly and never
// block (hand the work to another thread).
class JobObserver {
 public:
  virtual ~JobObserver() = default;
  virtual void OnAdmitted(int64_t total_steps) {}
  virtual void OnStep(const StepUpdate& update) {}
  // Exactly once: the images, or why there are none (CANCELLED, DEADLINE_EXCEEDED, INTERNAL,
  // UNAVAILABLE when the engine shuts down). (Not OnDone: gRPC's reactors, which implement this
  // interface too, have their own OnDone.)
  virtual void OnFinished(absl::StatusOr<JobResult> result) = 0;
};

// Lets the submitter cancel, from any thread and at any time: a queued job leaves the queue (and
// its count) at once, a running one leaves the batch at the next iteration; either way the
// observer then hears CANCELLED (DEADLINE_EXCEEDED when the job's deadline has passed or is less
// than a second away: the caller's transport cancels at the caller's deadline, which the
// server's copy trails by the call's transit time).
class JobHandle {
 public:
  void Cancel();
  bool cancelled() const { return cancelled_.load(); }
  int64_t queued_images_ahead() const { return queued_images_ahead_; }
  int64_t total_steps() const { return total_steps_; }

 private:
  friend class Engine;
  std::atomic<bool> cancelled_{false};
  int64_t queued_images_ahead_ = 0;
  int64_t total_steps_ = 0;
  std::mutex mu_;
  class Engine* engine_ = nullptr;  // guarded by mu_; cleared when the job ends
};

struct EngineOptions {
  int64_t max_batch = 32;          // slots per UNet forward
  int64_t max_queue_images = 256;  // images waiting for a slot; beyond: RESOURCE_EXHAUSTED
  int64_t max_images_per_request = 0;  // 0: max_batch (a request's images run together)
  int64_t max_steps = 0;               // steps per request after respacing (0: no limit)
  // Largest classifier_scale accepted (0: no limit). Scales far beyond what guidance uses make
  // the update overflow; they are refused up front rather than failing after the work.
  double max_classifier_scale = 0;
  // images x height x width x steps per request, the request's cost (0: no limit).
  int64_t max_pixel_steps = 0;
  // Run the networks on channels-last (NHWC) tensors; see docs/benchmarks.md for when it pays.
  bool channels_last = false;
  // CPU: the networks of a batch of B images run as min(lanes, B) sub-batches side by side, each
  // on threads / min(lanes, B) intra-op threads (at least one).
  int64_t lanes = 1;
  // Intra-op threads that the lanes share (0: LibTorch's setting at Create). Used with lanes > 1.
  int64_t threads = 0;
  // Fault injection for tests: sees each iteration's UNet output (and the iteration's number,
  // from 0) before it is used, and may replace it or throw.
  std::function<torch::Tensor(int64_t iteration, torch::Tensor output)> unet_output_hook;
};

// Counters since start, for metrics, benchmarks and tests.
struct EngineStats {
  int64_t iterations = 0;          // UNet forwards
  int64_t slot_steps = 0;          // sum of batch sizes
  int64_t guided_slot_steps = 0;   // slots in classifier forward+backward calls
  int64_t classifier_calls = 0;
  int64_t max_batch_seen = 0;
  int64_t max_requests_in_batch = 0;  // distinct requests sharing one forward
  int64_t split_iterations = 0;       // iterations whose networks ran as several lanes
  int64_t jobs_submitted = 0;
  int64_t jobs_completed = 0;
  int64_t jobs_failed = 0;
  int64_t jobs_cancelled = 0;          // cancelled or past their deadline
  int64_t images_completed = 0;
  int64_t queued_images = 0;  // now
  int64_t active_slots = 0;   // now
  std::vector<int64_t> batch_size_counts;  // [b] = iterations that ran b slots
  double forward_seconds = 0;  // in UNet forwards
  // Split iterations: lanes x the wall time of their networks phase, and of that the time lanes
  // sat idle (waiting for the slowest lane, or for their thread to start). Their ratio is the
  // share of the lanes' time lost at the end-of-networks barrier.
  double lane_seconds = 0;
  double lane_idle_seconds = 0;
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
  // The samplers this model can run (DPM-Solver++ needs an eps- or x_0-predicting model).
  std::vector<SamplerKind> samplers() const;

 private:
  friend class JobHandle;
  struct Request;
  struct Batch;

  Engine(std::shared_ptr<ModelBundle> bundle, const EngineOptions& options);
  const Sampler* SamplerFor(SamplerKind kind) const;
  absl::StatusOr<std::unique_ptr<SamplerRun>> StartRun(const SampleJob& job) const;
  // Validate's checks; on success, the job's sampler run.
  absl::StatusOr<std::unique_ptr<SamplerRun>> Check(const SampleJob& job) const;

  // The worker's loop and its parts.
  void Run();
  void WaitForWork(std::unique_lock<std::mutex>& lock);
  bool ShutdownIfDone(std::unique_lock<std::mutex>& lock);
  std::vector<std::shared_ptr<Request>> AdmitLocked();
  void Begin(const std::vector<std::shared_ptr<Request>>& admitted);
  void Iterate();
  void DropDeparted(std::chrono::steady_clock::time_point now);
  Batch Gather() const;
  void RunNetworks(Batch& batch) const;
  // The networks over some rows of the batch (increasing; all of them runs without copies): the
  // UNet's output and, when any of these rows is guided, the scaled classifier gradient (zero on
  // unguided rows), in the order of `rows`. Returns the seconds of its UNet forward.
  double RunRows(const Batch& batch, const std::vector<int64_t>& rows, torch::Tensor& output,
                 torch::Tensor& grad) const;
  void RunLanes(Batch& batch, int64_t lanes) const;
  int64_t LanesFor(int64_t rows) const;  // sub-batches a batch of `rows` runs as
  std::vector<SamplerStep> UpdateRows(const Batch& batch) const;
  void Report(const Batch& batch, const std::vector<SamplerStep>& steps);
  void Count(const Batch& batch, double step_seconds);
  void Complete(const std::shared_ptr<Request>& request, double sampling_seconds);
  void RetireFinished();

  // Queue bookkeeping (mu_ held): moves cancelled and expired jobs out of the queue into
  // departed_, so that they stop counting at once; the worker tells their observers.
  void ReapQueueLocked(std::chrono::steady_clock::time_point now);
  void OnCancelled();  // from JobHandle::Cancel, any thread
  void FailRequest(const std::shared_ptr<Request>& request, const absl::Status& status);
  void ReleaseLocked(Request& request);  // mu_ held
  absl::Status DepartureStatus(const Request& request) const;

  std::shared_ptr<ModelBundle> bundle_;
  EngineOptions options_;
  torch::Device device_;
  // By SamplerKind; null where the model cannot use the sampler.
  std::vector<std::unique_ptr<Sampler>> samplers_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Request>> queue_;     // guarded by mu_
  std::vector<std::shared_ptr<Request>> departed_;  // guarded by mu_: left the queue, not told yet
  int64_t queued_images_ = 0;                      // guarded by mu_
  bool stopping_ = false;                          // guarded by mu_
  std::chrono::steady_clock::time_point stop_deadline_;
  EngineStats stats_;                              // guarded by mu_

  // Worker-thread state: the running requests, grouped by sampler (kind order).
  std::vector<std::shared_ptr<Request>> running_;
  int64_t iteration_ = 0;
  std::thread worker_;
};

}  // namespace gd
