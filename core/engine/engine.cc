#include "core/engine/engine.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/nn/guidance.h"

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

}  // namespace

// A request's images advance together: they are admitted in the same iteration and share a
// step count, so one request is a contiguous run of slots in every batch.
struct Engine::Request {
  SampleJob job;
  std::shared_ptr<JobObserver> observer;
  std::shared_ptr<JobHandle> handle;
  std::shared_ptr<const GaussianDiffusion> process;
  int64_t images = 0;
  int64_t total_steps = 0;
  Clock::time_point submitted;
  Clock::time_point admitted;

  // Slot state, on the engine's device.
  torch::Tensor x;                         // [N x C x H x W] float32: the current x_t
  std::vector<torch::Generator> streams;   // one random stream per image
  torch::Tensor labels;                    // [N] int64 (zeros when the request has none)
  int64_t step = 0;                        // steps done
  bool active = false;                     // holds slots in the batch
  bool finished = false;
};

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
      options.max_steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine: max_batch = ", options.max_batch, " must be >= 1 and the other limits >= 0"));
  }
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
  // The model's own process must exist (its respacing was checked when the model loaded).
  if (auto p = engine->Process(engine->bundle_->diffusion.timestep_respacing); !p.ok()) {
    return p.status();
  }
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

absl::StatusOr<std::shared_ptr<const GaussianDiffusion>> Engine::Process(
    const std::string& respacing) const {
  std::lock_guard<std::mutex> lock(process_mu_);
  auto it = processes_.find(respacing);
  if (it != processes_.end()) return it->second;
  auto created = GaussianDiffusion::Create(bundle_->diffusion, respacing);
  if (!created.ok()) {
    return absl::Status(created.status().code(),
                        absl::StrCat("timestep_respacing: ", created.status().message()));
  }
  auto process = std::make_shared<GaussianDiffusion>(std::move(*created));
  process->To(device_);
  // Bounded: a hostile caller could send many distinct respacings.
  if (processes_.size() >= 64) processes_.erase(processes_.begin());
  processes_[respacing] = process;
  return std::shared_ptr<const GaussianDiffusion>(process);
}

absl::Status Engine::Validate(const SampleJob& job) const {
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
  if (!std::isfinite(job.eta) || job.eta < 0 || job.eta > 1) {
    return Invalid(absl::StrCat("eta = ", job.eta, " is outside [0, 1]"));
  }
  if (job.eta != 0 && job.sampler != SamplerKind::kDdim) {
    return Invalid(absl::StrCat("eta = ", job.eta, " applies to DDIM only; DDPM needs eta 0"));
  }
  auto process = Process(job.timestep_respacing);
  if (!process.ok()) return process.status();
  const int64_t steps = (*process)->num_timesteps();
  if (options_.max_steps > 0 && steps > options_.max_steps) {
    return Invalid(absl::StrCat("timestep_respacing \"", job.timestep_respacing, "\" runs ", steps,
                                " steps; this server allows at most ", options_.max_steps));
  }
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
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<JobHandle>> Engine::Submit(SampleJob job,
                                                         std::shared_ptr<JobObserver> observer) {
  if (auto status = Validate(job); !status.ok()) return status;
  auto request = std::make_shared<Request>();
  request->images = job.num_images();
  request->process = *Process(job.timestep_respacing);
  request->total_steps = request->process->num_timesteps();
  request->observer = std::move(observer);
  request->handle = std::make_shared<JobHandle>();
  request->handle->total_steps_ = request->total_steps;
  request->submitted = Clock::now();
  request->job = std::move(job);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the server is shutting down");
    if (queued_images_ + request->images > options_.max_queue_images) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the queue of model \"", bundle_->name, "\" is full: ", queued_images_, " images wait, ",
          request->images, " more would pass max_queue_images = ", options_.max_queue_images,
          "; retry later"));
    }
    request->handle->queued_images_ahead_ = queued_images_;
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

void Engine::ReleaseLocked(Request& request) {
  // Slots are given back before the observer hears of the end, so that anyone who waits for
  // OnDone sees consistent statistics.
  if (request.active) stats_.active_slots -= request.images;
  request.active = false;
  request.finished = true;
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Engine::FailRequest(const std::shared_ptr<Request>& request, const absl::Status& status) {
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
  request->observer->OnDone(status);
}

void Engine::Run() {
  torch::NoGradGuard no_grad;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty() || !running_.empty(); });
      const bool past_deadline = stopping_ && Clock::now() >= stop_deadline_;
      if (stopping_ && (past_deadline || (queue_.empty() && running_.empty()))) {
        std::vector<std::shared_ptr<Request>> left(queue_.begin(), queue_.end());
        queue_.clear();
        queued_images_ = 0;
        stats_.queued_images = 0;
        lock.unlock();
        left.insert(left.end(), running_.begin(), running_.end());
        running_.clear();
        for (auto& r : left) FailRequest(r, absl::UnavailableError("the server is shutting down"));
        return;
      }
      Admit(lock);
    }
    if (running_.empty()) continue;
    try {
      Iterate();
    } catch (const c10::Error& e) {
      // A failure of the batch (out of memory, a kernel error) fails the requests in it; the
      // engine and the queue carry on.
      const absl::Status status = absl::InternalError(
          absl::StrCat("sampling failed: ", e.what_without_backtrace()));
      for (auto& r : running_) FailRequest(r, status);
    }
    RetireFinished();
  }
}

void Engine::Admit(std::unique_lock<std::mutex>& lock) {
  int64_t active = 0;
  for (const auto& r : running_) active += r->images;
  std::vector<std::shared_ptr<Request>> admitted, cancelled;
  while (!queue_.empty()) {
    const auto& next = queue_.front();
    if (next->handle->cancelled()) {
      cancelled.push_back(next);
    } else if (active + next->images > options_.max_batch) {
      break;  // first come, first served: later requests wait behind the head
    } else {
      active += next->images;
      next->active = true;
      admitted.push_back(next);
    }
    queued_images_ -= next->images;
    queue_.pop_front();
  }
  stats_.queued_images = queued_images_;
  stats_.active_slots = active;
  lock.unlock();
  for (auto& r : cancelled) FailRequest(r, absl::CancelledError("cancelled while queued"));
  const Clock::time_point now = Clock::now();
  const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
  const std::vector<int64_t> image_shape = {bundle_->channels(), bundle_->image_size(),
                                            bundle_->image_size()};
  for (auto& r : admitted) {
    try {
      r->admitted = now;
      std::vector<torch::Tensor> x_T;
      for (int64_t i = 0; i < r->images; ++i) {
        r->streams.push_back(MakeGenerator(DeriveSeed(r->job.seed, static_cast<uint64_t>(i)),
                                           device_));
        if (!r->job.noise.has_value()) x_T.push_back(torch::randn(image_shape, r->streams.back(), options));
      }
      r->x = r->job.noise.has_value() ? r->job.noise->to(options).contiguous()
                                      : torch::stack(x_T);
      r->labels = r->job.labels.empty()
                      ? torch::zeros({r->images}, torch::TensorOptions().dtype(torch::kInt64).device(device_))
                      : torch::tensor(r->job.labels, torch::kInt64).to(device_);
      r->observer->OnAdmitted(r->total_steps);
      running_.push_back(r);
    } catch (const c10::Error& e) {
      FailRequest(r, absl::InternalError(absl::StrCat("admission failed: ",
                                                      e.what_without_backtrace())));
    }
  }
  lock.lock();
}

void Engine::Iterate() {
  const Clock::time_point started = Clock::now();
  // Leave out what was cancelled or ran out of time since the last iteration.
  for (auto& r : running_) {
    if (r->handle->cancelled()) {
      FailRequest(r, absl::CancelledError("cancelled"));
    } else if (r->job.deadline.has_value() && started >= *r->job.deadline) {
      FailRequest(r, absl::DeadlineExceededError(absl::StrCat(
                         "deadline exceeded after ", r->step, " of ", r->total_steps, " steps")));
    }
  }
  RetireFinished();
  if (running_.empty()) return;

  // Gather the batch: rows of each request, its timestep's coefficients and its options.
  std::vector<torch::Tensor> xs, coefs, model_ts, labels, noise;
  std::vector<float> clip, guided, ddim, eta, scale;
  bool any_ddpm = false, any_ddim = false, any_guided = false, all_clip = true, no_clip = true;
  for (const auto& r : running_) {
    const int64_t n = r->images;
    const int64_t t = r->total_steps - 1 - r->step;  // respaced index
    const torch::Tensor t1 = torch::full({1}, t, torch::TensorOptions().dtype(torch::kInt64).device(device_));
    xs.push_back(r->x);
    coefs.push_back(r->process->Gather(t1).table.expand({n, -1}));
    model_ts.push_back(r->process->ModelTimesteps(t1).expand({n}));
    labels.push_back(r->labels);
    for (int64_t i = 0; i < n; ++i) noise.push_back(torch::randn(r->x.sizes().slice(1), r->streams[i], r->x.options()));
    const bool is_ddim = r->job.sampler == SamplerKind::kDdim;
    const bool is_guided = r->job.classifier_scale > 0;
    any_ddim |= is_ddim;
    any_ddpm |= !is_ddim;
    any_guided |= is_guided;
    all_clip &= r->job.clip_denoised;
    no_clip &= !r->job.clip_denoised;
    clip.insert(clip.end(), n, r->job.clip_denoised ? 1.f : 0.f);
    guided.insert(guided.end(), n, is_guided ? 1.f : 0.f);
    ddim.insert(ddim.end(), n, is_ddim ? 1.f : 0.f);
    eta.insert(eta.end(), n, static_cast<float>(r->job.eta));
    scale.insert(scale.end(), n, static_cast<float>(r->job.classifier_scale));
  }
  const int64_t batch = static_cast<int64_t>(clip.size());
  auto column = [&](const std::vector<float>& v) {
    return torch::tensor(v, torch::kFloat32).to(device_).view({batch, 1, 1, 1});
  };
  const torch::Tensor x = options_.channels_last
                              ? torch::cat(xs).contiguous(torch::MemoryFormat::ChannelsLast)
                              : torch::cat(xs);
  const StepCoefficients c{torch::cat(coefs)};
  const torch::Tensor model_t = torch::cat(model_ts);
  const torch::Tensor y = torch::cat(labels);
  const torch::Tensor z = torch::stack(noise);

  const Clock::time_point forward_start = Clock::now();
  const torch::Tensor output =
      bundle_->unet->forward(x, model_t, bundle_->class_conditional() ? y : torch::Tensor());
  const double forward_seconds = Seconds(forward_start, Clock::now());

  MeanVarOptions mv_options;
  mv_options.clip_denoised = all_clip;
  if (!all_clip && !no_clip) {
    const torch::Tensor clip_rows = column(clip).to(torch::kBool);
    mv_options.clip_denoised = false;
    mv_options.denoised_fn = [clip_rows](const torch::Tensor& x0) {
      return torch::where(clip_rows, x0.clamp(-1, 1), x0);
    };
  }
  const auto& types = bundle_->diffusion;
  MeanVar pmv = PMeanVarianceFromOutput(types.mean_type(), types.var_type(), c, output, x, mv_options);

  // Classifier guidance: one forward+backward over the guided rows only.
  torch::Tensor grad;
  int64_t guided_rows = 0;
  if (any_guided) {
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < batch; ++i) {
      if (guided[i] > 0) rows.push_back(i);
    }
    guided_rows = static_cast<int64_t>(rows.size());
    const torch::Tensor index = torch::tensor(rows, torch::kInt64).to(device_);
    const torch::Tensor g = ClassifierGradient(
        bundle_->classifier, x.index_select(0, index), model_t.index_select(0, index),
        y.index_select(0, index), torch::tensor(scale, torch::kFloat32).to(device_).index_select(0, index));
    grad = torch::zeros_like(x).index_copy(0, index, g);
  }

  torch::Tensor sample, pred_xstart = pmv.pred_xstart;
  if (any_ddpm) {
    // Algorithm 1: the mean moves by variance * gradient (zero gradient rows stay exact).
    const torch::Tensor mean = grad.defined() ? ConditionMean(pmv, grad) : pmv.mean;
    sample = DdpmStep(c, mean, pmv.log_variance, z);
  }
  if (any_ddim) {
    // Algorithm 2: the score moves, then x_0 is re-derived; unguided rows keep theirs exactly.
    torch::Tensor ddim_x0 = pmv.pred_xstart;
    if (grad.defined()) {
      ddim_x0 = torch::where(column(guided).to(torch::kBool),
                             ConditionScore(c, pmv, x, grad).pred_xstart, pmv.pred_xstart);
    }
    const torch::Tensor ddim_sample = DdimStep(c, x, ddim_x0, column(eta), z);
    if (any_ddpm) {
      const torch::Tensor ddim_rows = column(ddim).to(torch::kBool);
      sample = torch::where(ddim_rows, ddim_sample, sample);
      pred_xstart = torch::where(ddim_rows, ddim_x0, pred_xstart);
    } else {
      sample = ddim_sample;
      pred_xstart = ddim_x0;
    }
  }

  // Counted before any observer hears of this iteration, so its statistics are consistent.
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.iterations;
    stats_.slot_steps += batch;
    stats_.guided_slot_steps += guided_rows;
    stats_.classifier_calls += guided_rows > 0 ? 1 : 0;
    stats_.max_batch_seen = std::max(stats_.max_batch_seen, batch);
    stats_.max_requests_in_batch =
        std::max(stats_.max_requests_in_batch, static_cast<int64_t>(running_.size()));
    if (batch < static_cast<int64_t>(stats_.batch_size_counts.size())) {
      ++stats_.batch_size_counts[static_cast<size_t>(batch)];
    }
    stats_.forward_seconds += forward_seconds;
    const double step_seconds = Seconds(started, Clock::now());
    stats_.step_seconds += step_seconds;
    const auto& bounds = EngineStats::StepSecondsBounds();
    const size_t bucket = static_cast<size_t>(
        std::lower_bound(bounds.begin(), bounds.end(), step_seconds) - bounds.begin());
    ++stats_.step_seconds_buckets[bucket];
  }

  // Scatter back, stream what was asked, finish what reached x_0.
  int64_t offset = 0;
  const Clock::time_point now = Clock::now();
  for (auto& r : running_) {
    const int64_t n = r->images;
    r->x = sample.narrow(0, offset, n);
    const torch::Tensor r_pred = pred_xstart.narrow(0, offset, n);
    offset += n;
    const int64_t step = r->step++;
    const bool last = r->step == r->total_steps;
    const int64_t every = r->job.stream_every;
    if (every > 0 && (step % every == 0 || last)) {
      StepUpdate update;
      update.step = step;
      update.total_steps = r->total_steps;
      update.timestep = r->process->timestep_map()[r->total_steps - 1 - step];
      if (r->job.stream_x_t) update.x_t = r->x.to(torch::kCPU, torch::kFloat32);
      if (r->job.stream_pred_xstart) update.pred_xstart = r_pred.to(torch::kCPU, torch::kFloat32);
      update.elapsed_seconds = Seconds(r->admitted, now);
      r->observer->OnStep(update);
    }
    if (last) {
      JobResult result;
      result.samples = r->x.to(torch::kCPU, torch::kFloat32).contiguous();
      if (!torch::isfinite(result.samples).all().item<bool>()) {
        FailRequest(r, absl::InternalError("sampling produced NaN or infinite values"));
        continue;
      }
      result.labels = r->job.labels.empty() ? std::vector<int64_t>(static_cast<size_t>(n), 0)
                                            : r->job.labels;
      result.steps = r->total_steps;
      result.queue_seconds = Seconds(r->submitted, r->admitted);
      result.sampling_seconds = Seconds(r->admitted, now);
      {
        std::lock_guard<std::mutex> lock(mu_);
        ReleaseLocked(*r);
        ++stats_.jobs_completed;
        stats_.images_completed += n;
      }
      r->observer->OnDone(std::move(result));
    }
  }

}

void Engine::RetireFinished() {
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [](const std::shared_ptr<Request>& r) { return r->finished; }),
                 running_.end());
}

}  // namespace gd
