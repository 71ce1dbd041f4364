// The Sampler gRPC service (callback API): one reactor per call, one write in flight at a time,
// reactions that never block. Requests are decoded and validated, handed to the model's engine,
// and its events forwarded; encoding for the wire runs on an executor, never on the engine
// thread. Nothing numeric happens here.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "guided_diffusion/v1/sampler.grpc.pb.h"
#include "server/executor.h"
#include "server/model_registry.h"

namespace gd::server {

// One line per finished request, for logs and metrics.
struct RequestRecord {
  std::string request_id;
  std::string model;
  std::string method;  // "Sample" or "StreamSample"
  std::string sampler;
  int64_t images = 0;
  int64_t steps = 0;
  double classifier_scale = 0;
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string message;
  double seconds = 0;        // submission to completion
  double queue_seconds = 0;  // waiting for a place in the batch
};

struct ServiceOptions {
  int encoder_threads = 2;
  // Step events waiting to be written to a slow reader beyond which the oldest are dropped
  // (the stream then skips steps rather than holding unbounded memory).
  int max_pending_events = 32;
  std::function<void(const RequestRecord&)> on_request_done;  // optional
  // Bearer tokens accepted in "authorization: Bearer <token>" metadata; empty = no auth. Sampler
  // calls without a valid token get UNAUTHENTICATED (health and reflection stay open).
  std::vector<std::string> auth_tokens;
  // StreamSample calls open at once; beyond: RESOURCE_EXHAUSTED (0 = no limit).
  int max_concurrent_streams = 0;
};

class SamplerService final : public ::guided_diffusion::v1::Sampler::CallbackService {
 public:
  SamplerService(std::shared_ptr<ModelRegistry> registry, ServiceOptions options);
  ~SamplerService() override;

  grpc::ServerUnaryReactor* Sample(grpc::CallbackServerContext* context,
                                   const ::guided_diffusion::v1::SampleRequest* request,
                                   ::guided_diffusion::v1::SampleResponse* response) override;
  grpc::ServerWriteReactor<::guided_diffusion::v1::SampleEvent>* StreamSample(
      grpc::CallbackServerContext* context,
      const ::guided_diffusion::v1::SampleRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const ::guided_diffusion::v1::ListModelsRequest* request,
                                       ::guided_diffusion::v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const ::guided_diffusion::v1::GetModelRequest* request,
                                     ::guided_diffusion::v1::ModelInfo* response) override;

  // Internal to the reactors.
  Executor& executor() { return executor_; }
  const ServiceOptions& options() const { return options_; }
  ModelRegistry& registry() { return *registry_; }
  std::string NextRequestId();
  void Finished(const RequestRecord& record);
  // OK, or UNAUTHENTICATED when tokens are configured and the call has none that matches.
  absl::Status Authenticate(const grpc::CallbackServerContext& context) const;
  // Counts an open stream; RESOURCE_EXHAUSTED past max_concurrent_streams.
  absl::Status OpenStream();
  void CloseStream() { open_streams_.fetch_sub(1); }

 private:
  std::shared_ptr<ModelRegistry> registry_;
  ServiceOptions options_;
  Executor executor_;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<int> open_streams_{0};
  uint64_t id_salt_;
};

}  // namespace gd::server
