#include "core/engine/engine.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <future>
#include <iterator>
#include <numeric>

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/diffusion/counter_noise.h"
#include "core/engine/intra_op_threads.h"
#include "core/engine/lanes.h"
#include "core/nn/guidance.h"
#include "core/status_macros.h"

namespace gd {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

std::string ShapeString(at::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

absl::Status CheckLanes(const EngineOptions& options, const torch::Device& device) {
  if (options.lanes < 1 || options.threads < 0) {
    return Invalid(absl::StrCat("engine: lanes = ", options.lanes, " must be >= 1 and threads = ",
                                options.threads, " >= 0"));
  }
  if (options.lanes == 1) return absl::OkStatus();
  if (!device.is_cpu()) {
    return Invalid(absl::StrCat("engine: lanes = ", options.lanes, " splits batches on the CPU; ",
                                device.str(), " runs one lane"));
  }
  if (!PerThreadIntraOpThreadsWork()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "engine: lanes = ", options.lanes, " needs per-thread OpenMP thread counts, which this "
        "LibTorch does not honour (it runs without OpenMP); use 1"));
  }
  return absl::OkStatus();
}

// Each lane's rows (DealRowsToLanes) back in their place in a batch of `rows`.
torch::Tensor Undeal(const std::vector<std::vector<int64_t>>& dealt,
                     const std::vector<torch::Tensor>& parts, int64_t rows) {
  std::vector<int64_t> shape = parts.front().sizes().vec();
  shape[0] = rows;
  torch::Tensor whole = torch::empty(shape, parts.front().options());
  for (size_t i = 0; i < dealt.size(); ++i) {
    whole.index_copy_(0, torch::tensor(dealt[i], torch::kInt64).to(whole.device()), parts[i]);
  }
  return whole;
}

// The message of an exception from the networks or the tensor math, without LibTorch's backtrace.
std::string WhatOf(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return c10->what_without_backtrace();
  return e.what();
}

}  // namespace

// A request's images advance together: they are admitted in the same iteration and share a
// step count, so one request is a contiguous run of slots in every batch.
struct Engine::Request {
  SampleJob job;
  std::shared_ptr<JobObserver> observer;
  std::shared_ptr<JobHandle> handle;
  std::unique_ptr<SamplerRun> run;
  int64_t images = 0;
  int64_t total_steps = 0;
  Clock::time_point submitted;
  Clock::time_point admitted;

  // Slot state, on the engine's device.
  torch::Tensor x;                 // [N x C x H x W] float32: the current x_t
  std::vector<int64_t> noise_keys;  // one random stream per image (NoiseKey)
  int64_t step = 0;                // steps done
  bool active = false;             // holds slots in the batch
  bool finished = false;           // the observer has been told

  bool expired(Clock::time_point now) const { return job.deadline.has_value() && now >= *job.deadline; }
};

// One iteration's batch: the running requests' rows, in order, with what every phase needs.
struct Engine::Batch {
  int64_t rows = 0;
  torch::Tensor x;         // [B x C x H x W]
  torch::Tensor model_t;   // [B] float32: the networks' timesteps
  torch::Tensor labels;    // [B] int64
  torch::Tensor scale;     // [B] float32 classifier scale (0 = unguided)
  std::vector<int64_t> guided_rows;
  bool needs_noise = false;
  torch::Tensor noise;     // [B x C x H x W] when needs_noise
  torch::Tensor output;    // the UNet's output
  torch::Tensor grad;      // scaled classifier gradient, zero on unguided rows (when any guided)
  torch::Tensor guided;    // [B x 1 x 1 x 1] bool (with grad)
  std::vector<X0Correction::Mode> x0_modes;
  std::vector<float> x0_ratios;
  // Requests [begin, end) of running_ use samplers_[kind]; rows [first_row, ...).
  struct Group {
    SamplerKind kind;
    size_t begin, end;
    int64_t first_row, rows;
  };
  std::vector<Group> groups;
  double forward_seconds = 0;
  double lane_seconds = 0, lane_idle_seconds = 0;  // with lanes (EngineStats)
};

void JobHandle::Cancel() {
  cancelled_.store(true);
  std::lock_guard<std::mutex> lock(mu_);
  if (engine_ != nullptr) engine_->OnCancelled();
}

const std::vector<double>& EngineStats::StepSecondsBounds() {
  static const std::vector<double> bounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                             0.5,   1,    2.5,   5,    10,  30};
  return bounds;
}

Engine::Engine(std::shared_ptr<ModelBundle> bundle, const EngineOptions& options)
    : bundle_(std::move(bundle)), options_(options), device_(bundle_->device) {
  stats_.batch_size_counts.assign(static_cast<size_t>(options_.max_batch + 1), 0);
  stats_.step_seconds_buckets.assign(EngineStats::StepSecondsBounds().size() + 1, 0);
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::shared_ptr<ModelBundle> bundle,
                                                       const EngineOptions& options) {
  if (bundle == nullptr || bundle->unet.is_empty()) {
    return absl::InvalidArgumentError("engine: no model");
  }
  if (options.max_batch < 1 || options.max_queue_images < 0 || options.max_images_per_request < 0 ||
      options.max_steps < 0 || options.max_classifier_scale < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine: max_batch = ", options.max_batch, " must be >= 1 and the other limits >= 0"));
  }
  RETURN_IF_ERROR(CheckLanes(options, bundle->device));
  if (options.channels_last) {
    torch::NoGradGuard no_grad;
    auto convert = [](torch::nn::Module& module) {
      for (auto& p : module.parameters()) {
        if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
      }
    };
    convert(*bundle->unet);
    if (bundle->has_classifier()) convert(*bundle->classifier);
  }
  std::unique_ptr<Engine> engine(new Engine(std::move(bundle), options));
  const ModelBundle& m = *engine->bundle_;
  ASSIGN_OR_RETURN(auto ddpm, MakeDdpmSampler(m));
  ASSIGN_OR_RETURN(auto ddim, MakeDdimSampler(m));
  engine->samplers_.push_back(std::move(ddpm));
  engine->samplers_.push_back(std::move(ddim));
  // DPM-Solver++ needs an eps- or x0-predicting model; others serve DDPM and DDIM only.
  auto dpm = MakeDpmSolverSampler(m);
  if (!dpm.ok() && dpm.status().code() != absl::StatusCode::kFailedPrecondition) {
    return dpm.status();
  }
  engine->samplers_.push_back(dpm.ok() ? std::move(*dpm) : nullptr);
  // The model's own process must exist (its respacing was checked when the model loaded).
  SampleJob probe;
  probe.num_samples = 1;
  if (auto run = engine->SamplerFor(SamplerKind::kDdpm)->Start(probe, 0); !run.ok()) {
    return run.status();
  }
  if (engine->options_.threads == 0) engine->options_.threads = at::get_num_threads();
  engine->worker_ = std::thread([e = engine.get()] { e->Run(); });
  return engine;
}

Engine::~Engine() {
  Shutdown(Clock::now());
  if (worker_.joinable()) worker_.join();
}

int64_t Engine::max_images_per_request() const {
  const int64_t limit = options_.max_images_per_request > 0 ? options_.max_images_per_request
                                                            : options_.max_batch;
  return std::min(limit, options_.max_batch);
}

std::vector<SamplerKind> Engine::samplers() const {
  std::vector<SamplerKind> kinds;
  for (const auto& s : samplers_) {
    if (s != nullptr) kinds.push_back(s->kind());
  }
  return kinds;
}

const Sampler* Engine::SamplerFor(SamplerKind kind) const {
  const size_t i = static_cast<size_t>(kind);
  return i < samplers_.size() ? samplers_[i].get() : nullptr;
}

absl::StatusOr<std::unique_ptr<SamplerRun>> Engine::StartRun(const SampleJob& job) const {
  const Sampler* sampler = SamplerFor(job.sampler);
  if (sampler == nullptr) {
    return Invalid(absl::StrCat("sampler ", ToString(job.sampler), " is not available for model \"",
                                bundle_->name, "\" (it predicts neither eps nor x_0)"));
  }
  return sampler->Start(job, options_.max_steps);
}

absl::Status Engine::Validate(const SampleJob& job) const { return Check(job).status(); }

absl::StatusOr<std::unique_ptr<SamplerRun>> Engine::Check(const SampleJob& job) const {
  const ModelBundle& m = *bundle_;
  const std::string model = absl::StrCat("model \"", m.name, "\"");
  const int64_t n = job.num_images();
  const int64_t limit = max_images_per_request();
  if (job.labels.empty() && job.num_samples <= 0) {
    return Invalid(absl::StrCat("num_samples = ", job.num_samples,
                                ": give labels (one per image) or num_samples in [1, ", limit,
                                "]"));
  }
  if (!job.labels.empty() && job.num_samples != 0 &&
      job.num_samples != static_cast<int64_t>(job.labels.size())) {
    return Invalid(absl::StrCat("num_samples = ", job.num_samples, " does not match ",
                                job.labels.size(), " labels (leave num_samples 0 or make them "
                                "equal)"));
  }
  if (n > limit) {
    return Invalid(absl::StrCat(n, " images exceed max_images_per_request = ", limit, " of ",
                                model));
  }
  const int64_t classes = m.num_classes();
  for (size_t i = 0; i < job.labels.size(); ++i) {
    if (job.labels[i] < 0 || job.labels[i] >= classes) {
      return Invalid(absl::StrCat("labels[", i, "] = ", job.labels[i], " is outside [0, ", classes,
                                  ") for ", model));
    }
  }
  if (m.class_conditional() && job.labels.empty()) {
    return Invalid(absl::StrCat("labels: ", model, " is class-conditional; give one label per "
                                "image"));
  }
  if (!std::isfinite(job.classifier_scale) || job.classifier_scale < 0) {
    return Invalid(absl::StrCat("classifier_scale = ", job.classifier_scale,
                                " must be a finite number >= 0"));
  }
  if (options_.max_classifier_scale > 0 && job.classifier_scale > options_.max_classifier_scale) {
    return Invalid(absl::StrCat("classifier_scale = ", job.classifier_scale,
                                " exceeds this server's max_classifier_scale = ",
                                options_.max_classifier_scale));
  }
  if (job.classifier_scale > 0) {
    if (!m.has_classifier()) {
      return Invalid(absl::StrCat("classifier_scale = ", job.classifier_scale, " needs a "
                                  "classifier; ", model, " has none (use 0)"));
    }
    if (job.labels.empty()) {
      return Invalid(absl::StrCat("classifier_scale = ", job.classifier_scale,
                                  " guides towards labels; give one label per image"));
    }
  }
  const double ratio = job.dynamic_thresholding_ratio;
  if (!std::isfinite(ratio) || ratio < 0 || ratio > 1) {
    return Invalid(absl::StrCat("dynamic_thresholding_ratio = ", ratio,
                                " is outside (0, 1] (0 turns it off)"));
  }
  if (ratio > 0 && !job.clip_denoised) {
    return Invalid(absl::StrCat("dynamic_thresholding_ratio = ", ratio, " corrects x_0, but "
                                "clip_denoised = false asks for no correction; drop one of them"));
  }
  ASSIGN_OR_RETURN(auto run, StartRun(job));
  const int64_t steps = (run)->total_steps();
  const int64_t pixel_steps = n * m.image_size() * m.image_size() * steps;
  if (options_.max_pixel_steps > 0 && pixel_steps > options_.max_pixel_steps) {
    return Invalid(absl::StrCat(n, " images x ", m.image_size(), "x", m.image_size(), " pixels x ",
                                steps, " steps = ", pixel_steps, " exceed max_pixel_steps = ",
                                options_.max_pixel_steps, "; ask for fewer images or steps"));
  }
  if (job.noise.has_value()) {
    const torch::Tensor& noise = *job.noise;
    const std::vector<int64_t> want = {n, m.channels(), m.image_size(), m.image_size()};
    if (noise.sizes() != at::IntArrayRef(want)) {
      return Invalid(absl::StrCat("noise has shape ", ShapeString(noise.sizes()), "; ", model,
                                  " needs [N, C, H, W] = ", ShapeString(want)));
    }
    if (!noise.is_floating_point()) {
      return Invalid("noise must be float32 or float16");
    }
    if (!torch::isfinite(noise).all().item<bool>()) {
      return Invalid("noise holds NaN or infinite values");
    }
  }
  if (job.stream_every < 0) {
    return Invalid(absl::StrCat("stream.every = ", job.stream_every, " must be >= 0"));
  }
  return run;
}

absl::StatusOr<std::shared_ptr<JobHandle>> Engine::Submit(SampleJob job,
                                                         std::shared_ptr<JobObserver> observer) {
  ASSIGN_OR_RETURN(std::unique_ptr<SamplerRun> run, Check(job));
  auto request = std::make_shared<Request>();
  request->images = job.num_images();
  request->run = std::move(run);
  request->total_steps = request->run->total_steps();
  request->observer = std::move(observer);
  request->handle = std::make_shared<JobHandle>();
  request->handle->total_steps_ = request->total_steps;
  request->submitted = Clock::now();
  request->job = std::move(job);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the server is shutting down");
    ReapQueueLocked(request->submitted);
    if (queued_images_ + request->images > options_.max_queue_images) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the queue of model \"", bundle_->name, "\" is full: ", queued_images_, " images wait, ",
          request->images, " more would pass max_queue_images = ", options_.max_queue_images,
          "; retry later"));
    }
    request->handle->queued_images_ahead_ = queued_images_;
    request->handle->engine_ = this;
    queued_images_ += request->images;
    queue_.push_back(request);
    ++stats_.jobs_submitted;
    stats_.queued_images = queued_images_;
  }
  cv_.notify_one();
  return request->handle;
}

void Engine::Shutdown(Clock::time_point deadline) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      stop_deadline_ = std::min(stop_deadline_, deadline);
    } else {
      stopping_ = true;
      stop_deadline_ = deadline;
    }
  }
  cv_.notify_all();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

// ---- Queue bookkeeping -------------------------------------------------------------------------

void Engine::ReapQueueLocked(Clock::time_point now) {
  for (auto it = queue_.begin(); it != queue_.end();) {
    const auto& r = *it;
    if (r->handle->cancelled() || r->expired(now)) {
      queued_images_ -= r->images;
      departed_.push_back(r);
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  stats_.queued_images = queued_images_;
}

void Engine::OnCancelled() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ReapQueueLocked(Clock::now());
  }
  cv_.notify_one();
}

// A cancel that arrives this close to the job's deadline is the caller's deadline. The server's
// copy of a deadline runs later than the caller's by the time the call took to arrive (over 300 ms
// seen on a loaded machine), and the caller's transport cancels at its own deadline, so without
// the margin a call its caller saw end in DEADLINE_EXCEEDED could be counted as CANCELLED.
constexpr auto kDeadlineGrace = std::chrono::seconds(1);

absl::Status Engine::DepartureStatus(const Request& r) const {
  // A deadline that has passed (or is about to, see kDeadlineGrace) is what ended the request,
  // even when the caller's transport noticed first and cancelled it.
  const std::string where = r.active ? absl::StrCat("after ", r.step, " of ", r.total_steps, " steps")
                                     : "while queued";
  if (r.expired(Clock::now() + kDeadlineGrace)) {
    return absl::DeadlineExceededError(absl::StrCat("deadline exceeded ", where));
  }
  return absl::CancelledError(absl::StrCat("cancelled ", where));
}

void Engine::ReleaseLocked(Request& request) {
  // Slots are given back before the observer hears of the end, so that anyone who waits for
  // OnFinished sees consistent statistics.
  if (request.active) stats_.active_slots -= request.images;
  request.active = false;
  request.finished = true;
}

void Engine::FailRequest(const std::shared_ptr<Request>& request, const absl::Status& status) {
  if (request->finished) return;  // told once only
  {
    std::lock_guard<std::mutex> lock(mu_);
    ReleaseLocked(*request);
    if (status.code() == absl::StatusCode::kCancelled ||
        status.code() == absl::StatusCode::kDeadlineExceeded) {
      ++stats_.jobs_cancelled;
    } else {
      ++stats_.jobs_failed;
    }
  }
  {
    std::lock_guard<std::mutex> lock(request->handle->mu_);
    request->handle->engine_ = nullptr;
  }
  request->observer->OnFinished(status);
}

// ---- The worker --------------------------------------------------------------------------------

void Engine::WaitForWork(std::unique_lock<std::mutex>& lock) {
  auto ready = [&] {
    return stopping_ || !departed_.empty() || !running_.empty() || !queue_.empty();
  };
  while (!ready()) {
    // Wake for the earliest deadline of a queued job, so that it leaves the queue on time.
    std::optional<Clock::time_point> wake;
    for (const auto& r : queue_) {
      if (r->job.deadline.has_value() && (!wake || *r->job.deadline < *wake)) wake = r->job.deadline;
    }
    if (wake) {
      cv_.wait_until(lock, *wake);
    } else {
      cv_.wait(lock);
    }
    ReapQueueLocked(Clock::now());
  }
}

bool Engine::ShutdownIfDone(std::unique_lock<std::mutex>& lock) {
  if (!stopping_) return false;
  const bool past_deadline = Clock::now() >= stop_deadline_;
  if (!past_deadline && !(queue_.empty() && running_.empty())) return false;
  std::vector<std::shared_ptr<Request>> left(queue_.begin(), queue_.end());
  queue_.clear();
  queued_images_ = 0;
  stats_.queued_images = 0;
  std::vector<std::shared_ptr<Request>> departed;
  departed.swap(departed_);
  lock.unlock();
  for (auto& r : departed) FailRequest(r, DepartureStatus(*r));
  left.insert(left.end(), running_.begin(), running_.end());
  running_.clear();
  for (auto& r : left) FailRequest(r, absl::UnavailableError("the server is shutting down"));
  return true;
}

void Engine::Run() {
  torch::NoGradGuard no_grad;
  if (options_.lanes > 1) SetIntraOpThreadsOfThisThread(static_cast<int>(options_.threads));
  while (true) {
    std::vector<std::shared_ptr<Request>> departed, admitted;
    {
      std::unique_lock<std::mutex> lock(mu_);
      WaitForWork(lock);
      if (ShutdownIfDone(lock)) return;
      ReapQueueLocked(Clock::now());
      departed.swap(departed_);
      admitted = AdmitLocked();
    }
    for (auto& r : departed) FailRequest(r, DepartureStatus(*r));
    Begin(admitted);
    if (running_.empty()) continue;
    try {
      Iterate();
    } catch (const std::exception& e) {
      // A failure of the batch (out of memory, a kernel error) fails the requests it still
      // held; those that finished in this iteration have had their answer. The engine and the
      // queue carry on.
      const absl::Status status = absl::InternalError(absl::StrCat("sampling failed: ", WhatOf(e)));
      for (auto& r : running_) FailRequest(r, status);
    }
    RetireFinished();
  }
}

std::vector<std::shared_ptr<Engine::Request>> Engine::AdmitLocked() {
  int64_t active = 0;
  for (const auto& r : running_) active += r->images;
  std::vector<std::shared_ptr<Request>> admitted;
  // First come, first served: later requests wait behind a head that does not fit. (The queue
  // holds only live requests: ReapQueueLocked ran just before.)
  while (!queue_.empty() && active + queue_.front()->images <= options_.max_batch) {
    const auto next = queue_.front();
    queue_.pop_front();
    active += next->images;
    next->active = true;
    queued_images_ -= next->images;
    admitted.push_back(next);
  }
  stats_.queued_images = queued_images_;
  stats_.active_slots = active;
  return admitted;
}

void Engine::Begin(const std::vector<std::shared_ptr<Request>>& admitted) {
  const Clock::time_point now = Clock::now();
  const std::vector<int64_t> image_shape = {bundle_->channels(), bundle_->image_size(),
                                            bundle_->image_size()};
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  for (const auto& r : admitted) {
    try {
      r->admitted = now;
      for (int64_t i = 0; i < r->images; ++i) {
        r->noise_keys.push_back(NoiseKey(r->job.seed, r->job.first_image_index + static_cast<uint64_t>(i)));
      }
      if (r->job.noise.has_value()) {
        r->x = r->job.noise->to(device_, torch::kFloat32).contiguous();
      } else {
        // x_T is counter 0 of each image's stream; step k draws counter k + 1.
        const torch::Tensor keys = torch::tensor(r->noise_keys, i64).to(device_);
        r->x = CounterNormal(keys, torch::zeros_like(keys), image_shape);
      }
      r->observer->OnAdmitted(r->total_steps);
      // Requests stay grouped by sampler: each sampler's rows are one contiguous range.
      auto at = std::upper_bound(running_.begin(), running_.end(), r,
                                 [](const auto& a, const auto& b) { return a->job.sampler < b->job.sampler; });
      running_.insert(at, r);
    } catch (const std::exception& e) {
      FailRequest(r, absl::InternalError(absl::StrCat("admission failed: ", WhatOf(e))));
    }
  }
}

void Engine::DropDeparted(Clock::time_point now) {
  for (auto& r : running_) {
    if (r->handle->cancelled() || r->expired(now)) FailRequest(r, DepartureStatus(*r));
  }
  RetireFinished();
}

void Engine::Iterate() {
  RECORD_FUNCTION("gd::engine::iteration", std::vector<c10::IValue>());
  const Clock::time_point started = Clock::now();
  DropDeparted(started);
  if (running_.empty()) return;
  Batch batch = Gather();
  RunNetworks(batch);
  const std::vector<SamplerStep> steps = UpdateRows(batch);
  Count(batch, Seconds(started, Clock::now()));
  Report(batch, steps);
  ++iteration_;
}

// Gather: the rows of every request and their per-row constants, each kind in one host table
// copied to the device at once.
Engine::Batch Engine::Gather() const {
  RECORD_FUNCTION("gd::engine::gather", std::vector<c10::IValue>());
  Batch b;
  std::vector<torch::Tensor> xs;
  std::vector<float> floats;     // per row: network timestep, classifier scale
  std::vector<int64_t> ints;     // per row: label, noise key, noise counter
  for (size_t i = 0; i < running_.size(); ++i) {
    const Request& r = *running_[i];
    if (b.groups.empty() || b.groups.back().kind != r.job.sampler) {
      b.groups.push_back({r.job.sampler, i, i, b.rows, 0});
    }
    b.groups.back().end = i + 1;
    b.groups.back().rows += r.images;
    xs.push_back(r.x);
    b.needs_noise |= r.run->uses_noise();
    const double ratio = r.job.dynamic_thresholding_ratio;
    const auto mode = ratio > 0 ? X0Correction::Mode::kDynamic
                                : (r.job.clip_denoised ? X0Correction::Mode::kClip
                                                       : X0Correction::Mode::kNone);
    for (int64_t k = 0; k < r.images; ++k) {
      const int64_t label = r.job.labels.empty() ? 0 : r.job.labels[static_cast<size_t>(k)];
      floats.insert(floats.end(), {static_cast<float>(r.run->network_timestep(r.step)),
                                   static_cast<float>(r.job.classifier_scale)});
      ints.insert(ints.end(), {label, r.noise_keys[static_cast<size_t>(k)], r.step + 1});
      if (r.job.classifier_scale > 0) b.guided_rows.push_back(b.rows + k);
      b.x0_modes.push_back(mode);
      b.x0_ratios.push_back(static_cast<float>(ratio));
    }
    b.rows += r.images;
  }
  const torch::Tensor f = torch::from_blob(floats.data(), {b.rows, 2}, torch::kFloat32)
                              .to(device_, /*non_blocking=*/false, /*copy=*/true);
  const torch::Tensor n = torch::from_blob(ints.data(), {b.rows, 3}, torch::kInt64)
                              .to(device_, /*non_blocking=*/false, /*copy=*/true);
  b.model_t = f.select(1, 0);
  b.scale = f.select(1, 1);
  b.labels = n.select(1, 0);
  b.x = torch::cat(xs);
  if (options_.channels_last) b.x = b.x.contiguous(torch::MemoryFormat::ChannelsLast);
  if (b.needs_noise) b.noise = CounterNormal(n.select(1, 1), n.select(1, 2), b.x.sizes().slice(1));
  return b;
}

// Networks: one UNet forward for every row, one classifier forward+backward for the guided rows;
// with lanes, one of each per lane.
void Engine::RunNetworks(Batch& b) const {
  RECORD_FUNCTION("gd::engine::networks", std::vector<c10::IValue>());
  const int64_t lanes = LanesFor(b.rows);
  if (lanes > 1) {
    RunLanes(b, lanes);
  } else {
    std::vector<int64_t> all(static_cast<size_t>(b.rows));
    std::iota(all.begin(), all.end(), int64_t{0});
    b.forward_seconds = RunRows(b, all, b.output, b.grad);
  }
  if (options_.unet_output_hook) b.output = options_.unet_output_hook(iteration_, b.output);
  if (!b.guided_rows.empty()) b.guided = (b.scale > 0).view({b.rows, 1, 1, 1});
}

int64_t Engine::LanesFor(int64_t rows) const { return std::min(options_.lanes, rows); }

double Engine::RunRows(const Batch& b, const std::vector<int64_t>& rows, torch::Tensor& output,
                       torch::Tensor& grad) const {
  const auto count = static_cast<int64_t>(rows.size());
  const torch::Tensor index =
      count == b.rows ? torch::Tensor() : torch::tensor(rows, torch::kInt64).to(device_);
  const auto pick = [&](const torch::Tensor& t) { return index.defined() ? t.index_select(0, index) : t; };
  const torch::Tensor x = pick(b.x), model_t = pick(b.model_t), labels = pick(b.labels);
  const Clock::time_point start = Clock::now();
  {
    RECORD_FUNCTION("gd::unet::forward", std::vector<c10::IValue>());
    output = bundle_->unet->forward(x, model_t, bundle_->class_conditional() ? labels : torch::Tensor());
  }
  const double unet_seconds = Seconds(start, Clock::now());
  std::vector<int64_t> guided;  // positions in `rows` of the guided ones
  std::set_intersection(b.guided_rows.begin(), b.guided_rows.end(), rows.begin(), rows.end(),
                        std::back_inserter(guided));
  for (int64_t& g : guided) g = std::lower_bound(rows.begin(), rows.end(), g) - rows.begin();
  if (guided.empty()) {
    grad = b.guided_rows.empty() ? torch::Tensor() : torch::zeros_like(x);
  } else if (static_cast<int64_t>(guided.size()) == count) {
    grad = ClassifierGradient(bundle_->classifier, x, model_t, labels, pick(b.scale));
  } else {
    const torch::Tensor at = torch::tensor(guided, torch::kInt64).to(device_);
    const auto select = [&](const torch::Tensor& t) { return t.index_select(0, at); };
    const torch::Tensor g = ClassifierGradient(bundle_->classifier, select(x), select(model_t),
                                               select(labels), select(pick(b.scale)));
    grad = torch::zeros_like(x).index_copy(0, at, g);
  }
  return unet_seconds;
}

// Lanes: the rows dealt out with the guided ones spread evenly (DealRowsToLanes), lane 0 on this
// thread and the others on LibTorch's inter-op threads, each with its share of the intra-op
// threads. Every lane finishes before the first failure, if any, is rethrown: they all read the
// batch.
void Engine::RunLanes(Batch& b, int64_t lanes) const {
  const int threads = static_cast<int>(std::max<int64_t>(1, options_.threads / lanes));
  const std::vector<std::vector<int64_t>> dealt = DealRowsToLanes(b.rows, b.guided_rows, lanes);
  std::vector<torch::Tensor> outputs(dealt.size()), grads(dealt.size());
  std::vector<double> busy(dealt.size(), 0.0);
  const Clock::time_point start = Clock::now();
  const auto run_lane = [&, threads](size_t i) {
    const Clock::time_point lane_start = Clock::now();
    SetIntraOpThreadsOfThisThread(threads);
    const double unet_seconds = RunRows(b, dealt[i], outputs[i], grads[i]);
    busy[i] = Seconds(lane_start, Clock::now());
    return unet_seconds;
  };
  std::vector<std::future<void>> others;
  for (size_t i = 1; i < dealt.size(); ++i) {
    auto done = std::make_shared<std::promise<void>>();
    others.push_back(done->get_future());
    at::launch([&run_lane, i, done] {
      try {
        torch::NoGradGuard no_grad;
        run_lane(i);
        done->set_value();
      } catch (...) {
        done->set_exception(std::current_exception());
      }
    });
  }
  std::exception_ptr failure;
  try {
    b.forward_seconds = run_lane(0);
  } catch (...) {
    failure = std::current_exception();
  }
  for (auto& other : others) {
    try {
      other.get();
    } catch (...) {
      if (!failure) failure = std::current_exception();
    }
  }
  const double wall = Seconds(start, Clock::now());
  b.lane_seconds = wall * static_cast<double>(busy.size());
  for (double lane_busy : busy) b.lane_idle_seconds += wall - lane_busy;
  // The rest of the iteration, and a later batch of one, has every thread again.
  SetIntraOpThreadsOfThisThread(static_cast<int>(options_.threads));
  if (failure) std::rethrow_exception(failure);
  b.output = Undeal(dealt, outputs, b.rows);
  if (!b.guided_rows.empty()) b.grad = Undeal(dealt, grads, b.rows);
}

// Update: each sampler's batched step over its rows.
std::vector<SamplerStep> Engine::UpdateRows(const Batch& b) const {
  RECORD_FUNCTION("gd::engine::update", std::vector<c10::IValue>());
  std::vector<SamplerStep> steps;
  for (const auto& g : b.groups) {
    SamplerRows rows;
    for (size_t i = g.begin; i < g.end; ++i) {
      rows.runs.push_back(running_[i]->run.get());
      rows.images.push_back(running_[i]->images);
      rows.steps.push_back(running_[i]->step);
    }
    const auto slice = [&](const torch::Tensor& t) {
      return t.defined() ? t.narrow(0, g.first_row, g.rows) : t;
    };
    rows.x = slice(b.x);
    rows.model_output = slice(b.output);
    rows.grad = slice(b.grad);
    rows.guided = slice(b.guided);
    rows.noise = slice(b.noise);
    const auto first = b.x0_modes.begin() + g.first_row;
    rows.correct_x0 = X0Correction::PerRow(
        std::vector<X0Correction::Mode>(first, first + g.rows),
        std::vector<float>(b.x0_ratios.begin() + g.first_row, b.x0_ratios.begin() + g.first_row + g.rows),
        device_);
    steps.push_back(SamplerFor(g.kind)->Step(rows));
  }
  return steps;
}

// Counted before any observer hears of this iteration, so its statistics are consistent.
void Engine::Count(const Batch& b, double step_seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.iterations;
  stats_.slot_steps += b.rows;
  stats_.guided_slot_steps += static_cast<int64_t>(b.guided_rows.size());
  stats_.classifier_calls += b.guided_rows.empty() ? 0 : 1;
  stats_.split_iterations += LanesFor(b.rows) > 1 ? 1 : 0;
  stats_.max_batch_seen = std::max(stats_.max_batch_seen, b.rows);
  stats_.max_requests_in_batch =
      std::max(stats_.max_requests_in_batch, static_cast<int64_t>(running_.size()));
  if (b.rows < static_cast<int64_t>(stats_.batch_size_counts.size())) {
    ++stats_.batch_size_counts[static_cast<size_t>(b.rows)];
  }
  stats_.forward_seconds += b.forward_seconds;
  stats_.lane_seconds += b.lane_seconds;
  stats_.lane_idle_seconds += b.lane_idle_seconds;
  stats_.step_seconds += step_seconds;
  const auto& bounds = EngineStats::StepSecondsBounds();
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(bounds.begin(), bounds.end(), step_seconds) - bounds.begin());
  ++stats_.step_seconds_buckets[bucket];
}

// Report: scatter each request's rows back, stream what was asked, fail requests whose rows went
// non-finite, finish what reached x_0.
void Engine::Report(const Batch& b, const std::vector<SamplerStep>& steps) {
  RECORD_FUNCTION("gd::engine::report", std::vector<c10::IValue>());
  // One flag per row, fetched at once: whether every value of the row's new x is finite.
  std::vector<torch::Tensor> finite_parts;
  for (const auto& s : steps) finite_parts.push_back(torch::isfinite(s.x_next).flatten(1).all(1));
  const torch::Tensor finite = torch::cat(finite_parts).to(torch::kCPU);
  const bool* row_finite = finite.data_ptr<bool>();
  const Clock::time_point now = Clock::now();
  for (size_t gi = 0; gi < b.groups.size(); ++gi) {
    const auto& g = b.groups[gi];
    int64_t offset = 0;
    for (size_t i = g.begin; i < g.end; ++i) {
      const auto& r = running_[i];
      const int64_t n = r->images;
      const int64_t row = g.first_row + offset;
      r->x = steps[gi].x_next.narrow(0, offset, n);
      const torch::Tensor pred = steps[gi].pred_xstart.narrow(0, offset, n);
      offset += n;
      const int64_t step = r->step++;
      if (!std::all_of(row_finite + row, row_finite + row + n, [](bool f) { return f; })) {
        FailRequest(r, absl::InternalError(absl::StrCat(
                           "sampling produced NaN or infinite values at step ", step, " of ",
                           r->total_steps)));
        continue;
      }
      const bool last = r->step == r->total_steps;
      const int64_t every = r->job.stream_every;
      if (every > 0 && (step % every == 0 || last)) {
        StepUpdate update;
        update.step = step;
        update.total_steps = r->total_steps;
        update.timestep = r->run->model_timestep(step);
        if (r->job.stream_x_t) update.x_t = r->x.to(torch::kCPU, torch::kFloat32);
        if (r->job.stream_pred_xstart) update.pred_xstart = pred.to(torch::kCPU, torch::kFloat32);
        update.elapsed_seconds = Seconds(r->admitted, now);
        r->observer->OnStep(update);
      }
      if (last) Complete(r, Seconds(r->admitted, now));
    }
  }
}

void Engine::Complete(const std::shared_ptr<Request>& r, double sampling_seconds) {
  RECORD_FUNCTION("gd::engine::complete", std::vector<c10::IValue>());
  JobResult result;
  // The promise of the wire: final samples lie in [-1, 1] (the x_0 corrections keep them within
  // float rounding of it; unclipped runs can leave it further).
  result.samples = r->x.to(torch::kCPU, torch::kFloat32).clamp(-1, 1).contiguous();
  result.labels = r->job.labels.empty() ? std::vector<int64_t>(static_cast<size_t>(r->images), 0)
                                        : r->job.labels;
  result.steps = r->total_steps;
  result.queue_seconds = Seconds(r->submitted, r->admitted);
  result.sampling_seconds = sampling_seconds;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ReleaseLocked(*r);
    ++stats_.jobs_completed;
    stats_.images_completed += r->images;
  }
  {
    std::lock_guard<std::mutex> lock(r->handle->mu_);
    r->handle->engine_ = nullptr;
  }
  r->observer->OnFinished(std::move(result));
}

void Engine::RetireFinished() {
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [](const std::shared_ptr<Request>& r) { return r->finished; }),
                 running_.end());
}

}  // namespace gd
