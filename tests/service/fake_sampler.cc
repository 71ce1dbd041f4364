#include "tests/service/fake_sampler.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

int64_t ImageCount(const v1::SampleRequest& request) {
  return request.labels_size() > 0 ? request.labels_size() : request.num_samples();
}

bool IsDpmSolver(const v1::SampleRequest& request) {
  return request.sampler() == v1::SAMPLER_KIND_DPM_SOLVER_PP;
}

uint32_t Steps(const v1::SampleRequest& request) {
  if (IsDpmSolver(request)) return request.steps();
  uint32_t steps = 0;
  return absl::SimpleAtoi(request.timestep_respacing(), &steps) ? steps : kDefaultSteps;
}

grpc::Status Check(const v1::SampleRequest& request) {
  int code = 0;
  if (absl::StartsWith(request.model(), "status:") &&
      absl::SimpleAtoi(request.model().substr(7), &code)) {
    return grpc::Status(static_cast<grpc::StatusCode>(code), absl::StrCat("canned failure ", code));
  }
  if (!request.model().empty() && request.model() != "tiny") {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("no model \"", request.model(), "\""));
  }
  for (int i = 0; i < request.labels_size(); ++i) {
    if (request.labels(i) < 0 || request.labels(i) >= kNumClasses) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("labels[", i, "] = ", request.labels(i), " is outside [0, ",
                                       kNumClasses, ") for model \"tiny\""));
    }
  }
  if (ImageCount(request) == 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no images asked for");
  }
  if (ImageCount(request) > kTinyMaxImagesPerRequest) {
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat(ImageCount(request), " images exceed max_images_per_request = ",
                     kTinyMaxImagesPerRequest, " of model \"tiny\""));
  }
  if (IsDpmSolver(request) && request.steps() == 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "steps = 0: DPM-Solver++ needs steps >= 1");
  }
  return grpc::Status::OK;
}

v1::SampleResponse Result(const v1::SampleRequest& request) {
  const int64_t n = ImageCount(request);
  v1::SampleResponse response;
  response.set_request_id("req-1");
  response.set_model("tiny");
  for (int64_t i = 0; i < n; ++i) {
    response.add_labels(request.labels_size() > 0 ? request.labels(i) : 0);
  }
  const formats::Array samples =
      CannedSamples(n, 0, static_cast<int64_t>(request.first_image_index()));
  if (!request.output().skip_png()) {
    for (std::string& png : SamplesToPngs(samples)) response.add_png(std::move(png));
  }
  if (request.output().float32()) *response.mutable_samples() = ToTensor(samples);
  if (request.output().uint8())
    *response.mutable_images_uint8() = ToTensor(*SamplesToUint8(samples));
  response.set_steps(Steps(request));
  response.set_queue_seconds(0.25);
  response.set_sampling_seconds(2.0);
  return response;
}

}  // namespace

// ---- Canned data --------------------------------------------------------------------------------

float CannedValue(int64_t image, int64_t c, int64_t y, int64_t x) {
  return -1.0f + 2.0f * static_cast<float>((image * 7 + c * 5 + y * 3 + x) % 17) / 16.0f;
}

formats::Array FloatArray(std::vector<int64_t> shape, const std::vector<float>& values) {
  formats::Array array;
  array.dtype = formats::DType::kFloat32;
  array.shape = std::move(shape);
  array.data.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  return array;
}

std::vector<float> Floats(const formats::Array& array) {
  std::vector<float> values(array.data.size() / sizeof(float));
  std::memcpy(values.data(), array.data.data(), values.size() * sizeof(float));
  return values;
}

formats::Array CannedSamples(int64_t n, float offset, int64_t first_image) {
  std::vector<float> values;
  for (int64_t i = first_image; i < first_image + n; ++i) {
    for (int64_t c = 0; c < kChannels; ++c) {
      for (int64_t y = 0; y < kImageSize; ++y) {
        for (int64_t x = 0; x < kImageSize; ++x) values.push_back(CannedValue(i, c, y, x) + offset);
      }
    }
  }
  return FloatArray({n, kChannels, kImageSize, kImageSize}, values);
}

formats::Array CannedXt(int64_t n, uint32_t step, int64_t first_image) {
  return CannedSamples(n, static_cast<float>(step) / 100, first_image);
}

formats::Array CannedPredXstart(int64_t n, uint32_t step, int64_t first_image) {
  return CannedSamples(n, -static_cast<float>(step) / 100, first_image);
}

std::vector<std::string> SamplesToPngs(const formats::Array& samples) {
  std::vector<std::string> pngs;
  absl::StatusOr<formats::Array> pixels = SamplesToUint8(samples);
  EXPECT_TRUE(pixels.ok()) << pixels.status();
  if (!pixels.ok()) return pngs;
  const absl::StatusOr<std::vector<formats::Image>> images = Uint8ToImages(*pixels);
  EXPECT_TRUE(images.ok()) << images.status();
  if (!images.ok()) return pngs;
  for (const formats::Image& image : *images) pngs.push_back(*formats::EncodePng(image));
  return pngs;
}

v1::Tensor ToTensor(const formats::Array& array) {
  absl::StatusOr<v1::Tensor> tensor = ArrayToTensor(array);
  EXPECT_TRUE(tensor.ok()) << tensor.status();
  return tensor.ok() ? *tensor : v1::Tensor();
}

formats::Array ToHalf(const formats::Array& array) {
  formats::Array half;
  half.dtype = formats::DType::kFloat16;
  half.shape = array.shape;
  for (float value : Floats(array)) {
    const uint16_t bits = formats::FloatToHalf(value);
    half.data.append(reinterpret_cast<const char*>(&bits), 2);
  }
  return half;
}

// ---- Models -------------------------------------------------------------------------------------

v1::ModelInfo TinyModel() {
  v1::ModelInfo model;
  model.set_name("tiny");
  model.set_description("canned test model");
  model.set_image_size(kImageSize);
  model.set_channels(kChannels);
  model.set_num_classes(kNumClasses);
  model.set_class_conditional(true);
  model.set_has_classifier(true);
  model.set_diffusion_steps(100);
  model.add_samplers(v1::SAMPLER_KIND_DDPM);
  model.add_samplers(v1::SAMPLER_KIND_DDIM);
  model.set_max_images_per_request(kTinyMaxImagesPerRequest);
  for (const char* name : {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                           "Sneaker", "Bag", "Ankle boot"}) {
    model.add_class_names(name);
  }
  return model;
}

v1::ModelInfo UnconditionalModel() {
  v1::ModelInfo model = TinyModel();
  model.set_name("uncond-big");
  model.set_image_size(256);
  model.set_num_classes(0);
  model.set_class_conditional(false);
  model.set_has_classifier(false);
  model.set_diffusion_steps(1000);
  model.clear_samplers();
  model.add_samplers(v1::SAMPLER_KIND_DDIM);
  model.add_samplers(v1::SAMPLER_KIND_DPM_SOLVER_PP);
  model.clear_class_names();
  model.set_max_images_per_request(4);
  model.set_default_classifier_scale(2.5);
  model.set_max_steps(500);
  model.set_max_classifier_scale(50);
  return model;
}

// ---- FakeSampler --------------------------------------------------------------------------------

grpc::Status FakeSampler::Sample(grpc::ServerContext* context, const v1::SampleRequest* request,
                                 v1::SampleResponse* response) {
  Record(context, *request, "Sample");
  const CallInFlight call(this);
  if (!call.admitted.ok()) return call.admitted;
  if (request->model() == "slow") return WaitForCancel(context);
  if (grpc::Status status = Check(*request); !status.ok()) return status;
  *response = Result(*request);
  return grpc::Status::OK;
}

grpc::Status FakeSampler::StreamSample(grpc::ServerContext* context,
                                       const v1::SampleRequest* request,
                                       grpc::ServerWriter<v1::SampleEvent>* writer) {
  Record(context, *request, "StreamSample");
  ++stream_calls_;
  const CallInFlight call(this);
  if (!call.admitted.ok()) return call.admitted;
  if (request->model() == "endless") return StreamUntilCancelled(context, writer);
  if (grpc::Status status = Check(*request); !status.ok()) return status;
  const uint32_t total = Steps(*request);
  const int64_t n = ImageCount(*request);
  const auto first_image = static_cast<int64_t>(request->first_image_index());
  v1::SampleEvent event;
  v1::Accepted* accepted = event.mutable_accepted();
  accepted->set_request_id("req-1");
  accepted->set_total_steps(total);
  accepted->set_num_images(static_cast<uint32_t>(n));
  writer->Write(event);
  const v1::StreamOptions& stream = request->stream();
  for (uint32_t step = 0; step < total; ++step) {
    if (stream.every() > 1 && step % stream.every() != 0 && step + 1 != total) continue;
    event.Clear();
    v1::StepEvent* step_event = event.mutable_step();
    step_event->set_step(step);
    step_event->set_total_steps(total);
    step_event->set_timestep(total - 1 - step);
    step_event->set_continuous_timestep(total - 1 - step + (IsDpmSolver(*request) ? 0.25 : 0.0));
    step_event->set_images_per_second(1.5);
    const formats::Array x_t = CannedXt(n, step, first_image);
    const formats::Array pred_xstart = CannedPredXstart(n, step, first_image);
    if (stream.format() == v1::StreamOptions::FORMAT_PNG) {
      if (stream.x_t()) {
        for (std::string& png : SamplesToPngs(x_t)) step_event->add_x_t_png(std::move(png));
      }
      if (stream.pred_xstart()) {
        for (std::string& png : SamplesToPngs(pred_xstart)) {
          step_event->add_pred_xstart_png(std::move(png));
        }
      }
    } else {
      const bool half = stream.format() == v1::StreamOptions::FORMAT_TENSOR_FLOAT16;
      if (stream.x_t()) *step_event->mutable_x_t() = ToTensor(half ? ToHalf(x_t) : x_t);
      if (stream.pred_xstart()) {
        *step_event->mutable_pred_xstart() = ToTensor(half ? ToHalf(pred_xstart) : pred_xstart);
      }
    }
    writer->Write(event);
  }
  event.Clear();
  *event.mutable_result() = Result(*request);
  writer->Write(event);
  return grpc::Status::OK;
}

grpc::Status FakeSampler::ListModels(grpc::ServerContext* context, const v1::ListModelsRequest*,
                                     v1::ListModelsResponse* response) {
  Record(context, v1::SampleRequest(), "ListModels");
  *response->add_models() = TinyModel();
  *response->add_models() = UnconditionalModel();
  response->set_default_model("tiny");
  return grpc::Status::OK;
}

grpc::Status FakeSampler::GetModel(grpc::ServerContext* context, const v1::GetModelRequest* request,
                                   v1::ModelInfo* response) {
  Record(context, v1::SampleRequest(), "GetModel");
  if (request->name().empty() || request->name() == "tiny") {
    *response = TinyModel();
  } else if (request->name() == "uncond-big") {
    *response = UnconditionalModel();
  } else {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("no model \"", request->name(), "\""));
  }
  return grpc::Status::OK;
}

v1::SampleRequest FakeSampler::last_request() {
  std::unique_lock<std::mutex> lock(mu_);
  return last_request_;
}

std::string FakeSampler::last_method() {
  std::unique_lock<std::mutex> lock(mu_);
  return last_method_;
}

std::vector<v1::SampleRequest> FakeSampler::sample_requests() {
  std::unique_lock<std::mutex> lock(mu_);
  return sample_requests_;
}

void FakeSampler::FailNextCalls(int count, grpc::StatusCode code, int after) {
  std::unique_lock<std::mutex> lock(mu_);
  successes_before_failures_ = after;
  failures_left_ = count;
  failures_injected_ = 0;
  failure_code_ = code;
}

void FakeSampler::SetDelay(absl::Duration delay) {
  std::unique_lock<std::mutex> lock(mu_);
  delay_ = delay;
}

void FakeSampler::HoldUntilInFlight(int count) {
  std::unique_lock<std::mutex> lock(mu_);
  hold_until_in_flight_ = count;
}

FakeSampler::CallInFlight::CallInFlight(FakeSampler* fake) : fake(fake), admitted(fake->Admit()) {}

FakeSampler::CallInFlight::~CallInFlight() { fake->Leave(); }

grpc::Status FakeSampler::Admit() {
  absl::Duration delay;
  {
    std::unique_lock<std::mutex> lock(mu_);
    ++in_flight_;
    changed_.notify_all();
    max_in_flight_ = std::max(max_in_flight_.load(), in_flight_);
    if (hold_until_in_flight_ > 0) {
      changed_.wait_for(lock, std::chrono::seconds(10),
                        [this] { return in_flight_ >= hold_until_in_flight_; });
      hold_until_in_flight_ = 0;  // once: the calls after these go straight through
    }
    delay = delay_;
  }
  absl::SleepFor(delay);
  std::unique_lock<std::mutex> lock(mu_);
  if (failures_left_ == 0) return grpc::Status::OK;
  if (successes_before_failures_ > 0) {
    --successes_before_failures_;
    return grpc::Status::OK;
  }
  --failures_left_;
  ++failures_injected_;
  return grpc::Status(failure_code_, absl::StrCat("injected failure ", failures_injected_, " of ",
                                                  failures_injected_ + failures_left_));
}

void FakeSampler::Leave() {
  std::unique_lock<std::mutex> lock(mu_);
  --in_flight_;
}

std::string FakeSampler::last_authorization() {
  std::unique_lock<std::mutex> lock(mu_);
  return last_authorization_;
}

bool FakeSampler::WaitForCancellation(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return changed_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                           [this] { return saw_cancellation_; });
}

void FakeSampler::Record(grpc::ServerContext* context, const v1::SampleRequest& request,
                         const char* method) {
  ++calls_;
  std::unique_lock<std::mutex> lock(mu_);
  last_method_ = method;
  last_request_ = request;
  if (absl::string_view(method) == "Sample" || absl::string_view(method) == "StreamSample") {
    sample_requests_.push_back(request);
  }
  last_authorization_.clear();
  auto it = context->client_metadata().find("authorization");
  if (it != context->client_metadata().end()) {
    last_authorization_.assign(it->second.data(), it->second.size());
  }
}

void FakeSampler::MarkCancelled() {
  ++cancellations_;
  std::unique_lock<std::mutex> lock(mu_);
  saw_cancellation_ = true;
  changed_.notify_all();
}

grpc::Status FakeSampler::WaitForCancel(grpc::ServerContext* context) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!context->IsCancelled() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (context->IsCancelled()) MarkCancelled();
  return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
}

grpc::Status FakeSampler::StreamUntilCancelled(grpc::ServerContext* context,
                                               grpc::ServerWriter<v1::SampleEvent>* writer) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  v1::SampleEvent event;
  event.mutable_accepted()->set_total_steps(1000000);
  writer->Write(event);
  for (uint32_t step = 0; std::chrono::steady_clock::now() < give_up; ++step) {
    event.Clear();
    event.mutable_step()->set_step(step);
    event.mutable_step()->set_total_steps(1000000);
    if (context->IsCancelled() || !writer->Write(event)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (context->IsCancelled()) MarkCancelled();
  return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
}

// ---- FakeServer and ClientTest ------------------------------------------------------------------

FakeServer::FakeServer(std::shared_ptr<grpc::ServerCredentials> credentials) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", std::move(credentials), &port_);
  builder.RegisterService(&sampler_);
  server_ = builder.BuildAndStart();
}

FakeServer::~FakeServer() {
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
}

std::string FakeServer::address() const { return absl::StrCat("127.0.0.1:", port_); }

std::unique_ptr<SamplerClient> ClientTest::Connect(ClientOptions options) {
  options.target = server_.address();
  absl::StatusOr<std::unique_ptr<SamplerClient>> client = SamplerClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

v1::SampleRequest ClientTest::LabelledRequest(std::vector<int64_t> labels) {
  v1::SampleRequest request;
  request.mutable_labels()->Add(labels.begin(), labels.end());
  return request;
}

}  // namespace gd::client
