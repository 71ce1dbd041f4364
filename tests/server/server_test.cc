// The sampling service end to end on loopback: the real reactors and engine on the parity
// fixture's model, driven by the client library and by the gd CLI.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "client/gd_client.h"
#include "core/io/image.h"
#include "core/io/npy.h"
#include "core/nn/model_bundle.h"
#include "server/codec.h"
#include "server/model_registry.h"
#include "server/sampler_service.h"
#include "tests/testing/testing.h"

namespace gd {
namespace {

namespace v1 = ::guided_diffusion::v1;
namespace fs = std::filesystem;

struct Parity {
  nlohmann::json json;
  std::shared_ptr<ModelBundle> bundle;
  std::shared_ptr<ModelBundle> without_classifier;
  std::map<std::string, torch::Tensor> tensors;
  ModelSpec spec;
};

const Parity& P() {
  static const Parity* p = [] {
    auto* out = new Parity;
    const testing::ParityFixture& fixture = testing::Parity64();
    out->json = fixture.json;
    out->tensors = fixture.tensors;
    out->spec = fixture.Spec();
    auto bundle = LoadModelBundle(out->spec, torch::kCPU, Precision::kFloat32);
    if (bundle.ok()) {
      out->bundle = *bundle;
      out->without_classifier = std::make_shared<ModelBundle>(**bundle);
      out->without_classifier->name = "parity-unguided";
      out->without_classifier->classifier = EncoderUNetModel(nullptr);
      out->without_classifier->classifier_config.reset();
    }
    return out;
  }();
  return *p;
}

torch::Tensor T(const std::string& key) { return P().tensors.at(key); }

// The service on 127.0.0.1:<free port> with the parity model (default) and a copy without
// classifier.
class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GD_REQUIRE_PARITY_FIXTURES();
    ASSERT_NE(P().bundle, nullptr);
  }
  void Start(EngineOptions options = {}) {
    registry_ = std::make_shared<server::ModelRegistry>();
    auto engine = Engine::Create(P().bundle, options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::shared_ptr<Engine>(std::move(*engine));
    registry_->Add(engine_, true);
    auto unguided = Engine::Create(P().without_classifier, options);
    ASSERT_TRUE(unguided.ok());
    registry_->Add(std::shared_ptr<Engine>(std::move(*unguided)), false);
    service_ = std::make_unique<server::SamplerService>(registry_, server::ServiceOptions{});
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetMaxReceiveMessageSize(64 << 20);
    builder.SetMaxSendMessageSize(64 << 20);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(port);
    client::ClientOptions client_options;
    client_options.target = address_;
    auto client = client::SamplerClient::Create(client_options);
    ASSERT_TRUE(client.ok());
    client_ = std::move(*client);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  v1::SampleRequest ReferenceDdimRequest() {
    v1::SampleRequest request;
    const torch::Tensor y = T("y");
    for (int64_t i = 0; i < y.size(0); ++i) request.add_labels(y[i].item<int64_t>());
    request.set_classifier_scale(P().json["classifier_scale"].get<double>());
    request.set_sampler(v1::SAMPLER_KIND_DDIM);
    request.set_timestep_respacing(P().json["ddim_respacing"].get<std::string>());
    const torch::Tensor x_T = T("x_T").contiguous();
    auto* noise = request.mutable_noise();
    for (int64_t d : x_T.sizes()) noise->add_shape(d);
    noise->set_dtype(v1::DTYPE_FLOAT32);
    noise->set_data(x_T.data_ptr(), x_T.numel() * sizeof(float));
    request.mutable_output()->set_float32(true);
    return request;
  }

  static torch::Tensor ToTensor(const v1::Tensor& t) {
    auto array = client::TensorToArray(t);
    EXPECT_TRUE(array.ok()) << array.status();
    auto f32 = client::ToFloat32(*array);
    EXPECT_TRUE(f32.ok());
    return torch::from_blob(f32->data.data(), f32->shape, torch::kFloat32).clone();
  }

  std::shared_ptr<server::ModelRegistry> registry_;
  std::shared_ptr<Engine> engine_;
  std::unique_ptr<server::SamplerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<client::SamplerClient> client_;
  std::string address_;
};

TEST_F(ServerTest, ListsModelsAndHealth) {
  Start();
  auto models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->models_size(), 2);
  EXPECT_EQ(models->default_model(), "parity");
  const v1::ModelInfo& info = models->models(0);
  EXPECT_EQ(info.image_size(), 64u);
  EXPECT_EQ(info.channels(), 3u);
  EXPECT_EQ(info.num_classes(), 1000u);
  EXPECT_TRUE(info.class_conditional());
  EXPECT_TRUE(info.has_classifier());
  EXPECT_FALSE(models->models(1).has_classifier());
  EXPECT_EQ(info.diffusion_steps(), 1000u);
  ASSERT_EQ(info.samplers_size(), 3);
  EXPECT_EQ(info.samplers(2), v1::SAMPLER_KIND_DPM_SOLVER_PP);
  auto one = client_->GetModel("");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->name(), "parity");
  auto missing = client_->GetModel("imagenet512");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("\"imagenet512\""), std::string::npos);
  auto health = client_->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, "SERVING");
}

TEST_F(ServerTest, SampleDdimEta0WithNoiseEqualsTheReference) {
  Start();
  auto response = client_->Sample(ReferenceDdimRequest());
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_TRUE(testing::TensorsClose(ToTensor(response->samples()), T("ddim_eta0_guided_sample"),
                                    1e-4));
  ASSERT_EQ(response->png_size(), 2);
  auto png = DecodePng(response->png(0));
  ASSERT_TRUE(png.ok());
  EXPECT_EQ(png->sizes(), torch::IntArrayRef({64, 64, 3}));
  EXPECT_EQ(response->steps(), 10u);
  EXPECT_FALSE(response->request_id().empty());
}

TEST_F(ServerTest, StreamSendsAcceptedEveryKthStepAndTheResult) {
  Start();
  v1::SampleRequest request = ReferenceDdimRequest();
  request.mutable_stream()->set_every(3);
  request.mutable_stream()->set_x_t(true);
  request.mutable_stream()->set_pred_xstart(true);
  std::vector<v1::SampleEvent> events;
  auto result = client_->StreamSample(request, [&](const v1::SampleEvent& e) {
    events.push_back(e);
    return true;
  });
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_GE(events.size(), 6u);
  EXPECT_TRUE(events.front().has_accepted());
  EXPECT_EQ(events.front().accepted().total_steps(), 10u);
  EXPECT_TRUE(events.back().has_result());
  std::vector<uint32_t> steps;
  for (const auto& e : events) {
    if (!e.has_step()) continue;
    steps.push_back(e.step().step());
    const torch::Tensor x = ToTensor(e.step().x_t());
    const torch::Tensor x0 = ToTensor(e.step().pred_xstart());
    const int64_t k = e.step().step();
    EXPECT_TRUE(testing::TensorsClose(x, T("ddim_eta0_guided_traj_x")[k], 1e-4)) << k;
    EXPECT_TRUE(testing::TensorsClose(x0, T("ddim_eta0_guided_traj_pred_xstart")[k], 1e-4)) << k;
  }
  EXPECT_EQ(steps, (std::vector<uint32_t>{0, 3, 6, 9}));
  EXPECT_TRUE(testing::TensorsClose(ToTensor(result->samples()), T("ddim_eta0_guided_sample"),
                                    1e-4));
}

TEST_F(ServerTest, StreamPngsAndFloat16AndProgressOnly) {
  Start();
  v1::SampleRequest request;
  request.add_labels(7);
  request.set_timestep_respacing("ddim4");
  request.mutable_stream()->set_pred_xstart(true);
  request.mutable_stream()->set_format(v1::StreamOptions::FORMAT_PNG);
  int pngs = 0;
  auto result = client_->StreamSample(request, [&](const v1::SampleEvent& e) {
    if (e.has_step()) {
      EXPECT_EQ(e.step().pred_xstart_png_size(), 1);
      EXPECT_FALSE(e.step().has_x_t());
      EXPECT_FALSE(e.step().has_pred_xstart()) << "a PNG event carries no Tensor messages";
      pngs += e.step().pred_xstart_png_size();
    }
    return true;
  });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(pngs, 4);
  request.mutable_stream()->set_format(v1::StreamOptions::FORMAT_TENSOR_FLOAT16);
  request.mutable_stream()->set_x_t(true);
  bool saw_half = false;
  ASSERT_TRUE(client_->StreamSample(request, [&](const v1::SampleEvent& e) {
    if (e.has_step()) saw_half = e.step().x_t().dtype() == v1::DTYPE_FLOAT16;
    return true;
  }).ok());
  EXPECT_TRUE(saw_half);
  v1::SampleRequest progress_only;
  progress_only.add_labels(1);
  progress_only.set_timestep_respacing("ddim4");
  int step_events = 0;
  ASSERT_TRUE(client_->StreamSample(progress_only, [&](const v1::SampleEvent& e) {
    if (e.has_step()) {
      ++step_events;
      EXPECT_FALSE(e.step().has_x_t());
      EXPECT_EQ(e.step().pred_xstart_png_size(), 0);
    }
    return true;
  }).ok());
  EXPECT_EQ(step_events, 4);
}

TEST_F(ServerTest, DdpmGuidedAndUnguidedOverTheWire) {
  Start();
  for (double scale : {0.0, 5.0}) {
    v1::SampleRequest request;
    request.add_labels(10);
    request.add_labels(20);
    request.set_classifier_scale(scale);
    request.set_sampler(v1::SAMPLER_KIND_DDPM);
    request.set_timestep_respacing("6");
    request.set_seed(3);
    request.mutable_output()->set_uint8(true);
    auto response = client_->Sample(request);
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->images_uint8().shape_size(), 4);
    EXPECT_EQ(response->images_uint8().shape(3), 3);
    EXPECT_EQ(response->labels_size(), 2);
  }
}

TEST_F(ServerTest, EveryValidationErrorIsInvalidArgumentNamingTheField) {
  Start();
  auto expect = [&](const v1::SampleRequest& request, absl::StatusCode code,
                    const std::string& needle) {
    auto response = client_->Sample(request);
    ASSERT_FALSE(response.ok()) << needle;
    EXPECT_EQ(response.status().code(), code) << response.status();
    EXPECT_NE(response.status().message().find(needle), std::string::npos) << response.status();
  };
  v1::SampleRequest base;
  base.add_labels(1);
  v1::SampleRequest r = base;
  r.add_labels(1200);
  expect(r, absl::StatusCode::kInvalidArgument, "labels[1] = 1200 is outside [0, 1000)");
  r = base;
  r.set_num_samples(4);
  expect(r, absl::StatusCode::kInvalidArgument, "num_samples = 4 does not match 1 labels");
  r = base;
  r.set_classifier_scale(-2);
  expect(r, absl::StatusCode::kInvalidArgument, "classifier_scale = -2");
  r = base;
  r.set_classifier_scale(std::nan(""));
  expect(r, absl::StatusCode::kInvalidArgument, "classifier_scale = nan");
  r = base;
  r.set_sampler(v1::SAMPLER_KIND_DDIM);
  r.set_eta(-0.1);
  expect(r, absl::StatusCode::kInvalidArgument, "eta = -0.1");
  r = base;
  r.set_sampler(static_cast<v1::SamplerKind>(9));
  expect(r, absl::StatusCode::kInvalidArgument, "sampler = 9 is unknown");
  r = base;
  r.set_timestep_respacing("ddimx");
  expect(r, absl::StatusCode::kInvalidArgument, "timestep_respacing");
  r = base;
  r.mutable_noise()->add_shape(1);
  r.mutable_noise()->add_shape(3);
  r.mutable_noise()->add_shape(8);
  r.mutable_noise()->add_shape(8);
  r.mutable_noise()->set_dtype(v1::DTYPE_FLOAT32);
  r.mutable_noise()->set_data(std::string(1 * 3 * 8 * 8 * 4, '\0'));
  expect(r, absl::StatusCode::kInvalidArgument, "noise has shape [1, 3, 8, 8]");
  r.mutable_noise()->set_data("abc");
  expect(r, absl::StatusCode::kInvalidArgument, "noise.data has 3 bytes");
  r = base;
  r.set_model("parity-unguided");
  r.set_classifier_scale(1);
  expect(r, absl::StatusCode::kInvalidArgument, "needs a classifier");
  r = base;
  r.set_model("nope");
  expect(r, absl::StatusCode::kNotFound, "model \"nope\"");
  r = base;
  r.clear_labels();
  expect(r, absl::StatusCode::kInvalidArgument, "num_samples = 0");
  EXPECT_EQ(engine_->stats().jobs_submitted, 0) << "nothing invalid reaches the queue";
  // And the server is fine.
  EXPECT_TRUE(client_->Health().ok());
}

// What a hostile caller sends: each is refused up front with a caller's status (never INTERNAL)
// and a message that names the field without echoing the caller's megabytes.
TEST_F(ServerTest, HostileInputIsRefusedUpFrontWithShortMessages) {
  EngineOptions options;
  options.max_classifier_scale = 100;  // gd-server's default
  Start(options);
  auto refused = [&](const v1::SampleRequest& request, absl::StatusCode code,
                     const std::string& needle) {
    auto response = client_->Sample(request);
    ASSERT_FALSE(response.ok()) << needle;
    EXPECT_EQ(response.status().code(), code) << response.status().ToString().substr(0, 300);
    EXPECT_NE(response.status().message().find(needle), std::string::npos)
        << response.status().ToString().substr(0, 300);
    EXPECT_LE(response.status().message().size(), server::kMaxStatusMessageBytes);
  };
  v1::SampleRequest base;
  base.add_labels(1);
  base.set_timestep_respacing("ddim5");
  v1::SampleRequest r = base;
  r.set_classifier_scale(1e30);
  refused(r, absl::StatusCode::kInvalidArgument, "max_classifier_scale = 100");
  r = base;
  r.set_model(std::string(5 << 20, 'm'));
  refused(r, absl::StatusCode::kInvalidArgument, "model");
  r = base;
  r.set_timestep_respacing(std::string(100 << 10, '7'));
  refused(r, absl::StatusCode::kInvalidArgument, "timestep_respacing");
  r = base;
  r.mutable_noise()->add_shape(1);
  r.mutable_noise()->set_dtype(static_cast<v1::DType>(77));
  refused(r, absl::StatusCode::kInvalidArgument, "noise.dtype = 77");
  // Found by fuzz/sample_request_fuzzer.cc: a zero-size shape whose other dimensions overflow the
  // strides used to throw from inside the codec, which would have ended the process.
  r = base;
  for (int64_t d : {int64_t{0}, int64_t{1} << 40, int64_t{1} << 40, int64_t{4}}) r.mutable_noise()->add_shape(d);
  r.mutable_noise()->set_dtype(v1::DTYPE_FLOAT32);
  refused(r, absl::StatusCode::kInvalidArgument, "noise.shape [0, 1099511627776");
  EXPECT_EQ(engine_->stats().jobs_submitted, 0) << "nothing hostile reaches the queue";
  // The bound itself is served, so callers can read it before asking.
  auto models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->models(0).max_classifier_scale(), 100);
  EXPECT_TRUE(client_->Sample(base).ok()) << "the server carries on";
}

TEST_F(ServerTest, ConcurrentRequestsShareForwardsAndMatchSoloRuns) {
  EngineOptions options;
  options.max_batch = 16;
  Start(options);
  std::vector<v1::SampleRequest> requests(3);
  requests[0].add_labels(5);
  requests[0].set_sampler(v1::SAMPLER_KIND_DDIM);
  requests[0].set_timestep_respacing("ddim20");
  requests[0].set_classifier_scale(3);
  requests[1].add_labels(6);
  requests[1].add_labels(7);
  requests[1].set_sampler(v1::SAMPLER_KIND_DDPM);
  requests[1].set_timestep_respacing("ddim25");
  requests[2].add_labels(8);
  requests[2].set_sampler(v1::SAMPLER_KIND_DDIM);
  requests[2].set_eta(0.5);
  requests[2].set_timestep_respacing("ddim10");
  for (size_t i = 0; i < requests.size(); ++i) {
    requests[i].set_seed(100 + i);
    requests[i].mutable_output()->set_float32(true);
  }
  std::vector<torch::Tensor> solo;
  for (const auto& request : requests) {
    auto response = client_->Sample(request);
    ASSERT_TRUE(response.ok()) << response.status();
    solo.push_back(ToTensor(response->samples()));
  }
  const EngineStats before = engine_->stats();
  std::vector<std::future<absl::StatusOr<v1::SampleResponse>>> futures;
  for (const auto& request : requests) {
    futures.push_back(std::async(std::launch::async, [&, request] { return client_->Sample(request); }));
  }
  for (size_t i = 0; i < futures.size(); ++i) {
    auto response = futures[i].get();
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_TRUE(testing::TensorsClose(ToTensor(response->samples()), solo[i], testing::kBatchTolerance)) << i;
  }
  const EngineStats after = engine_->stats();
  EXPECT_GE(after.max_requests_in_batch, 2);
  // 20 + 25 + 10 steps alone; sharing forwards needs fewer iterations than that.
  EXPECT_LT(after.iterations - before.iterations, 55);
  EXPECT_EQ(after.slot_steps - before.slot_steps, 20 + 2 * 25 + 10);
}

TEST_F(ServerTest, CancellingAStreamFreesItsSlotsAndTheServerCarriesOn) {
  Start();
  v1::SampleRequest request;
  request.add_labels(3);
  request.add_labels(4);
  request.set_timestep_respacing("400");
  auto stream = client_->OpenStream(request);
  v1::SampleEvent event;
  int steps = 0;
  while (stream->Next(&event)) {
    if (event.has_step() && ++steps == 3) break;
  }
  ASSERT_EQ(steps, 3);
  stream->Cancel();
  EXPECT_EQ(stream->Finish().code(), absl::StatusCode::kCancelled);
  for (int i = 0; i < 200 && engine_->stats().jobs_cancelled == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const EngineStats stats = engine_->stats();
  EXPECT_EQ(stats.jobs_cancelled, 1);
  EXPECT_EQ(stats.active_slots, 0);
  EXPECT_LT(stats.slot_steps, 2 * 50) << "the cancelled images left the batch promptly";
  EXPECT_EQ(*client_->Health(), "SERVING");
  v1::SampleRequest quick;
  quick.add_labels(1);
  quick.set_timestep_respacing("ddim3");
  EXPECT_TRUE(client_->Sample(quick).ok());
}

// A client process killed mid-stream (no goodbye, the kernel closes its socket): its images
// leave the batch within an iteration or two and the server carries on.
TEST_F(ServerTest, AClientKilledMidStreamFreesItsSlots) {
  Start();
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string server = address_;
    execl(GD_CLI_PATH, GD_CLI_PATH, "stream", "--server", server.c_str(), "--labels", "1,2",
          "--timestep_respacing", "400", static_cast<char*>(nullptr));
    _exit(127);
  }
  for (int i = 0; i < 1200 && engine_->stats().slot_steps < 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GE(engine_->stats().slot_steps, 4) << "the stream started";
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int status = 0;
  waitpid(pid, &status, 0);
  const int64_t iterations_at_kill = engine_->stats().iterations;
  for (int i = 0; i < 400 && engine_->stats().active_slots > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const EngineStats stats = engine_->stats();
  EXPECT_EQ(stats.active_slots, 0);
  EXPECT_EQ(stats.jobs_cancelled, 1);
  EXPECT_LE(stats.iterations - iterations_at_kill, 2) << "slots freed within an iteration or two";
  v1::SampleRequest quick;
  quick.add_labels(1);
  quick.set_timestep_respacing("ddim3");
  EXPECT_TRUE(client_->Sample(quick).ok());
}

// Regression: a cancellation racing the encoder used to leave a stream unfinished, and
// grpc::Server::Shutdown then waited for it forever. Cancel many streams at varied points
// (before the first event, mid-stream, while events queue) and require Shutdown to return.
TEST_F(ServerTest, EveryCancelledStreamFinishesSoShutdownReturns) {
  Start();
  for (int round = 0; round < 24; ++round) {
    v1::SampleRequest request;
    request.add_labels(round % 10);
    request.set_timestep_respacing("200");
    request.mutable_stream()->set_x_t(true);
    if (round % 2 == 1) request.mutable_stream()->set_format(v1::StreamOptions::FORMAT_PNG);
    auto stream = client_->OpenStream(request);
    v1::SampleEvent event;
    for (int read = 0; read < round % 4 && stream->Next(&event);) ++read;
    stream->Cancel();
    EXPECT_EQ(stream->Finish().code(), absl::StatusCode::kCancelled) << "round " << round;
  }
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> shut = done->get_future();
  std::thread([server = server_.get(), done] {
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    done->set_value();
  }).detach();
  if (shut.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    ADD_FAILURE() << "grpc::Server::Shutdown is waiting on a stream that never finished";
    std::fflush(stdout);
    std::_Exit(1);  // the server cannot be destroyed while Shutdown runs
  }
  server_.reset();
}

TEST_F(ServerTest, AFullQueueAnswersResourceExhausted) {
  EngineOptions options;
  options.max_batch = 1;
  options.max_queue_images = 1;
  Start(options);
  v1::SampleRequest slow;
  slow.add_labels(1);
  slow.set_timestep_respacing("300");
  auto running = client_->OpenStream(slow);
  v1::SampleEvent event;
  while (running->Next(&event) && !event.has_step()) {
  }
  auto queued = client_->OpenStream(slow);
  ASSERT_TRUE(queued->Next(&event));
  EXPECT_TRUE(event.has_accepted());
  auto refused = client_->Sample(slow);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_NE(refused.status().message().find("max_queue_images = 1"), std::string::npos);
  running->Cancel();
  queued->Cancel();
  EXPECT_EQ(running->Finish().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(queued->Finish().code(), absl::StatusCode::kCancelled);
}

TEST_F(ServerTest, ADeadlineEndsTheCall) {
  Start();
  client::ClientOptions options;
  options.target = address_;
  options.timeout_ms = 300;
  auto hasty = client::SamplerClient::Create(options);
  ASSERT_TRUE(hasty.ok());
  v1::SampleRequest slow;
  slow.add_labels(1);
  slow.set_timestep_respacing("500");
  auto response = (*hasty)->Sample(slow);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded);
  for (int i = 0; i < 200 && engine_->stats().active_slots > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(engine_->stats().active_slots, 0);
}

// ---- The gd CLI against the service ------------------------------------------------------------

int RunCommand(const std::string& command, std::string* output = nullptr) {
  std::string out;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) out.append(buffer, n);
  const int status = pclose(pipe);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST_F(ServerTest, CliNoiseRunMatchesTheReferenceSampleAndTrajectory) {
  Start();
  const std::string dir = testing::TempDir("cli");
  ASSERT_TRUE(WriteNpy(dir + "/x_T.npy", T("x_T")).ok());
  const torch::Tensor y = T("y");
  const std::string common =
      absl::StrCat(" --server ", address_, " --labels ", y[0].item<int64_t>(), ",",
                   y[1].item<int64_t>(), " --classifier_scale ",
                   P().json["classifier_scale"].get<double>(),
                   " --sampler ddim --timestep_respacing ddim10 --noise ", dir, "/x_T.npy");
  std::string output;
  ASSERT_EQ(RunCommand(absl::StrCat(GD_CLI_PATH, " sample", common, " --tensor_out ", dir, "/out.npy --out ", dir, "/grid.png --npz ",
                             dir, "/samples.npz"),
                &output),
            0)
      << output;
  auto samples = ReadNpy(dir + "/out.npy");
  ASSERT_TRUE(samples.ok()) << samples.status();
  EXPECT_TRUE(testing::TensorsClose(*samples, T("ddim_eta0_guided_sample"), 1e-4));
  auto npz = ReadNpz(dir + "/samples.npz");
  ASSERT_TRUE(npz.ok()) << npz.status();
  ASSERT_EQ(npz->size(), 2u);
  EXPECT_EQ((*npz)[0].second.sizes(), torch::IntArrayRef({2, 64, 64, 3}));
  EXPECT_EQ((*npz)[1].second.scalar_type(), torch::kInt64);
  EXPECT_TRUE(ReadPng(dir + "/grid.png").ok());

  ASSERT_EQ(RunCommand(absl::StrCat(GD_CLI_PATH, " stream", common, " --dump_dir ", dir, "/steps"),
                &output),
            0)
      << output;
  for (int k = 0; k < 10; ++k) {
    char name[64];
    std::snprintf(name, sizeof(name), "/steps/x_t_%04d.npy", k);
    auto x = ReadNpy(dir + name);
    ASSERT_TRUE(x.ok()) << x.status();
    EXPECT_TRUE(testing::TensorsClose(*x, T("ddim_eta0_guided_traj_x")[k], 1e-4)) << k;
    std::snprintf(name, sizeof(name), "/steps/pred_xstart_%04d.npy", k);
    auto x0 = ReadNpy(dir + name);
    ASSERT_TRUE(x0.ok()) << x0.status();
    EXPECT_TRUE(testing::TensorsClose(*x0, T("ddim_eta0_guided_traj_pred_xstart")[k], 1e-4)) << k;
  }
  // Errors come back with the status name and the server's message.
  EXPECT_NE(RunCommand(absl::StrCat(GD_CLI_PATH, " sample --server ", address_, " --labels 1,1200"),
                &output),
            0);
  EXPECT_NE(output.find("INVALID_ARGUMENT"), std::string::npos) << output;
  EXPECT_NE(output.find("labels[1] = 1200"), std::string::npos) << output;
  fs::remove_all(dir);
}

TEST_F(ServerTest, CliDpmSolverRunsReproduceEveryReferenceCase) {
  GD_REQUIRE_DPM_FIXTURES();
  Start();
  const auto& dpm = testing::Dpm64();
  const std::string dir = testing::TempDir("cli-dpm");
  ASSERT_TRUE(WriteNpy(dir + "/x_T.npy", dpm.at("x_T")).ok());
  const torch::Tensor y = dpm.at("y");
  struct Case {
    std::string key, flags;
  };
  const std::vector<Case> cases = {
      {"dpmpp_2m_12_logsnr_guided_clip", "--solver_order 2 --steps 12 --skip_type logSNR"},
      {"dpmpp_3m_10_time_quadratic_guided_clip",
       "--solver_order 3 --steps 10 --skip_type time_quadratic"},
      {"dpmpp_2m_8_time_uniform_unguided_clip",
       "--solver_order 2 --steps 8 --skip_type time_uniform"},
      {"dpmpp_1m_6_logsnr_guided_clip", "--solver_order 1 --steps 6 --skip_type logSNR"},
      {"dpmpp_2m_12_logsnr_guided_dynthresh",
       "--solver_order 2 --steps 12 --skip_type logSNR --dynamic_thresholding_ratio 0.995"},
  };
  for (const auto& c : cases) {
    const bool guided = c.key.find("_guided_") != std::string::npos;
    const std::string command = absl::StrCat(
        GD_CLI_PATH, " sample --server ", address_, " --labels ", y[0].item<int64_t>(), ",",
        y[1].item<int64_t>(), " --sampler dpm++ ", c.flags, " --classifier_scale ",
        guided ? dpm.at("scale").item<double>() : 0.0, " --noise ", dir, "/x_T.npy --tensor_out ",
        dir, "/out.npy");
    std::string output;
    ASSERT_EQ(RunCommand(command, &output), 0) << command << "\n" << output;
    auto samples = ReadNpy(dir + "/out.npy");
    ASSERT_TRUE(samples.ok()) << samples.status();
    // The service returns samples clamped to [-1, 1]; the reference's are not clamped.
    const double error = (*samples - dpm.at(c.key).clamp(-1, 1)).abs().max().item<double>();
    EXPECT_LE(error, 1e-3) << c.key;
  }
  fs::remove_all(dir);
}

// ---- gd-server's lifecycle ---------------------------------------------------------------------

// A port nobody listens on now: bind to 0, read it back, release it.
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// Starts gd-server with `args` on a free port, waits for SERVING, runs `body` with a client and
// the server's pid, then SIGTERM; the server must exit 0.
void WithServerProcess(const std::vector<std::string>& args,
                       const std::function<void(client::SamplerClient&, pid_t)>& body) {
  const int port = FreePort();
  ASSERT_GT(port, 0);
  std::vector<std::string> argv = {GD_SERVER_PATH, "--host", "127.0.0.1", "--port",
                                   std::to_string(port), "--metrics_port", "0", "--threads", "1"};
  argv.insert(argv.end(), args.begin(), args.end());
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::vector<char*> raw;
    for (auto& a : argv) raw.push_back(a.data());
    raw.push_back(nullptr);
    execv(GD_SERVER_PATH, raw.data());
    _exit(127);
  }
  client::ClientOptions options;
  options.target = "127.0.0.1:" + std::to_string(port);
  auto c = client::SamplerClient::Create(options);
  ASSERT_TRUE(c.ok());
  std::string health;
  for (int i = 0; i < 300 && health != "SERVING"; ++i) {
    auto h = (*c)->Health();
    if (h.ok()) health = *h;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(health, "SERVING");
  if (health == "SERVING") body(**c, pid);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

void WithServer(const std::vector<std::string>& args,
                const std::function<void(client::SamplerClient&)>& body) {
  WithServerProcess(args, [&](client::SamplerClient& c, pid_t) { body(c); });
}

bool HasBundledModel() {
  return fs::exists(testing::SourceDir() + "/models/fashion-mnist/model.json");
}

TEST(ServerBinary, ServesUntilSigtermThenDrainsAndExitsZero) {
  GD_REQUIRE_PARITY_FIXTURES();
  const testing::ParityFixture& fixture = testing::Parity64();
  const ModelSpec spec = fixture.Spec(/*with_classifier=*/false);
  WithServer({"--model_path", spec.model_path, "--model_flags", spec.model_flags,
              "--drain_timeout_s", "5"},
             [](client::SamplerClient& c) {
               auto models = c.ListModels();
               ASSERT_TRUE(models.ok()) << models.status();
               EXPECT_EQ(models->models(0).name(), "model");
               EXPECT_FALSE(models->models(0).has_classifier());
             });
}

TEST(ServerBinary, ServesWhatGdTrainJustWrote) {
  const std::string dir = testing::TempDir("trained");
  // 64 random grey 16x16 images: enough for a few steps of a tiny model.
  torch::manual_seed(0);
  ASSERT_TRUE(WriteNpz(dir + "/data.npz",
                       {{"arr_0", torch::randint(0, 256, {64, 16, 16}, torch::kUInt8)},
                        {"arr_1", torch::randint(0, 2, {64}, torch::kInt64)}})
                  .ok());
  std::string output;
  ASSERT_EQ(RunCommand(absl::StrCat(GD_TRAIN_PATH, " diffusion --data ", dir, "/data.npz --out ", dir,
                             "/out --image_size 16 --in_channels 1 --num_channels 32 "
                             "--channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8 "
                             "--learn_sigma True --diffusion_steps 50 --batch_size 8 "
                             "--max_steps 3 --threads 1"),
                &output),
            0)
      << output;
  WithServer({"--model_dir", dir + "/out"}, [](client::SamplerClient& c) {
    auto models = c.ListModels();
    ASSERT_TRUE(models.ok());
    EXPECT_EQ(models->models(0).name(), "out");
    EXPECT_EQ(models->models(0).image_size(), 16u);
    v1::SampleRequest request;
    request.set_num_samples(2);
    request.set_timestep_respacing("5");
    auto response = c.Sample(request);
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->png_size(), 2);
  });
  fs::remove_all(dir);
}

TEST(ServerBinary, ServesTheBundledModelWithoutFlags) {
  if (!fs::exists(testing::SourceDir() + "/models/fashion-mnist/model.json")) {
    GTEST_SKIP() << "no bundled model in models/fashion-mnist";
  }
  WithServer({}, [](client::SamplerClient& c) {
    auto info = c.GetModel("");
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->name(), "fashion-mnist");
    EXPECT_TRUE(info->has_classifier());
    EXPECT_EQ(info->class_names_size(), 10);
    v1::SampleRequest request;
    request.add_labels(1);
    request.set_classifier_scale(3);
    request.set_sampler(v1::SAMPLER_KIND_DDIM);
    request.set_timestep_respacing("ddim5");
    EXPECT_TRUE(c.Sample(request).ok());
  });
}

// --max_connection_age_s closes connections so clients re-resolve and reach new replicas; a
// stream that outlives its connection's age still finishes, and the channel reconnects.
TEST(ServerBinary, AgedConnectionsLetCallsInFlightFinishAndReconnect) {
  if (!fs::exists(testing::SourceDir() + "/models/fashion-mnist/model.json")) {
    GTEST_SKIP() << "no bundled model in models/fashion-mnist";
  }
  WithServer({"--max_connection_age_s", "1"}, [](client::SamplerClient& c) {
    v1::SampleRequest request;
    request.add_labels(2);
    request.set_sampler(v1::SAMPLER_KIND_DDIM);
    request.set_timestep_respacing("ddim5");
    ASSERT_TRUE(c.Sample(request).ok());
    // Long enough (~2-4 s here) to span the connection's 1 s age.
    v1::SampleRequest long_stream = request;
    long_stream.set_timestep_respacing("ddim40");
    const auto started = std::chrono::steady_clock::now();
    int steps = 0;
    auto result = c.StreamSample(long_stream, [&](const v1::SampleEvent& e) {
      steps += e.has_step() ? 1 : 0;
      return true;
    });
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(steps, 40);
    if (std::chrono::steady_clock::now() - started < std::chrono::milliseconds(1500)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    }
    EXPECT_TRUE(c.Sample(request).ok()) << "the channel reconnects after the server's GOAWAY";
  });
}

// SIGTERM while streams run: they finish within the drain time, nothing new is accepted, and the
// process exits 0 (WithServerProcess checks the exit).
TEST(ServerBinary, SigtermLetsStreamsInFlightFinishAndRefusesNewOnes) {
  if (!HasBundledModel()) GTEST_SKIP() << "no bundled model in models/fashion-mnist";
  WithServerProcess({"--drain_timeout_s", "60"}, [](client::SamplerClient& c, pid_t pid) {
    v1::SampleRequest request;
    request.add_labels(3);
    request.set_sampler(v1::SAMPLER_KIND_DDIM);
    request.set_timestep_respacing("ddim50");
    std::atomic<int> started{0};
    std::vector<std::future<absl::Status>> streams;
    for (int i = 0; i < 3; ++i) {
      streams.push_back(std::async(std::launch::async, [&, i] {
        v1::SampleRequest mine = request;
        mine.set_seed(i);
        bool counted = false;
        return c.StreamSample(mine, [&](const v1::SampleEvent& e) {
          if (e.has_step() && !counted) counted = (++started, true);
          return true;
        }).status();
      }));
    }
    for (int i = 0; i < 600 && started < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_EQ(started, 3);
    ASSERT_EQ(kill(pid, SIGTERM), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const auto refused = c.Sample(request);
    EXPECT_FALSE(refused.ok()) << "a request after SIGTERM is not accepted";
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
    for (auto& stream : streams) EXPECT_TRUE(stream.get().ok()) << "streams in flight finish";
  });
}

// A checkpoint that is truncated, corrupt or made for other flags: a clear error naming the file
// and a non-zero exit, never a crash.
TEST(ServerBinary, BadCheckpointsFailAtStartWithAMessage) {
  if (!HasBundledModel()) GTEST_SKIP() << "no bundled model in models/fashion-mnist";
  const std::string model_dir = testing::SourceDir() + "/models/fashion-mnist";
  auto spec = ReadModelDir(model_dir);
  ASSERT_TRUE(spec.ok()) << spec.status();
  const std::string dir = testing::TempDir("bad-checkpoints");
  std::ifstream in(spec->model_path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 4096u);
  std::ofstream(dir + "/truncated.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  std::string corrupt = bytes;
  for (size_t i = 8; i < 64; ++i) corrupt[i] = '\xff';  // inside the JSON header
  std::ofstream(dir + "/corrupt.safetensors", std::ios::binary) << corrupt;
  const std::string wider = absl::StrReplaceAll(spec->model_flags, {{"--num_channels 32 ", "--num_channels 64 "}});
  ASSERT_NE(wider, spec->model_flags);
  struct Case {
    std::string path, flags, needle;
  };
  for (const Case& c : {Case{dir + "/truncated.safetensors", spec->model_flags, "truncated"},
                        Case{dir + "/corrupt.safetensors", spec->model_flags, "corrupt"},
                        Case{spec->model_path, wider, "shape"}}) {
    std::string output;
    const int code = RunCommand(absl::StrCat(GD_SERVER_PATH, " --port 0 --metrics_port 0 --model_path ",
                                             c.path, " --model_flags '", c.flags, "'"),
                                &output);
    EXPECT_EQ(code, 1) << c.needle << ": " << output;
    EXPECT_NE(output.find(c.path), std::string::npos) << c.needle << ": " << output;
  }
  fs::remove_all(dir);
}

TEST(ServerBinary, BadFlagsFailWithAMessage) {
  // Free ports for both listeners: a server already on the default metrics port (9090) must not
  // turn these into a "cannot listen" failure.
  const std::string server = absl::StrCat(GD_SERVER_PATH, " --port 0 --metrics_port 0");
  std::string output;
  EXPECT_EQ(RunCommand(absl::StrCat(server, " --model_path /nonexistent.pt --model_flags "
                                            "\"--image_size 64\""),
                       &output),
            1);
  EXPECT_NE(output.find("/nonexistent.pt"), std::string::npos) << output;
  EXPECT_EQ(RunCommand(absl::StrCat(server, " --dtype fp8"), &output), 1);
  EXPECT_NE(output.find("fp8"), std::string::npos) << output;
  EXPECT_EQ(RunCommand(absl::StrCat(server, " --max_connection_age_s -1"), &output), 1);
  EXPECT_NE(output.find("--max_connection_age_s = -1"), std::string::npos) << output;
  // 0 picks the lanes for the device; a negative count is refused by name.
  EXPECT_EQ(RunCommand(absl::StrCat(server, " --lanes -1"), &output), 1);
  EXPECT_NE(output.find("--lanes = -1"), std::string::npos) << output;
}

}  // namespace
}  // namespace gd
