// A fake Sampler service for the client-side tests (client_test.cc, view_server_test.cc,
// trajectory_test.cc): canned, checkable answers on an in-process gRPC server, with gRPC's default
// health service. No LibTorch and no real model: what is tested is the client's side of the wire.
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "client/gd_client.h"
#include "core/io/formats/formats.h"
#include "gtest/gtest.h"

namespace gd::client {

inline constexpr int64_t kImageSize = 8;
inline constexpr int64_t kChannels = 3;
inline constexpr int64_t kNumClasses = 10;
inline constexpr uint32_t kDefaultSteps = 4;

// ---- Canned data --------------------------------------------------------------------------------

// Sample values on a grid of 17 levels in [-1, 1], both ends included, different per position.
// `image` is the image's stream index: first_image_index + its place in the request.
float CannedValue(int64_t image, int64_t c, int64_t y, int64_t x);
formats::Array FloatArray(std::vector<int64_t> shape, const std::vector<float>& values);
std::vector<float> Floats(const formats::Array& array);
// float32 [n, 3, 8, 8] of CannedValue for the images first_image .. first_image + n - 1, each
// value + offset.
formats::Array CannedSamples(int64_t n, float offset = 0, int64_t first_image = 0);
// What the fake streams at `step`: x_t is the canned samples + step / 100, pred_xstart the canned
// samples - step / 100.
formats::Array CannedXt(int64_t n, uint32_t step, int64_t first_image = 0);
formats::Array CannedPredXstart(int64_t n, uint32_t step, int64_t first_image = 0);
// One PNG per image of float32 samples [N, C, H, W], by the reference's uint8 formula.
std::vector<std::string> SamplesToPngs(const formats::Array& samples);
guided_diffusion::v1::Tensor ToTensor(const formats::Array& array);
formats::Array ToHalf(const formats::Array& array);

// ---- The fake -----------------------------------------------------------------------------------

// Images per request the fake's "tiny" model takes (ModelInfo.max_images_per_request).
inline constexpr uint32_t kTinyMaxImagesPerRequest = 8;

// "tiny": 8x8 RGB, 10 classes (Fashion-MNIST's names), a classifier, DDPM and DDIM, at most
// kTinyMaxImagesPerRequest images per request.
guided_diffusion::v1::ModelInfo TinyModel();
// "uncond-big": 256x256, unconditional, no classifier, DDIM and DPM-Solver++, with a default
// classifier scale and limits (steps, scale) set.
guided_diffusion::v1::ModelInfo UnconditionalModel();

// A Sampler with canned answers. The model name picks the behaviour:
//   "" or "tiny"  samples CannedSamples (labels must be in [0, 10), at most
//                 kTinyMaxImagesPerRequest images). Image i of a request is canned image
//                 first_image_index + i, whatever the request's size and seed: like the real
//                 service, an image depends on its stream index, not on how a run was split (the
//                 seed is recorded, not used, so canned expectations hold for any seed). The step
//                 count is `steps` for DPM-Solver++ (required), else timestep_respacing when it is
//                 a number, else kDefaultSteps. Streams carry CannedXt / CannedPredXstart as
//                 tensors or, for FORMAT_PNG, as PNGs; DPM-Solver++ steps have a continuous
//                 timestep of timestep + 0.25
//   "slow"        Sample blocks until the call is cancelled (deadline tests)
//   "endless"     StreamSample sends steps until the call is cancelled
//   "status:N"    fails with gRPC status code N and message "canned failure N"
// It records the last method and request, the authorization metadata, calls and cancellations it
// saw.
class FakeSampler final : public guided_diffusion::v1::Sampler::Service {
 public:
  grpc::Status Sample(grpc::ServerContext* context,
                      const guided_diffusion::v1::SampleRequest* request,
                      guided_diffusion::v1::SampleResponse* response) override;
  grpc::Status StreamSample(grpc::ServerContext* context,
                            const guided_diffusion::v1::SampleRequest* request,
                            grpc::ServerWriter<guided_diffusion::v1::SampleEvent>* writer) override;
  grpc::Status ListModels(grpc::ServerContext* context,
                          const guided_diffusion::v1::ListModelsRequest* request,
                          guided_diffusion::v1::ListModelsResponse* response) override;
  grpc::Status GetModel(grpc::ServerContext* context,
                        const guided_diffusion::v1::GetModelRequest* request,
                        guided_diffusion::v1::ModelInfo* response) override;

  int calls() const { return calls_.load(); }
  guided_diffusion::v1::SampleRequest last_request();
  std::string last_method();
  std::string last_authorization();
  // True once a call has noticed that its client cancelled it (or its deadline passed).
  bool WaitForCancellation(absl::Duration timeout);
  // StreamSample calls seen, and how many of them were cancelled.
  int stream_calls() const { return stream_calls_.load(); }
  int cancellations() const { return cancellations_.load(); }
  // Every Sample and StreamSample request seen, in arrival order.
  std::vector<guided_diffusion::v1::SampleRequest> sample_requests();

  // Fault and timing injection for the bulk-sampling tests. All apply to Sample and StreamSample:
  // After `after` more calls go through, the `count` calls that follow fail with `code` (message
  // "injected failure N of COUNT").
  void FailNextCalls(int count, grpc::StatusCode code, int after = 0);
  // Every call waits `delay` before answering.
  void SetDelay(absl::Duration delay);
  // Every call waits (at most 10 s) until `count` calls are in flight at once, so that a client
  // that keeps fewer going is seen (max_in_flight) rather than missed by timing luck.
  void HoldUntilInFlight(int count);
  // The most calls that were in flight at once.
  int max_in_flight() const { return max_in_flight_.load(); }

 private:
  void Record(grpc::ServerContext* context, const guided_diffusion::v1::SampleRequest& request,
              const char* method);
  void MarkCancelled();
  grpc::Status WaitForCancel(grpc::ServerContext* context);
  grpc::Status StreamUntilCancelled(grpc::ServerContext* context,
                                    grpc::ServerWriter<guided_diffusion::v1::SampleEvent>* writer);
  // What every sampling call goes through first (the hold, the delay and injected failures),
  // and its end: one in flight for as long as it lives.
  struct CallInFlight {
    explicit CallInFlight(FakeSampler* fake);
    ~CallInFlight();
    CallInFlight(const CallInFlight&) = delete;
    CallInFlight& operator=(const CallInFlight&) = delete;

    FakeSampler* const fake;
    const grpc::Status admitted;  // OK, or the injected failure
  };
  grpc::Status Admit();
  void Leave();

  std::atomic<int> calls_{0};
  std::atomic<int> stream_calls_{0};
  std::atomic<int> cancellations_{0};
  // std::mutex, not absl::Mutex: ThreadSanitizer sees only locks it can instrument.
  std::mutex mu_;
  std::condition_variable changed_;  // in_flight_ or saw_cancellation_ changed
  // Guarded by mu_:
  std::string last_method_;
  guided_diffusion::v1::SampleRequest last_request_;
  std::string last_authorization_;
  bool saw_cancellation_ = false;
  std::vector<guided_diffusion::v1::SampleRequest> sample_requests_;
  int failures_left_ = 0;
  int successes_before_failures_ = 0;
  int failures_injected_ = 0;
  grpc::StatusCode failure_code_ = grpc::StatusCode::OK;
  absl::Duration delay_;
  int hold_until_in_flight_ = 0;
  int in_flight_ = 0;
  std::atomic<int> max_in_flight_{0};
};

// The fake on 127.0.0.1 at a port the kernel picks, with gRPC's default health service; insecure
// unless told otherwise.
class FakeServer {
 public:
  explicit FakeServer(
      std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials());
  ~FakeServer();

  bool started() const { return server_ != nullptr && port_ > 0; }
  std::string address() const;
  FakeSampler& sampler() { return sampler_; }
  grpc::HealthCheckServiceInterface* health() { return server_->GetHealthCheckService(); }

 private:
  FakeSampler sampler_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// Tests against a fresh fake server.
class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.started()); }

  // A client of the fake (options.target is set here).
  std::unique_ptr<SamplerClient> Connect(ClientOptions options = {});
  static guided_diffusion::v1::SampleRequest LabelledRequest(std::vector<int64_t> labels);

  FakeServer server_;
};

}  // namespace gd::client
