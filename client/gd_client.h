// C++ client of the guided-diffusion Sampler service (proto/guided_diffusion/v1/sampler.proto):
// a channel with TLS/mTLS, bearer-token auth, deadlines and client-side load balancing, the four
// Sampler calls and the standard health check, plus torch-free conversions between the wire's
// Tensor and gd::formats::Array.
//
// Thin by rule: this library links gRPC, protobuf, absl and gd_formats only, never LibTorch, and
// does no tensor math beyond the one uint8 conversion the reference's sampling scripts define.
// gRPC statuses come back as absl::Status with the same code number and message.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/io/formats/formats.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "guided_diffusion/v1/sampler.grpc.pb.h"

namespace gd::client {

// Deadline of the quick metadata calls (ListModels, GetModel, Health), which must not hang on a
// server that accepts connections but never answers.
inline constexpr int64_t kMetadataTimeoutMs = 10'000;

struct ClientOptions {
  // "HOST:PORT", or any gRPC target URI: "dns:///sampler.ns.svc:50051" (every address the name
  // resolves to, see load_balancing_policy), "unix:///run/gd.sock".
  std::string target;
  bool tls = false;
  std::string tls_ca_file;    // PEM roots; "" = the system's roots
  std::string tls_cert_file;  // PEM client certificate chain, for mTLS (with tls_key_file)
  std::string tls_key_file;   // PEM client private key, for mTLS (with tls_cert_file)
  // Host name to verify the server's certificate against instead of the target's (tests, IPs).
  std::string tls_server_name_override;
  // Sent on every call as "authorization: Bearer <token>" metadata; "" = none.
  std::string auth_token;
  // Deadline of Sample and StreamSample calls; 0 = none (sampling a large batch can take
  // minutes). The metadata calls use min(timeout_ms, kMetadataTimeoutMs).
  int64_t timeout_ms = 0;
  // Largest message sent or received: a float32 [64, 3, 256, 256] result is 50 MiB.
  int max_message_bytes = 256 << 20;
  // gRPC load balancing policy, e.g. "round_robin" to spread calls over every replica a
  // dns:/// target resolves to (a headless Kubernetes Service); "" = gRPC's default (pick_first).
  std::string load_balancing_policy;
};

// The absl::Status of a gRPC status: same code number, same message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// The iterator form of StreamSample: one call's events, in order.
//
//   auto stream = client->OpenStream(request);
//   guided_diffusion::v1::SampleEvent event;
//   while (stream->Next(&event)) { ... }  // or stream->Cancel() to stop early
//   absl::Status status = stream->Finish();
//
// Next and Finish must be called from one thread; Cancel may be called from any thread, at any
// time. Destroying an unfinished stream cancels the call.
class StreamReader {
 public:
  StreamReader(const StreamReader&) = delete;
  StreamReader& operator=(const StreamReader&) = delete;
  ~StreamReader();

  // Blocks for the next event; false at the end of the stream, on error or after Cancel (then
  // Finish says which).
  bool Next(guided_diffusion::v1::SampleEvent* event);
  // The call's final status. Events not yet read are read and dropped first, so call it after
  // Next returned false or after Cancel, unless waiting for the whole stream is intended.
  // CANCELLED after Cancel (unless the call had already ended). Idempotent.
  absl::Status Finish();
  // Asks the server to stop: the request's images leave the server's batch at its next step.
  void Cancel();

 private:
  friend class SamplerClient;
  StreamReader(std::shared_ptr<grpc::Channel> channel, std::unique_ptr<grpc::ClientContext> context,
               guided_diffusion::v1::Sampler::Stub* stub,
               const guided_diffusion::v1::SampleRequest& request);

  std::shared_ptr<grpc::Channel> channel_;  // keeps the call's channel alive
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReader<guided_diffusion::v1::SampleEvent>> reader_;
  bool finished_ = false;
  absl::Status status_;
};

// One channel to a Sampler server (or several replicas, see load_balancing_policy). Thread-safe:
// calls may run concurrently from any number of threads. The channel connects lazily, so Create
// succeeds without a server; an unreachable server makes calls fail with UNAVAILABLE.
class SamplerClient {
 public:
  // InvalidArgument for inconsistent options (no target, a TLS file without tls, a certificate
  // without its key, max_message_bytes <= 0); NotFound and friends when a TLS file is unreadable.
  static absl::StatusOr<std::unique_ptr<SamplerClient>> Create(const ClientOptions& options);

  // Samples and returns the final images (what request.output asks for).
  absl::StatusOr<guided_diffusion::v1::SampleResponse> Sample(
      const guided_diffusion::v1::SampleRequest& request);

  // Samples with streaming: on_event sees every event (Accepted, StepEvents, the result) as it
  // arrives, on the calling thread; returning false cancels the call, which then returns
  // CANCELLED. Returns the result event's response; INTERNAL if the stream ended without one.
  absl::StatusOr<guided_diffusion::v1::SampleResponse> StreamSample(
      const guided_diffusion::v1::SampleRequest& request,
      const std::function<bool(const guided_diffusion::v1::SampleEvent&)>& on_event);

  // Starts a StreamSample call and returns its events as an iterator. Errors (including a
  // refused request) surface through Next/Finish. The reader must not outlive this client.
  std::unique_ptr<StreamReader> OpenStream(const guided_diffusion::v1::SampleRequest& request);

  absl::StatusOr<guided_diffusion::v1::ListModelsResponse> ListModels();
  // "" = the server's default model; NOT_FOUND for an unknown name.
  absl::StatusOr<guided_diffusion::v1::ModelInfo> GetModel(const std::string& name);

  // grpc.health.v1.Health/Check of `service` ("" = the whole server): "SERVING", "NOT_SERVING",
  // "UNKNOWN", or "SERVICE_UNKNOWN" when the server does not know the service (it answers
  // NOT_FOUND). Other failures (unreachable, no health service) are errors.
  absl::StatusOr<std::string> Health(const std::string& service = "");

  const ClientOptions& options() const { return options_; }

 private:
  SamplerClient(ClientOptions options, std::shared_ptr<grpc::Channel> channel);
  // A context with the auth metadata and a deadline of timeout_ms from now (0 = none).
  std::unique_ptr<grpc::ClientContext> NewContext(int64_t timeout_ms) const;
  int64_t MetadataTimeoutMs() const;

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<guided_diffusion::v1::Sampler::Stub> sampler_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// The networks' timestep at a step, on the model's 0..T-1 scale: StepEvent.continuous_timestep
// (fractional for DPM-Solver++), or StepEvent.timestep from servers that do not send it (0 there
// while timestep is not).
double ContinuousTimestep(const guided_diffusion::v1::StepEvent& step);

// ---- Tensors (torch-free) -----------------------------------------------------------------------

// A wire Tensor as an Array of the same dtype (float32, float16 or uint8) and shape. Checks the
// dtype, that every dimension is >= 0 and that data holds exactly product(shape) * itemsize
// bytes; errors name `what` ("samples", "step 12 x_t").
absl::StatusOr<formats::Array> TensorToArray(const guided_diffusion::v1::Tensor& tensor,
                                             absl::string_view what = "tensor");
// The wire Tensor of a float32, float16 or uint8 Array, with the same checks.
absl::StatusOr<guided_diffusion::v1::Tensor> ArrayToTensor(const formats::Array& array,
                                                           absl::string_view what = "array");

// float16 arrays widened to float32 (float32 ones returned as they are); other dtypes are an
// InvalidArgument error naming `what`.
absl::StatusOr<formats::Array> ToFloat32(formats::Array array, absl::string_view what = "array");

// One sample value in [-1, 1] as an 8-bit pixel, exactly as the reference's sampling scripts:
// ((x + 1) * 127.5).clamp(0, 255).to(uint8) in float32. The cast truncates toward zero
// (0.0 -> 127, not 128); NaN maps to 0.
uint8_t SampleToUint8(float x);

// float32 samples [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (the .npz arr_0 layout), by
// SampleToUint8. InvalidArgument for another dtype or rank.
absl::StatusOr<formats::Array> SamplesToUint8(const formats::Array& samples,
                                              absl::string_view what = "samples");

// uint8 [N, H, W, C] -> N images (for formats::MakeGrid and formats::EncodePng); C must be 1, 3
// or 4.
absl::StatusOr<std::vector<formats::Image>> Uint8ToImages(const formats::Array& images_nhwc,
                                                          absl::string_view what = "images");

}  // namespace gd::client
