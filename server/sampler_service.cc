#include "server/sampler_service.h"

#include <chrono>
#include <deque>
#include <random>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/codec.h"

namespace gd::server {
namespace {

using Clock = std::chrono::steady_clock;
using v1::SampleEvent;

// Sample: the engine's result, encoded on the executor, finishes the call. gRPC holds `self_`
// until OnDone(); the engine and executor tasks hold their own references.
class SampleReactor final : public grpc::ServerUnaryReactor,
                            public JobObserver,
                            public std::enable_shared_from_this<SampleReactor> {
 public:
  SampleReactor(SamplerService* service, grpc::CallbackServerContext* context,
                const v1::SampleRequest* request, v1::SampleResponse* response)
      : service_(service), context_(context), request_(request), response_(response) {}

  void Start(std::shared_ptr<SampleReactor> self) {
    self_ = std::move(self);
    record_.request_id = service_->NextRequestId();
    record_.method = "Sample";
    started_ = Clock::now();
    if (auto auth = service_->Authenticate(*context_); !auth.ok()) return FinishWith(auth, 0);
    auto engine = service_->registry().Find(request_->model());
    if (!engine.ok()) return FinishWith(engine.status(), 0);
    record_.model = (*engine)->bundle().name;
    auto job = JobFromRequest(*request_);
    if (!job.ok()) return FinishWith(job.status(), 0);
    job->request_id = record_.request_id;
    job->stream_every = 0;
    if (context_->deadline() != std::chrono::system_clock::time_point::max()) {
      job->deadline = started_ + (context_->deadline() - std::chrono::system_clock::now());
    }
    record_.images = job->num_images();
    record_.sampler = SamplerName(job->sampler);
    record_.classifier_scale = job->classifier_scale;
    std::lock_guard<std::mutex> lock(mu_);
    auto handle = (*engine)->Submit(std::move(*job), shared_from_this());
    if (!handle.ok()) {
      // Finish outside the lock.
      service_->executor().Post([self = shared_from_this(), status = handle.status()] {
        self->FinishWith(status, 0);
      });
      return;
    }
    handle_ = *handle;
    record_.steps = handle_->total_steps();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (handle_) handle_->Cancel();
  }

  void OnDone() override {
    std::shared_ptr<SampleReactor> keep;
    std::lock_guard<std::mutex> lock(mu_);
    keep = std::move(self_);
  }

  // JobObserver (engine thread): hand the encoding to the executor. Taking the lock orders
  // Start's writes to record_ (made under it, across Submit) before Complete reads them: a job
  // the engine ends at once (an expired deadline) can finish before Start returns.
  void OnFinished(absl::StatusOr<JobResult> result) override {
    std::lock_guard<std::mutex> lock(mu_);
    service_->executor().Post([self = shared_from_this(), result = std::move(result)]() mutable {
      self->Complete(std::move(result));
    });
  }

 private:
  void Complete(absl::StatusOr<JobResult> result) {
    if (!result.ok()) return FinishWith(result.status(), 0);
    auto response = ResponseFromResult(*result, request_->output());
    if (!response.ok()) return FinishWith(response.status(), result->queue_seconds);
    *response_ = std::move(*response);
    response_->set_request_id(record_.request_id);
    response_->set_model(record_.model);
    FinishWith(absl::OkStatus(), result->queue_seconds);
  }

  void FinishWith(const absl::Status& status, double queue_seconds) {
    record_.code = status.code();
    record_.message = std::string(Bounded(status).message());
    record_.seconds = std::chrono::duration<double>(Clock::now() - started_).count();
    record_.queue_seconds = queue_seconds;
    service_->Finished(record_);
    Finish(ToGrpc(status));
  }

  SamplerService* service_;
  grpc::CallbackServerContext* context_;
  const v1::SampleRequest* request_;
  v1::SampleResponse* response_;
  std::mutex mu_;
  std::shared_ptr<SampleReactor> self_;
  std::shared_ptr<JobHandle> handle_;
  RequestRecord record_;
  Clock::time_point started_;
};

// StreamSample: Accepted, step events and the result, written one at a time. Decisions are
// taken under the lock, gRPC operations (StartWrite, Finish) are called outside it.
class StreamReactor final : public grpc::ServerWriteReactor<SampleEvent>,
                            public JobObserver,
                            public std::enable_shared_from_this<StreamReactor> {
 public:
  StreamReactor(SamplerService* service, grpc::CallbackServerContext* context,
                const v1::SampleRequest* request)
      : service_(service), context_(context), request_(request) {}

  void Start(std::shared_ptr<StreamReactor> self) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      self_ = std::move(self);
    }
    record_.request_id = service_->NextRequestId();
    record_.method = "StreamSample";
    started_ = Clock::now();
    if (auto auth = service_->Authenticate(*context_); !auth.ok()) return FinishEarly(auth);
    if (auto open = service_->OpenStream(); !open.ok()) return FinishEarly(open);
    counted_ = true;
    auto engine = service_->registry().Find(request_->model());
    if (!engine.ok()) return FinishEarly(engine.status());
    record_.model = (*engine)->bundle().name;
    auto job = JobFromRequest(*request_);
    if (!job.ok()) return FinishEarly(job.status());
    job->request_id = record_.request_id;
    if (context_->deadline() != std::chrono::system_clock::time_point::max()) {
      job->deadline = started_ + (context_->deadline() - std::chrono::system_clock::now());
    }
    record_.images = job->num_images();
    record_.sampler = SamplerName(job->sampler);
    record_.classifier_scale = job->classifier_scale;
    Action action;
    {
      // Held across Submit so that engine events queue behind Accepted.
      std::lock_guard<std::mutex> lock(mu_);
      auto handle = (*engine)->Submit(std::move(*job), shared_from_this());
      if (!handle.ok()) {
        engine_done_ = true;
        ReportLocked(handle.status(), 0);
        finish_status_ = ToGrpc(handle.status());
        action = DecideLocked();
      } else {
        handle_ = *handle;
        record_.steps = handle_->total_steps();
        Pending accepted;
        auto* a = accepted.event.mutable_accepted();
        a->set_request_id(record_.request_id);
        a->set_total_steps(static_cast<uint32_t>(handle_->total_steps()));
        a->set_num_images(static_cast<uint32_t>(record_.images));
        a->set_queued_images_ahead(static_cast<uint32_t>(handle_->queued_images_ahead()));
        accepted.encoded = true;
        pending_.push_front(std::move(accepted));
        action = DecideLocked();
      }
    }
    Act(action);
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (handle_) handle_->Cancel();
  }

  void OnWriteDone(bool ok) override {
    Action action;
    {
      std::lock_guard<std::mutex> lock(mu_);
      write_in_flight_ = false;
      if (!ok) {
        // The client is gone: stop the work; the engine reports the cancellation.
        client_gone_ = true;
        if (handle_) handle_->Cancel();
      }
      action = DecideLocked();
    }
    Act(action);
  }

  void OnDone() override {
    if (counted_) service_->CloseStream();
    std::shared_ptr<StreamReactor> keep;
    std::lock_guard<std::mutex> lock(mu_);
    grpc_done_ = true;
    keep = std::move(self_);  // the engine's and the executor's references keep it as needed
  }

  // JobObserver (engine thread): queue, never block.
  void OnStep(const StepUpdate& update) override {
    Action action;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // A slow reader skips steps instead of holding unbounded memory.
      while (static_cast<int>(pending_.size()) >= service_->options().max_pending_events &&
             pending_.front().step.has_value()) {
        pending_.pop_front();
        ++dropped_steps_;
      }
      Pending p;
      p.step = update;
      pending_.push_back(std::move(p));
      action = DecideLocked();
    }
    Act(action);
  }

  void OnFinished(absl::StatusOr<JobResult> result) override {
    Action action;
    {
      std::lock_guard<std::mutex> lock(mu_);
      engine_done_ = true;
      if (result.ok()) {
        Pending p;
        p.result = std::move(*result);
        pending_.push_back(std::move(p));
      } else {
        ReportLocked(result.status(), 0);
        finish_status_ = ToGrpc(result.status());
        pending_.clear();  // an error ends the stream now
      }
      action = DecideLocked();
    }
    Act(action);
  }

 private:
  struct Pending {
    SampleEvent event;  // ready when `encoded`
    bool encoded = false;
    std::optional<StepUpdate> step;
    std::optional<JobResult> result;
  };
  enum class Action { kNone, kEncode, kWrite, kFinish };

  void FinishEarly(const absl::Status& status) {
    Action action;
    {
      std::lock_guard<std::mutex> lock(mu_);
      engine_done_ = true;
      ReportLocked(status, 0);
      finish_status_ = ToGrpc(status);
      action = DecideLocked();
    }
    Act(action);
  }

  // What to do next. Finish once nothing is in flight and either an error (or the client's
  // departure) ended the stream or the final event has been written.
  Action DecideLocked() {
    if (finished_ || write_in_flight_ || encoding_) return Action::kNone;
    if (finish_status_.has_value() || wrote_final_ || (client_gone_ && engine_done_)) {
      finished_ = true;
      if (client_gone_ && !finish_status_.has_value()) {
        finish_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
      return Action::kFinish;
    }
    if (client_gone_ || pending_.empty() || handle_ == nullptr || !self_) return Action::kNone;
    encoding_ = true;
    return Action::kEncode;
  }

  void Act(Action action) {
    if (action == Action::kFinish) {
      if (dropped_steps_ > 0) {
        spdlog::warn("request {}: a slow reader skipped {} step events", record_.request_id,
                     dropped_steps_);
      }
      Finish(finish_status_.value_or(grpc::Status::OK));
    } else if (action == Action::kEncode) {
      service_->executor().Post([self = shared_from_this()] { self->EncodeNext(); });
    } else if (action == Action::kWrite) {
      StartWrite(&current_);
    }
  }

  // On the executor: encode the oldest pending event, then write it.
  void EncodeNext() {
    Pending next;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (pending_.empty()) {
        // An error (which clears the queue) arrived after this encode was posted; its own
        // decision deferred to this one, so the stream is finished from here.
        encoding_ = false;
        const Action action = DecideLocked();
        lock.unlock();
        Act(action);
        return;
      }
      next = std::move(pending_.front());
      pending_.pop_front();
    }
    absl::Status status;
    const bool final = next.result.has_value();
    if (!next.encoded) {
      if (next.step.has_value()) {
        auto event = StepEventFromUpdate(*next.step, request_->stream(), record_.images);
        if (event.ok()) {
          *next.event.mutable_step() = std::move(*event);
        } else {
          status = event.status();
        }
      } else {
        auto response = ResponseFromResult(*next.result, request_->output());
        if (response.ok()) {
          response->set_request_id(record_.request_id);
          response->set_model(record_.model);
          *next.event.mutable_result() = std::move(*response);
        } else {
          status = response.status();
        }
      }
    }
    Action action;
    {
      std::lock_guard<std::mutex> lock(mu_);
      encoding_ = false;
      if (!status.ok()) {
        ReportLocked(status, 0);
        finish_status_ = ToGrpc(status);
        if (handle_) handle_->Cancel();
        action = DecideLocked();
      } else if (finished_ || finish_status_.has_value() || client_gone_) {
        action = DecideLocked();
      } else {
        if (final) ReportLocked(absl::OkStatus(), next.result->queue_seconds);
        wrote_final_ = final;
        write_in_flight_ = true;
        current_ = std::move(next.event);
        action = Action::kWrite;
      }
    }
    Act(action);
  }

  void ReportLocked(const absl::Status& status, double queue_seconds) {
    if (reported_) return;
    reported_ = true;
    record_.code = status.code();
    record_.message = std::string(Bounded(status).message());
    record_.seconds = std::chrono::duration<double>(Clock::now() - started_).count();
    record_.queue_seconds = queue_seconds;
    service_->Finished(record_);
  }

  SamplerService* service_;
  grpc::CallbackServerContext* context_;
  const v1::SampleRequest* request_;
  std::mutex mu_;
  std::shared_ptr<StreamReactor> self_;  // gRPC's reference, dropped in OnDone()
  std::shared_ptr<JobHandle> handle_;
  std::deque<Pending> pending_;
  SampleEvent current_;
  bool encoding_ = false;
  bool write_in_flight_ = false;
  bool wrote_final_ = false;
  bool finished_ = false;
  bool reported_ = false;
  bool client_gone_ = false;
  bool engine_done_ = false;
  bool grpc_done_ = false;
  bool counted_ = false;  // holds one of max_concurrent_streams
  int64_t dropped_steps_ = 0;
  std::optional<grpc::Status> finish_status_;
  RequestRecord record_;
  Clock::time_point started_;
};

}  // namespace

SamplerService::SamplerService(std::shared_ptr<ModelRegistry> registry, ServiceOptions options)
    : registry_(std::move(registry)),
      options_(std::move(options)),
      executor_(std::max(1, options_.encoder_threads)),
      id_salt_(std::random_device{}()) {}

SamplerService::~SamplerService() = default;

std::string SamplerService::NextRequestId() {
  return absl::StrFormat("%08x-%06d", static_cast<uint32_t>(id_salt_), next_id_.fetch_add(1));
}

void SamplerService::Finished(const RequestRecord& r) {
  const std::string status = absl::StatusCodeToString(r.code);
  if (r.code == absl::StatusCode::kOk) {
    spdlog::info("request {} {} model={} images={} steps={} sampler={} scale={} status=OK "
                 "seconds={:.3f} queue={:.3f}",
                 r.request_id, r.method, r.model, r.images, r.steps, r.sampler,
                 r.classifier_scale, r.seconds, r.queue_seconds);
  } else {
    spdlog::warn("request {} {} model={} images={} steps={} sampler={} scale={} status={} "
                 "seconds={:.3f}: {}",
                 r.request_id, r.method, r.model.empty() ? "?" : r.model, r.images, r.steps,
                 r.sampler.empty() ? "?" : r.sampler, r.classifier_scale, status, r.seconds,
                 r.message);
  }
  if (options_.on_request_done) options_.on_request_done(r);
}

grpc::ServerUnaryReactor* SamplerService::Sample(grpc::CallbackServerContext* context,
                                                 const v1::SampleRequest* request,
                                                 v1::SampleResponse* response) {
  auto reactor = std::make_shared<SampleReactor>(this, context, request, response);
  SampleReactor* raw = reactor.get();
  raw->Start(reactor);  // the local reference outlives Start, even if the call ends inside it
  return raw;
}

grpc::ServerWriteReactor<v1::SampleEvent>* SamplerService::StreamSample(
    grpc::CallbackServerContext* context, const v1::SampleRequest* request) {
  auto reactor = std::make_shared<StreamReactor>(this, context, request);
  StreamReactor* raw = reactor.get();
  raw->Start(reactor);
  return raw;
}

absl::Status SamplerService::Authenticate(const grpc::CallbackServerContext& context) const {
  if (options_.auth_tokens.empty()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("missing \"authorization: Bearer <token>\" metadata");
  }
  const std::string value(it->second.data(), it->second.size());
  const std::string kPrefix = "Bearer ";
  if (value.size() <= kPrefix.size() || value.compare(0, kPrefix.size(), kPrefix) != 0) {
    return absl::UnauthenticatedError("the authorization metadata is not \"Bearer <token>\"");
  }
  const std::string token = value.substr(kPrefix.size());
  bool match = false;
  for (const std::string& expected : options_.auth_tokens) {
    // Constant time in the token's contents: every byte is compared whatever differs first.
    unsigned char diff = token.size() == expected.size() ? 0 : 1;
    for (size_t i = 0; i < expected.size(); ++i) {
      const unsigned char a = i < token.size() ? static_cast<unsigned char>(token[i]) : 0;
      diff |= static_cast<unsigned char>(a ^ static_cast<unsigned char>(expected[i]));
    }
    match |= diff == 0;
  }
  if (!match) return absl::UnauthenticatedError("invalid bearer token");
  return absl::OkStatus();
}

absl::Status SamplerService::OpenStream() {
  const int open = open_streams_.fetch_add(1) + 1;
  if (options_.max_concurrent_streams > 0 && open > options_.max_concurrent_streams) {
    open_streams_.fetch_sub(1);
    return absl::ResourceExhaustedError(absl::StrCat(
        "max_concurrent_streams = ", options_.max_concurrent_streams, " streams are open; retry later"));
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* SamplerService::ListModels(grpc::CallbackServerContext* context,
                                                     const v1::ListModelsRequest* /*request*/,
                                                     v1::ListModelsResponse* response) {
  if (auto auth = Authenticate(*context); !auth.ok()) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpc(auth));
    return reactor;
  }
  for (const auto& engine : registry_->All()) DescribeModel(*engine, response->add_models());
  response->set_default_model(registry_->default_model());
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* SamplerService::GetModel(grpc::CallbackServerContext* context,
                                                   const v1::GetModelRequest* request,
                                                   v1::ModelInfo* response) {
  auto* reactor = context->DefaultReactor();
  if (auto auth = Authenticate(*context); !auth.ok()) {
    reactor->Finish(ToGrpc(auth));
    return reactor;
  }
  auto engine = registry_->Find(request->name());
  if (!engine.ok()) {
    reactor->Finish(ToGrpc(engine.status()));
  } else {
    DescribeModel(**engine, response);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

}  // namespace gd::server
