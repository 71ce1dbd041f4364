#include "client/bulk_sample.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/run_state.h"
#include "core/status_macros.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

// Images first .. first + count - 1 of the run: one request.
struct Range {
  int64_t first = 0;
  int64_t count = 0;
};

std::string RangeText(Range range) {
  return range.count == 1
             ? absl::StrCat("image ", range.first)
             : absl::StrCat("images ", range.first, "..", range.first + range.count - 1);
}

bool IsRetryable(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kResourceExhausted;
}

// What can be checked before asking the server anything.
absl::Status CheckOptions(const BulkSampleOptions& options) {
  if (options.num_images < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_images = ", options.num_images, ": a run needs at least one image"));
  }
  if (options.concurrency < 1 || options.concurrency > kMaxConcurrency) {
    return absl::InvalidArgumentError(absl::StrCat("concurrency = ", options.concurrency,
                                                   " is outside [1, ", kMaxConcurrency, "]"));
  }
  if (options.images_per_request < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "images_per_request = ", options.images_per_request, " must be >= 0 (0 = the model's)"));
  }
  const RetryPolicy& retry = options.retry;
  if (retry.max_retries < 0 || retry.initial_backoff_ms < 0 || retry.max_backoff_ms < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("retry: max_retries = ", retry.max_retries,
                     ", initial_backoff_ms = ", retry.initial_backoff_ms,
                     ", max_backoff_ms = ", retry.max_backoff_ms, " must all be >= 0"));
  }
  const auto given = static_cast<int64_t>(options.labels.size());
  if (options.label_choice != LabelChoice::kGiven && given > 0) {
    return absl::InvalidArgumentError("labels are given and also to be chosen (balanced/random)");
  }
  if (given != 0 && given != options.num_images) {
    return absl::InvalidArgumentError(absl::StrCat(
        given, " labels for num_images = ", options.num_images, " (give one per image)"));
  }
  for (size_t i = 0; i < options.labels.size(); ++i) {
    if (options.labels[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("labels[", i, "] = ", options.labels[i], " is negative"));
    }
  }
  if (!options.npz_path.empty() && !options.kept.images) {
    return absl::InvalidArgumentError("npz_path needs the images kept (kept.images)");
  }
  if (options.resume && options.npz_path.empty()) {
    return absl::InvalidArgumentError("resume needs npz_path: the run's parts live beside it");
  }
  return absl::OkStatus();
}

// K, from the options or the model.
absl::StatusOr<int64_t> ImagesPerRequest(const BulkSampleOptions& options,
                                         const v1::ModelInfo& model) {
  const int64_t limit = model.max_images_per_request();
  if (options.images_per_request == 0) return limit > 0 ? limit : kFallbackImagesPerRequest;
  if (limit > 0 && options.images_per_request > limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "images_per_request = ", options.images_per_request,
        " exceeds max_images_per_request = ", limit, " of model \"", model.name(), "\""));
  }
  return options.images_per_request;
}

// Every image's label; empty for an unlabelled run.
absl::StatusOr<std::vector<int64_t>> RunLabels(const BulkSampleOptions& options,
                                               const v1::ModelInfo& model) {
  if (options.label_choice == LabelChoice::kGiven) return options.labels;
  if (model.num_classes() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.label_choice == LabelChoice::kBalanced ? "balanced" : "random",
                     " labels need a model with classes; model \"", model.name(), "\" has none"));
  }
  if (options.label_choice == LabelChoice::kBalanced) {
    return BalancedLabels(options.num_images, model.num_classes());
  }
  return RandomLabels(options.base.seed(), options.num_images, model.num_classes());
}

absl::Status CheckNoise(const BulkSampleOptions& options, const v1::ModelInfo& model) {
  if (!options.noise.has_value()) return absl::OkStatus();
  const std::vector<int64_t> expected = {options.num_images, model.channels(), model.image_size(),
                                         model.image_size()};
  if (options.noise->dtype != formats::DType::kFloat32 || options.noise->shape != expected ||
      options.noise->data.size() != static_cast<size_t>(options.noise->numel()) * 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "noise must be float32 [N, C, H, W] = [", options.num_images, ", ", model.channels(), ", ",
        model.image_size(), ", ", model.image_size(), "] for model \"", model.name(), "\""));
  }
  return absl::OkStatus();
}

// What the run samples (RunState's run.textproto): the shared settings with the resolved model
// name, every label (or num_samples), and in `output` which outputs are kept (uint8 = images,
// float32 = samples).
v1::SampleRequest RunDescription(const BulkSampleOptions& options, const v1::ModelInfo& model,
                                 const std::vector<int64_t>& labels) {
  v1::SampleRequest run = options.base;
  run.set_model(model.name());
  run.clear_labels();
  run.clear_num_samples();
  if (labels.empty()) {
    run.set_num_samples(static_cast<uint32_t>(options.num_images));
  } else {
    run.mutable_labels()->Add(labels.begin(), labels.end());
  }
  run.clear_noise();
  run.clear_first_image_index();
  run.clear_stream();
  run.mutable_output()->Clear();
  run.mutable_output()->set_skip_png(true);
  run.mutable_output()->set_uint8(options.kept.images);
  run.mutable_output()->set_float32(options.kept.samples);
  return run;
}

// The images no part holds, as requests of at most `per_request` images.
std::vector<Range> MissingRanges(int64_t total, const std::vector<RunPart>& parts,
                                 int64_t per_request) {
  std::vector<Range> ranges;
  auto add_gap = [&](int64_t from, int64_t to) {
    for (int64_t first = from; first < to; first += per_request) {
      ranges.push_back({first, std::min(per_request, to - first)});
    }
  };
  int64_t covered = 0;  // parts are sorted and do not overlap
  for (const RunPart& part : parts) {
    add_gap(covered, part.first);
    covered = part.first + part.set.size();
  }
  add_gap(covered, total);
  return ranges;
}

uint64_t SplitMix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// ---- The run ------------------------------------------------------------------------------------

// The requests of one BulkSample call: worker threads take ranges in order, each request with its
// retries; the calling thread reports progress until they are done.
class BulkRun {
 public:
  BulkRun(SamplerClient& client, const BulkSampleOptions& options, v1::SampleRequest run,
          std::vector<Range> todo, const RunState* state, int64_t images_resumed)
      : client_(client),
        options_(options),
        run_(std::move(run)),
        todo_(std::move(todo)),
        state_(state),
        jitter_(std::random_device()()) {
    progress_.images_total = options.num_images;
    progress_.images_done = images_resumed;
    progress_.images_resumed = images_resumed;
  }

  // Runs every range; the first failure, or OK.
  absl::Status Run(const BulkProgressCallback& on_progress);

  // What the requests brought; call after Run.
  std::vector<RunPart> TakeParts() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::move(parts_);
  }
  std::vector<std::string> request_ids() {
    std::lock_guard<std::mutex> lock(mu_);
    return request_ids_;
  }
  int64_t retries() {
    std::lock_guard<std::mutex> lock(mu_);
    return progress_.retries;
  }
  uint32_t steps() {
    std::lock_guard<std::mutex> lock(mu_);
    return steps_;
  }

 private:
  void Work(int worker);
  absl::StatusOr<RunPart> SampleRange(int worker, Range range);
  absl::StatusOr<v1::SampleResponse> Call(int worker, const v1::SampleRequest& request,
                                          int64_t count);
  // Waits before retry `retry` (1-based); false when the run failed meanwhile.
  bool WaitToRetry(int retry, const absl::Status& error);
  v1::SampleRequest RequestFor(Range range) const;

  SamplerClient& client_;
  const BulkSampleOptions& options_;
  const v1::SampleRequest run_;
  const std::vector<Range> todo_;
  const RunState* const state_;  // null: nothing kept on disk

  // A std::mutex rather than absl::Mutex: Debian's absl is not built with ThreadSanitizer, which
  // would see none of absl::Mutex's synchronisation (scripts/sanitizers.sh tsan); pthread's it
  // intercepts. Everything below is guarded by mu_.
  std::mutex mu_;
  std::condition_variable news_;  // MarkChanged: changed_, failure_ or workers_running_ moved
  void MarkChanged() {  // with mu_ held
    changed_ = true;
    news_.notify_all();
  }
  size_t next_ = 0;  // index into todo_
  int workers_running_ = 0;
  bool changed_ = true;
  absl::Status failure_;
  BulkProgress progress_;
  std::vector<double> partial_;  // per worker, in images
  std::mt19937_64 jitter_;
  std::vector<RunPart> parts_;
  std::vector<std::string> request_ids_;
  uint32_t steps_ = 0;
};

absl::Status BulkRun::Run(const BulkProgressCallback& on_progress) {
  const int workers =
      static_cast<int>(std::min<size_t>(static_cast<size_t>(options_.concurrency), todo_.size()));
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    workers_running_ = workers;
    partial_.assign(workers, 0.0);
  }
  threads.reserve(static_cast<size_t>(workers));
  for (int worker = 0; worker < workers; ++worker)
    threads.emplace_back(&BulkRun::Work, this, worker);
  for (bool finished = false; !finished;) {
    BulkProgress snapshot;
    {
      std::unique_lock<std::mutex> lock(mu_);
      news_.wait_for(lock, std::chrono::milliseconds(250),
                     [this] { return changed_ || workers_running_ == 0; });
      changed_ = false;
      finished = workers_running_ == 0;
      snapshot = progress_;
      for (double images : partial_) snapshot.images_partial += images;
    }
    if (on_progress) on_progress(snapshot);
  }
  for (std::thread& thread : threads) thread.join();
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void BulkRun::Work(int worker) {
  for (;;) {
    Range range;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!failure_.ok() || next_ == todo_.size()) break;
      range = todo_[next_++];
      ++progress_.requests_in_flight;
      MarkChanged();
    }
    absl::StatusOr<RunPart> part = SampleRange(worker, range);
    if (part.ok() && state_ != nullptr) {
      if (absl::Status saved = state_->Save(*part); !saved.ok()) part = saved;
    }
    std::lock_guard<std::mutex> lock(mu_);
    --progress_.requests_in_flight;
    partial_[worker] = 0;
    MarkChanged();
    if (!part.ok()) {
      if (failure_.ok()) failure_ = part.status();
      continue;
    }
    progress_.images_done += part->set.size();
    parts_.push_back(*std::move(part));
  }
  std::lock_guard<std::mutex> lock(mu_);
  --workers_running_;
  news_.notify_all();
}

absl::StatusOr<RunPart> BulkRun::SampleRange(int worker, Range range) {
  const v1::SampleRequest request = RequestFor(range);
  for (int retry = 0;; ++retry) {
    absl::StatusOr<v1::SampleResponse> response = Call(worker, request, range.count);
    absl::StatusOr<SampleSet> set =
        response.ok() ? SampleSetFromResponse(*response, options_.kept) : response.status();
    if (set.ok() && set->size() != range.count) {
      set = absl::InternalError(
          absl::StrCat("the server sent ", set->size(), " images for ", range.count));
    }
    if (set.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      request_ids_.push_back(response->request_id());
      steps_ = response->steps();
      return RunPart{range.first, *std::move(set)};
    }
    const absl::Status& error = set.status();
    std::string retried;
    if (IsRetryable(error.code()) && options_.retry.max_retries == 0) {
      retried = " (retries are off)";
    } else if (IsRetryable(error.code()) && retry == options_.retry.max_retries) {
      retried = absl::StrCat(" (gave up after ", retry, retry == 1 ? " retry" : " retries",
                             ", the limit)");
    } else if (retry > 0) {
      retried = absl::StrCat(" (after ", retry, retry == 1 ? " retry)" : " retries)");
    }
    if (!IsRetryable(error.code()) || retry == options_.retry.max_retries ||
        !WaitToRetry(retry + 1, error)) {
      // A run of one request needs no word on which images failed.
      const std::string which =
          range.count < options_.num_images ? absl::StrCat(RangeText(range), ": ") : "";
      return absl::Status(error.code(), absl::StrCat(which, error.message(), retried));
    }
  }
}

absl::StatusOr<v1::SampleResponse> BulkRun::Call(int worker, const v1::SampleRequest& request,
                                                 int64_t count) {
  if (!options_.stream_steps) return client_.Sample(request);
  return client_.StreamSample(request, [&](const v1::SampleEvent& event) {
    if (event.has_step() && event.step().total_steps() > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      partial_[worker] =
          static_cast<double>(count) * (event.step().step() + 1) / event.step().total_steps();
      MarkChanged();
    }
    return true;
  });
}

bool BulkRun::WaitToRetry(int retry, const absl::Status& error) {
  std::unique_lock<std::mutex> lock(mu_);
  ++progress_.retries;
  progress_.last_retry = error;
  MarkChanged();
  const RetryPolicy& policy = options_.retry;
  const double doubled =
      static_cast<double>(policy.initial_backoff_ms) * std::pow(2.0, std::min(retry - 1, 30));
  const double backoff_ms = std::min(doubled, static_cast<double>(policy.max_backoff_ms)) *
                            std::uniform_real_distribution<double>(0.75, 1.25)(jitter_);
  // Another request's failure ends the run: stop waiting at once.
  return !news_.wait_for(lock, std::chrono::duration<double, std::milli>(backoff_ms),
                         [this] { return !failure_.ok(); });
}

v1::SampleRequest BulkRun::RequestFor(Range range) const {
  v1::SampleRequest request = run_;
  request.clear_labels();
  request.clear_num_samples();
  if (run_.labels_size() > 0) {
    request.mutable_labels()->Add(run_.labels().begin() + range.first,
                                  run_.labels().begin() + range.first + range.count);
  } else {
    request.set_num_samples(static_cast<uint32_t>(range.count));
  }
  request.set_first_image_index(static_cast<uint64_t>(range.first));
  if (options_.noise.has_value()) {
    const formats::Array& noise = *options_.noise;
    const size_t row_bytes = noise.data.size() / static_cast<size_t>(noise.shape[0]);
    const auto first = static_cast<size_t>(range.first), count = static_cast<size_t>(range.count);
    v1::Tensor* tensor = request.mutable_noise();
    tensor->set_dtype(v1::DTYPE_FLOAT32);
    tensor->add_shape(range.count);
    tensor->mutable_shape()->Add(noise.shape.begin() + 1, noise.shape.end());
    tensor->set_data(noise.data.substr(first * row_bytes, count * row_bytes));
  }
  *request.mutable_output() = WireOutputs(options_.kept);
  if (options_.stream_steps) request.mutable_stream()->set_every(1);  // progress only
  return request;
}

}  // namespace

// ---- BulkSample ---------------------------------------------------------------------------------

absl::StatusOr<BulkResult> BulkSample(SamplerClient& client, const BulkSampleOptions& options,
                                      const BulkProgressCallback& on_progress) {
  const absl::Time start = absl::Now();
  RETURN_IF_ERROR(CheckOptions(options));
  BulkResult result;
  ASSIGN_OR_RETURN(result.model, client.GetModel(options.base.model()));
  ASSIGN_OR_RETURN(auto per_request, ImagesPerRequest(options, result.model));
  result.images_per_request = per_request;
  ASSIGN_OR_RETURN(auto labels, RunLabels(options, result.model));
  RETURN_IF_ERROR(CheckNoise(options, result.model));
  v1::SampleRequest run = RunDescription(options, result.model, labels);

  std::unique_ptr<RunState> state;
  std::vector<RunPart> parts;
  if (!options.npz_path.empty()) {
    ASSIGN_OR_RETURN(state, RunState::Open(RunStateDir(options.npz_path), run, options.noise,
                                           options.resume));
    parts = state->TakeLoaded();
  }
  for (const RunPart& part : parts) result.images_resumed += part.set.size();

  std::vector<Range> todo = MissingRanges(options.num_images, parts, result.images_per_request);
  BulkRun bulk(client, options, std::move(run), std::move(todo), state.get(),
               result.images_resumed);
  if (absl::Status status = bulk.Run(on_progress); !status.ok()) {
    if (state == nullptr) return status;
    int64_t kept = result.images_resumed;
    for (const RunPart& part : bulk.TakeParts()) kept += part.set.size();
    return absl::Status(status.code(), absl::StrCat(status.message(), "; the ", kept,
                                                    " images finished are kept in ", state->dir(),
                                                    " (resume to sample only the rest)"));
  }
  result.requests = static_cast<int64_t>(bulk.request_ids().size());
  result.request_ids = bulk.request_ids();
  result.retries = bulk.retries();
  result.steps = bulk.steps();

  // Assemble the parts in image order.
  for (RunPart& part : bulk.TakeParts()) parts.push_back(std::move(part));
  std::sort(parts.begin(), parts.end(),
            [](const RunPart& a, const RunPart& b) { return a.first < b.first; });
  std::vector<const SampleSet*> sets;
  sets.reserve(parts.size());
  for (const RunPart& part : parts) sets.push_back(&part.set);
  ASSIGN_OR_RETURN(result.samples, ConcatSampleSets(sets));
  if (state != nullptr) {
    absl::Status written =
        WriteSampleSetNpz(options.npz_path, result.samples, /*with_samples=*/false);
    if (written.ok()) written = state->Remove();
    if (!written.ok()) return written;
  }
  result.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return result;
}

std::vector<int64_t> BalancedLabels(int64_t count, int64_t num_classes) {
  std::vector<int64_t> labels(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) labels[i] = i % num_classes;
  return labels;
}

std::vector<int64_t> RandomLabels(uint64_t seed, int64_t count, int64_t num_classes) {
  constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;
  std::vector<int64_t> labels(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t mixed = SplitMix64(seed + (static_cast<uint64_t>(i) + 1) * kGoldenGamma);
    labels[i] = static_cast<int64_t>(mixed % static_cast<uint64_t>(num_classes));
  }
  return labels;
}

}  // namespace gd::client
