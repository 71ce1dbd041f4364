// Tests of client/: the SamplerClient library and the gd CLI (run as a subprocess), against the
// in-process fake Sampler server of fake_sampler.h (canned, checkable answers and gRPC's default
// health service). No LibTorch and no real model: what is tested is the client's side of the wire
// contract. The viewer and the trajectory pictures have their own files.
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/gd_client.h"
#include "core/io/formats/formats.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/service/cli_runner.h"
#include "tests/service/fake_sampler.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

// ---- The library against the fake ---------------------------------------------------------------

TEST_F(ClientTest, SampleRoundTripsRequestAndResponse) {
  std::unique_ptr<SamplerClient> client = Connect();
  v1::SampleRequest request = LabelledRequest({1, 2, 3});
  request.set_classifier_scale(4.0);
  request.set_sampler(v1::SAMPLER_KIND_DDIM);
  request.set_timestep_respacing("7");
  request.set_seed(42);
  request.mutable_clip_denoised()->set_value(false);
  request.mutable_output()->set_float32(true);
  request.mutable_output()->set_uint8(true);

  absl::StatusOr<v1::SampleResponse> response = client->Sample(request);
  ASSERT_TRUE(response.ok()) << response.status();

  const v1::SampleRequest seen = server_.sampler().last_request();
  EXPECT_THAT(seen.labels(), ElementsAre(1, 2, 3));
  EXPECT_EQ(seen.classifier_scale(), 4.0);
  EXPECT_EQ(seen.sampler(), v1::SAMPLER_KIND_DDIM);
  EXPECT_EQ(seen.seed(), 42u);
  EXPECT_TRUE(seen.has_clip_denoised());
  EXPECT_FALSE(seen.clip_denoised().value());

  EXPECT_EQ(response->request_id(), "req-1");
  EXPECT_THAT(response->labels(), ElementsAre(1, 2, 3));
  EXPECT_EQ(response->steps(), 7u);
  absl::StatusOr<formats::Array> samples = TensorToArray(response->samples(), "samples");
  ASSERT_TRUE(samples.ok()) << samples.status();
  EXPECT_EQ(samples->shape, (std::vector<int64_t>{3, kChannels, kImageSize, kImageSize}));
  EXPECT_EQ(samples->data, CannedSamples(3).data);
  absl::StatusOr<formats::Array> images = TensorToArray(response->images_uint8(), "images");
  ASSERT_TRUE(images.ok()) << images.status();
  EXPECT_EQ(images->dtype, formats::DType::kUInt8);
  EXPECT_EQ(images->shape, (std::vector<int64_t>{3, kImageSize, kImageSize, kChannels}));
  // PNGs hold the same pixels as images_uint8.
  ASSERT_EQ(response->png_size(), 3);
  absl::StatusOr<formats::Image> png = formats::DecodePng(response->png(1), "png[1]");
  ASSERT_TRUE(png.ok()) << png.status();
  EXPECT_EQ(png->pixels, images->data.substr(kImageSize * kImageSize * kChannels,
                                             kImageSize * kImageSize * kChannels));
}

TEST_F(ClientTest, StreamSampleCallbackSeesEveryEventInOrder) {
  std::unique_ptr<SamplerClient> client = Connect();
  v1::SampleRequest request = LabelledRequest({4, 5});
  request.set_timestep_respacing("5");
  request.mutable_stream()->set_every(2);
  request.mutable_stream()->set_x_t(true);
  request.mutable_stream()->set_pred_xstart(true);

  std::vector<std::string> kinds;
  std::vector<uint32_t> steps;
  absl::StatusOr<v1::SampleResponse> result =
      client->StreamSample(request, [&](const v1::SampleEvent& event) {
        if (event.has_accepted()) kinds.push_back("accepted");
        if (event.has_result()) kinds.push_back("result");
        if (event.has_step()) {
          kinds.push_back("step");
          steps.push_back(event.step().step());
          absl::StatusOr<formats::Array> x_t = TensorToArray(event.step().x_t(), "x_t");
          EXPECT_TRUE(x_t.ok()) << x_t.status();
          if (x_t.ok()) {
            EXPECT_EQ(x_t->data, CannedSamples(2, event.step().step() / 100.0f).data);
          }
        }
        return true;
      });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(kinds, ElementsAre("accepted", "step", "step", "step", "result"));
  EXPECT_THAT(steps, ElementsAre(0, 2, 4));  // every 2nd, and the last
  EXPECT_THAT(result->labels(), ElementsAre(4, 5));
}

TEST_F(ClientTest, StreamReaderIteratesToTheEndAndFinishesOk) {
  std::unique_ptr<SamplerClient> client = Connect();
  std::unique_ptr<StreamReader> stream = client->OpenStream(LabelledRequest({0}));
  v1::SampleEvent event;
  int events = 0;
  bool saw_result = false;
  while (stream->Next(&event)) {
    ++events;
    saw_result |= event.has_result();
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(stream->Finish().ok());  // idempotent
  EXPECT_EQ(events, 1 + static_cast<int>(kDefaultSteps) + 1);
  EXPECT_TRUE(saw_result);
  EXPECT_FALSE(stream->Next(&event));
}

TEST_F(ClientTest, StreamReaderReportsServerErrorsInFinish) {
  std::unique_ptr<SamplerClient> client = Connect();
  std::unique_ptr<StreamReader> stream = client->OpenStream(LabelledRequest({0, 11}));
  v1::SampleEvent event;
  EXPECT_FALSE(stream->Next(&event));
  absl::Status status = stream->Finish();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "labels[1] = 11 is outside [0, 10) for model \"tiny\"");
}

TEST_F(ClientTest, CallbackReturningFalseCancelsTheCall) {
  std::unique_ptr<SamplerClient> client = Connect();
  v1::SampleRequest request = LabelledRequest({1});
  request.set_model("endless");
  int steps_seen = 0;
  absl::StatusOr<v1::SampleResponse> result =
      client->StreamSample(request, [&](const v1::SampleEvent& event) {
        if (event.has_step()) ++steps_seen;
        return steps_seen < 3;
      });
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(steps_seen, 3);
  EXPECT_TRUE(server_.sampler().WaitForCancellation(absl::Seconds(10)));
}

TEST_F(ClientTest, StreamReaderCancelReachesTheServer) {
  std::unique_ptr<SamplerClient> client = Connect();
  v1::SampleRequest request = LabelledRequest({1});
  request.set_model("endless");
  std::unique_ptr<StreamReader> stream = client->OpenStream(request);
  v1::SampleEvent event;
  ASSERT_TRUE(stream->Next(&event));
  EXPECT_TRUE(event.has_accepted());
  ASSERT_TRUE(stream->Next(&event));
  EXPECT_TRUE(event.has_step());
  stream->Cancel();
  EXPECT_EQ(stream->Finish().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(server_.sampler().WaitForCancellation(absl::Seconds(10)));
}

TEST_F(ClientTest, DestroyingAnUnfinishedStreamCancelsIt) {
  std::unique_ptr<SamplerClient> client = Connect();
  v1::SampleRequest request = LabelledRequest({1});
  request.set_model("endless");
  {
    std::unique_ptr<StreamReader> stream = client->OpenStream(request);
    v1::SampleEvent event;
    ASSERT_TRUE(stream->Next(&event));
  }
  EXPECT_TRUE(server_.sampler().WaitForCancellation(absl::Seconds(10)));
}

TEST_F(ClientTest, StatusCodesMapOneToOne) {
  std::unique_ptr<SamplerClient> client = Connect();
  for (int code = 1; code <= 16; ++code) {
    SCOPED_TRACE(code);
    v1::SampleRequest request = LabelledRequest({1});
    request.set_model(absl::StrCat("status:", code));
    absl::StatusOr<v1::SampleResponse> unary = client->Sample(request);
    EXPECT_EQ(static_cast<int>(unary.status().code()), code);
    EXPECT_EQ(unary.status().message(), absl::StrCat("canned failure ", code));
    absl::StatusOr<v1::SampleResponse> streamed =
        client->StreamSample(request, [](const v1::SampleEvent&) { return true; });
    EXPECT_EQ(static_cast<int>(streamed.status().code()), code);
    EXPECT_EQ(streamed.status().message(), absl::StrCat("canned failure ", code));
  }
  EXPECT_EQ(FromGrpcStatus(grpc::Status::OK), absl::OkStatus());
}

TEST_F(ClientTest, BearerTokenReachesTheServerOnEveryCall) {
  ClientOptions options;
  options.auth_token = "s3cret-token";
  std::unique_ptr<SamplerClient> client = Connect(options);
  ASSERT_TRUE(client->Sample(LabelledRequest({1})).ok());
  EXPECT_EQ(server_.sampler().last_authorization(), "Bearer s3cret-token");
  ASSERT_TRUE(client->StreamSample(LabelledRequest({1}), [](const auto&) { return true; }).ok());
  EXPECT_EQ(server_.sampler().last_authorization(), "Bearer s3cret-token");
  ASSERT_TRUE(client->ListModels().ok());
  EXPECT_EQ(server_.sampler().last_authorization(), "Bearer s3cret-token");
  ASSERT_TRUE(client->GetModel("").ok());
  EXPECT_EQ(server_.sampler().last_authorization(), "Bearer s3cret-token");
}

TEST_F(ClientTest, NoTokenSendsNoAuthorization) {
  std::unique_ptr<SamplerClient> client = Connect();
  ASSERT_TRUE(client->ListModels().ok());
  EXPECT_THAT(server_.sampler().last_authorization(), IsEmpty());
}

TEST_F(ClientTest, ShortTimeoutIsDeadlineExceededAndTheServerSeesIt) {
  ClientOptions options;
  options.timeout_ms = 200;
  std::unique_ptr<SamplerClient> client = Connect(options);
  v1::SampleRequest request = LabelledRequest({1});
  request.set_model("slow");
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<v1::SampleResponse> response = client->Sample(request);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(elapsed, std::chrono::milliseconds(150));
  EXPECT_LT(elapsed, std::chrono::seconds(5));
  EXPECT_TRUE(server_.sampler().WaitForCancellation(absl::Seconds(10)));
}

TEST_F(ClientTest, ListModelsAndGetModel) {
  std::unique_ptr<SamplerClient> client = Connect();
  absl::StatusOr<v1::ListModelsResponse> list = client->ListModels();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->models_size(), 2);
  EXPECT_EQ(list->models(0).name(), "tiny");
  EXPECT_EQ(list->default_model(), "tiny");
  absl::StatusOr<v1::ModelInfo> model = client->GetModel("uncond-big");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->image_size(), 256u);
  absl::StatusOr<v1::ModelInfo> missing = client->GetModel("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "no model \"nope\"");
}

TEST_F(ClientTest, HealthReportsServingStatus) {
  std::unique_ptr<SamplerClient> client = Connect();
  EXPECT_EQ(client->Health().value_or("error"), "SERVING");
  server_.health()->SetServingStatus("guided_diffusion.v1.Sampler", false);
  EXPECT_EQ(client->Health("guided_diffusion.v1.Sampler").value_or("error"), "NOT_SERVING");
  server_.health()->SetServingStatus("guided_diffusion.v1.Sampler", true);
  EXPECT_EQ(client->Health("guided_diffusion.v1.Sampler").value_or("error"), "SERVING");
  EXPECT_EQ(client->Health("no.such.Service").value_or("error"), "SERVICE_UNKNOWN");
}

TEST(ClientConnectionTest, UnreachableServerIsUnavailable) {
  ClientOptions options;
  options.target = "127.0.0.1:1";  // nothing listens on port 1
  absl::StatusOr<std::unique_ptr<SamplerClient>> client = SamplerClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();  // channels connect lazily
  EXPECT_EQ((*client)->ListModels().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*client)->Health().status().code(), absl::StatusCode::kUnavailable);
}

TEST(ClientConnectionTest, CreateRejectsInconsistentOptions) {
  ClientOptions empty;
  EXPECT_EQ(SamplerClient::Create(empty).status().code(), absl::StatusCode::kInvalidArgument);

  ClientOptions ca_without_tls;
  ca_without_tls.target = "localhost:1";
  ca_without_tls.tls_ca_file = "/etc/ssl/ca.pem";
  absl::Status status = SamplerClient::Create(ca_without_tls).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tls_ca_file"));

  ClientOptions cert_without_key;
  cert_without_key.target = "localhost:1";
  cert_without_key.tls = true;
  cert_without_key.tls_cert_file = "/tmp/cert.pem";
  EXPECT_EQ(SamplerClient::Create(cert_without_key).status().code(),
            absl::StatusCode::kInvalidArgument);

  ClientOptions missing_ca;
  missing_ca.target = "localhost:1";
  missing_ca.tls = true;
  missing_ca.tls_ca_file = "/nonexistent/ca.pem";
  status = SamplerClient::Create(missing_ca).status();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("/nonexistent/ca.pem"));

  ClientOptions no_room;
  no_room.target = "localhost:1";
  no_room.max_message_bytes = 0;
  EXPECT_EQ(SamplerClient::Create(no_room).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Tensor conversions -------------------------------------------------------------------------

TEST(TensorTest, Float32RoundTrip) {
  const formats::Array array = CannedSamples(2);
  absl::StatusOr<v1::Tensor> tensor = ArrayToTensor(array);
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  EXPECT_EQ(tensor->dtype(), v1::DTYPE_FLOAT32);
  EXPECT_THAT(tensor->shape(), ElementsAre(2, kChannels, kImageSize, kImageSize));
  EXPECT_EQ(tensor->data().size(), 2u * kChannels * kImageSize * kImageSize * 4);
  absl::StatusOr<formats::Array> back = TensorToArray(*tensor);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->dtype, formats::DType::kFloat32);
  EXPECT_EQ(back->shape, array.shape);
  EXPECT_EQ(back->data, array.data);
}

TEST(TensorTest, Float16AndUint8RoundTrip) {
  formats::Array half = ToHalf(FloatArray({2, 2}, {-1.0f, 0.5f, 0.0f, 1.0f}));
  absl::StatusOr<v1::Tensor> tensor = ArrayToTensor(half);
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  EXPECT_EQ(tensor->dtype(), v1::DTYPE_FLOAT16);
  absl::StatusOr<formats::Array> back = TensorToArray(*tensor);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->dtype, formats::DType::kFloat16);
  absl::StatusOr<formats::Array> widened = ToFloat32(*back);
  ASSERT_TRUE(widened.ok()) << widened.status();
  EXPECT_THAT(Floats(*widened), ElementsAre(-1.0f, 0.5f, 0.0f, 1.0f));

  formats::Array bytes;
  bytes.dtype = formats::DType::kUInt8;
  bytes.shape = {3};
  bytes.data = std::string("\x00\x7f\xff", 3);
  tensor = ArrayToTensor(bytes);
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  EXPECT_EQ(tensor->dtype(), v1::DTYPE_UINT8);
  back = TensorToArray(*tensor);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->data, bytes.data);
}

TEST(TensorTest, ZeroSizedAndScalarTensors) {
  v1::Tensor empty;
  empty.set_dtype(v1::DTYPE_FLOAT32);
  empty.add_shape(0);
  empty.add_shape(3);
  absl::StatusOr<formats::Array> array = TensorToArray(empty);
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->numel(), 0);

  v1::Tensor scalar;  // shape [] holds one element
  scalar.set_dtype(v1::DTYPE_UINT8);
  scalar.set_data("x");
  EXPECT_TRUE(TensorToArray(scalar).ok());
}

TEST(TensorTest, RejectsInconsistentTensors) {
  v1::Tensor short_data;
  short_data.set_dtype(v1::DTYPE_FLOAT32);
  short_data.add_shape(2);
  short_data.add_shape(3);
  short_data.set_data(std::string(23, '\0'));
  absl::Status status = TensorToArray(short_data, "samples").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "samples: shape [2, 3] needs 24 bytes, there are 23");

  v1::Tensor no_dtype = short_data;
  no_dtype.set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_THAT(TensorToArray(no_dtype).status().message(), HasSubstr("DTYPE_UNSPECIFIED"));

  v1::Tensor negative;
  negative.set_dtype(v1::DTYPE_UINT8);
  negative.add_shape(-1);
  EXPECT_THAT(TensorToArray(negative).status().message(), HasSubstr("negative"));

  v1::Tensor huge;
  huge.set_dtype(v1::DTYPE_FLOAT32);
  for (int i = 0; i < 4; ++i) huge.add_shape(int64_t{1} << 20);
  EXPECT_THAT(TensorToArray(huge).status().message(), HasSubstr("too large"));

  formats::Array int64_array;
  int64_array.dtype = formats::DType::kInt64;
  int64_array.shape = {1};
  int64_array.data = std::string(8, '\0');
  EXPECT_EQ(ArrayToTensor(int64_array).status().code(), absl::StatusCode::kInvalidArgument);

  formats::Array bad_size = CannedSamples(1);
  bad_size.data.pop_back();
  EXPECT_EQ(ArrayToTensor(bad_size).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ToFloat32(int64_array).status().code(), absl::StatusCode::kInvalidArgument);
}

// The reference: ((x + 1) * 127.5).clamp(0, 255).to(th.uint8), in float32.
TEST(TensorTest, SampleToUint8MatchesTheReferenceFormulaOnEdgeValues) {
  EXPECT_EQ(SampleToUint8(-1.0f), 0);
  EXPECT_EQ(SampleToUint8(1.0f), 255);
  EXPECT_EQ(SampleToUint8(0.0f), 127);  // 127.5 truncates, it does not round
  EXPECT_EQ(SampleToUint8(-0.0f), 127);
  EXPECT_EQ(SampleToUint8(-5.0f), 0);   // clamped below
  EXPECT_EQ(SampleToUint8(7.0f), 255);  // clamped above
  EXPECT_EQ(SampleToUint8(std::numeric_limits<float>::infinity()), 255);
  EXPECT_EQ(SampleToUint8(-std::numeric_limits<float>::infinity()), 0);
  EXPECT_EQ(SampleToUint8(std::numeric_limits<float>::quiet_NaN()), 0);
  // Values checked against PyTorch 1.13 on CPU; the float32 roundings of x + 1 and of the
  // product decide them, so computing in double would get these wrong.
  EXPECT_EQ(SampleToUint8(std::nextafter(1.0f, 0.0f)), 255);  // x + 1 rounds to 2.0
  EXPECT_EQ(SampleToUint8(std::nextafter(-1.0f, 0.0f)), 0);   // 7.6e-6 truncates
  EXPECT_EQ(SampleToUint8(-0.99215686f), 0);                  // 0.99999994 truncates
  EXPECT_EQ(SampleToUint8(-0.9921568f), 1);                   // 1.0000075
  EXPECT_EQ(SampleToUint8(0.003921568f), 127);                // 127.99999 truncates
  EXPECT_EQ(SampleToUint8(0.003921569f), 128);                // 128.0 in float32
  EXPECT_EQ(SampleToUint8(0.5f), 191);                        // 191.25
  EXPECT_EQ(SampleToUint8(-0.5f), 63);                        // 63.75
}

TEST(TensorTest, SamplesToUint8IsNhwc) {
  // [1, 3, 1, 2]: channel-major in, pixel-major out.
  formats::Array samples = FloatArray({1, 3, 1, 2}, {-1.0f, 1.0f, 0.0f, 0.5f, -0.5f, 2.0f});
  absl::StatusOr<formats::Array> images = SamplesToUint8(samples);
  ASSERT_TRUE(images.ok()) << images.status();
  EXPECT_EQ(images->dtype, formats::DType::kUInt8);
  EXPECT_EQ(images->shape, (std::vector<int64_t>{1, 1, 2, 3}));
  const std::vector<uint8_t> pixels(images->data.begin(), images->data.end());
  EXPECT_THAT(pixels, ElementsAre(0, 127, 63, 255, 191, 255));

  EXPECT_EQ(SamplesToUint8(FloatArray({6}, {0, 0, 0, 0, 0, 0})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SamplesToUint8(ToHalf(samples)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TensorTest, Uint8ToImagesSplitsTheBatch) {
  formats::Array nhwc;
  nhwc.dtype = formats::DType::kUInt8;
  nhwc.shape = {2, 1, 2, 1};
  nhwc.data = "abcd";
  absl::StatusOr<std::vector<formats::Image>> images = Uint8ToImages(nhwc);
  ASSERT_TRUE(images.ok()) << images.status();
  ASSERT_EQ(images->size(), 2u);
  EXPECT_EQ((*images)[1].pixels, "cd");
  EXPECT_EQ((*images)[1].width, 2);
  EXPECT_EQ((*images)[1].channels, 1);
  nhwc.shape = {1, 2, 1, 2};  // two channels: not an image format
  EXPECT_EQ(Uint8ToImages(nhwc).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- The gd CLI against the fake ----------------------------------------------------------------

absl::StatusOr<formats::Array> ReadNpy(const std::string& path) {
  absl::StatusOr<std::string> bytes = formats::ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  return formats::ParseNpy(*bytes, path);
}

TEST_F(CliTest, ModelsPrintsATable) {
  CliResult result = Run({"models"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  std::vector<std::string> lines = absl::StrSplit(result.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u) << result.out;
  EXPECT_THAT(lines[0], HasSubstr("NAME"));
  EXPECT_THAT(lines[0], HasSubstr("SAMPLERS"));
  EXPECT_THAT(lines[0], HasSubstr("MAX_STEPS"));
  std::vector<std::string> tiny = absl::StrSplit(lines[1], ' ', absl::SkipEmpty());
  EXPECT_THAT(tiny, ElementsAre("tiny", "*", "8", "3", "10", "yes", "yes", "100", "ddpm,ddim", "-",
                                "8", "-", "-"));
  std::vector<std::string> big = absl::StrSplit(lines[2], ' ', absl::SkipEmpty());
  EXPECT_THAT(big, ElementsAre("uncond-big", "256", "3", "0", "no", "no", "1000", "ddim,dpm++",
                               "2.5", "4", "500", "50"));
  EXPECT_THAT(lines[3], HasSubstr("* default model"));

  result = Run({"models", "--model", "nope"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_EQ(result.err, "gd: NOT_FOUND: no model \"nope\"\n");
}

TEST_F(CliTest, HealthExitsZeroOnlyWhenServing) {
  CliResult result = Run({"health"});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out, "SERVING\n");

  server_.health()->SetServingStatus("guided_diffusion.v1.Sampler", false);
  result = Run({"health", "--service", "guided_diffusion.v1.Sampler"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_EQ(result.out, "NOT_SERVING\n");

  result = Run({"health", "--server=127.0.0.1:1"}, /*with_server=*/false);
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("gd: UNAVAILABLE: "));
}

TEST_F(CliTest, SampleWritesGridNpzAndTensor) {
  CliResult result = Run({"sample",
                          "--labels",
                          "3,1,4",
                          "--classifier_scale",
                          "2.5",
                          "--sampler",
                          "ddim",
                          "--timestep_respacing",
                          "ddim25",
                          "--seed",
                          "9",
                          "--out",
                          Path("grid.png"),
                          "--npz",
                          Path("samples.npz"),
                          "--tensor_out",
                          Path("samples.npy"),
                          "--columns",
                          "2",
                          "--min_tile_px",
                          "0",
                          "--captions=false"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.err, IsEmpty());  // no progress bar when stderr is not a terminal

  EXPECT_EQ(server_.sampler().last_method(), "Sample");
  const v1::SampleRequest seen = server_.sampler().last_request();
  EXPECT_THAT(seen.labels(), ElementsAre(3, 1, 4));
  EXPECT_EQ(seen.classifier_scale(), 2.5);
  EXPECT_EQ(seen.sampler(), v1::SAMPLER_KIND_DDIM);
  EXPECT_EQ(seen.timestep_respacing(), "ddim25");
  EXPECT_EQ(seen.seed(), 9u);
  EXPECT_FALSE(seen.has_clip_denoised());
  // float32 only: the images for the grid and the .npz are derived from it.
  EXPECT_TRUE(seen.output().skip_png());
  EXPECT_TRUE(seen.output().float32());
  EXPECT_FALSE(seen.output().uint8());

  const std::string png = ReadFileOrEmpty(Path("grid.png"));
  ASSERT_GE(png.size(), 8u);
  EXPECT_EQ(png.substr(0, 8), "\x89PNG\r\n\x1a\n");
  absl::StatusOr<formats::Image> grid = formats::DecodePng(png, "grid.png");
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->width, 2 * (kImageSize + 2) + 2);   // 2 columns, 2 px padding, native size
  EXPECT_EQ(grid->height, 2 * (kImageSize + 2) + 2);  // 3 images: 2 rows
  EXPECT_EQ(grid->channels, 3);
  struct stat info;
  EXPECT_NE(stat(Path("samples.npz.parts").c_str(), &info), 0);  // removed once the .npz is in

  absl::StatusOr<std::string> npz_bytes = formats::ReadFileBytes(Path("samples.npz"));
  ASSERT_TRUE(npz_bytes.ok()) << npz_bytes.status();
  auto npz = formats::ParseNpz(*npz_bytes, "samples.npz");
  ASSERT_TRUE(npz.ok()) << npz.status();
  ASSERT_EQ(npz->size(), 2u);
  EXPECT_EQ((*npz)[0].first, "arr_0");
  EXPECT_EQ((*npz)[0].second.dtype, formats::DType::kUInt8);
  EXPECT_EQ((*npz)[0].second.shape, (std::vector<int64_t>{3, kImageSize, kImageSize, kChannels}));
  EXPECT_EQ((*npz)[0].second.data, SamplesToUint8(CannedSamples(3))->data);
  EXPECT_EQ((*npz)[1].first, "arr_1");
  EXPECT_EQ((*npz)[1].second.dtype, formats::DType::kInt64);
  EXPECT_EQ((*npz)[1].second.shape, (std::vector<int64_t>{3}));
  std::vector<int64_t> labels(3);
  std::memcpy(labels.data(), (*npz)[1].second.data.data(), 3 * sizeof(int64_t));
  EXPECT_THAT(labels, ElementsAre(3, 1, 4));

  absl::StatusOr<formats::Array> tensor = ReadNpy(Path("samples.npy"));
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  EXPECT_EQ(tensor->dtype, formats::DType::kFloat32);
  EXPECT_EQ(tensor->shape, (std::vector<int64_t>{3, kChannels, kImageSize, kImageSize}));
  EXPECT_EQ(tensor->data, CannedSamples(3).data);
}

TEST_F(CliTest, SampleAsksOnlyForWhatItWrites) {
  CliResult result = Run({"sample", "--labels", "1,2"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  std::vector<std::string> lines = absl::StrSplit(result.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 1u) << result.out;  // the summary only
  EXPECT_THAT(lines[0], HasSubstr("2 images"));
  EXPECT_THAT(lines[0], HasSubstr("1 request in"));
  EXPECT_THAT(lines[0], HasSubstr("request req-1"));
  v1::OutputOptions output = server_.sampler().last_request().output();
  EXPECT_TRUE(output.skip_png());
  EXPECT_FALSE(output.float32());
  EXPECT_FALSE(output.uint8());

  result = Run({"sample", "--num_samples", "2", "--npz", Path("only.npz")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  output = server_.sampler().last_request().output();
  EXPECT_TRUE(output.uint8());
  EXPECT_FALSE(output.float32());
  EXPECT_EQ(server_.sampler().last_request().num_samples(), 2u);
  EXPECT_FALSE(ReadFileOrEmpty(Path("only.npz")).empty());
}

TEST_F(CliTest, ClipDenoisedIsSentOnlyWhenGiven) {
  CliResult result = Run({"sample", "--labels", "1", "--clip_denoised", "false"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  v1::SampleRequest seen = server_.sampler().last_request();
  ASSERT_TRUE(seen.has_clip_denoised());
  EXPECT_FALSE(seen.clip_denoised().value());
  EXPECT_THAT(result.out, HasSubstr("1 image "));

  result = Run({"sample", "--labels", "1", "--clip_denoised=true"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  seen = server_.sampler().last_request();
  ASSERT_TRUE(seen.has_clip_denoised());
  EXPECT_TRUE(seen.clip_denoised().value());
}

TEST_F(CliTest, StreamDumpsTheStreamedSteps) {
  CliResult result = Run({"stream", "--labels", "1,2", "--timestep_respacing", "5", "--every", "2",
                          "--dump_dir", Path("steps"), "--out", Path("final.png")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const v1::StreamOptions stream = server_.sampler().last_request().stream();
  EXPECT_EQ(stream.every(), 2u);
  EXPECT_TRUE(stream.x_t());
  EXPECT_TRUE(stream.pred_xstart());
  EXPECT_EQ(stream.format(), v1::StreamOptions::FORMAT_TENSOR_FLOAT32);
  for (int step : {0, 2, 4}) {
    for (const char* name : {"x_t", "pred_xstart"}) {
      const std::string path = Path(absl::StrFormat("steps/%s_%04d.npy", name, step));
      absl::StatusOr<formats::Array> array = ReadNpy(path);
      ASSERT_TRUE(array.ok()) << array.status();
      EXPECT_EQ(array->dtype, formats::DType::kFloat32);
      EXPECT_EQ(array->shape, (std::vector<int64_t>{2, kChannels, kImageSize, kImageSize}));
      const formats::Array expected =
          std::string(name) == "x_t" ? CannedXt(2, step) : CannedPredXstart(2, step);
      EXPECT_EQ(array->data, expected.data) << path;
    }
  }
  struct stat info;
  EXPECT_NE(stat(Path("steps/x_t_0001.npy").c_str(), &info), 0);  // not streamed
  EXPECT_EQ(ReadFileOrEmpty(Path("final.png")).substr(0, 4), "\x89PNG");
}

TEST_F(CliTest, NoiseFileIsSentAsFloat32) {
  const formats::Array noise = CannedSamples(2, 0.25f);
  const formats::Array half = ToHalf(noise);
  ASSERT_TRUE(formats::WriteFileBytes(Path("noise.npy"), formats::SerializeNpy(half)).ok());
  CliResult result = Run({"sample", "--labels", "1,2", "--noise", Path("noise.npy")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const v1::Tensor sent = server_.sampler().last_request().noise();
  EXPECT_EQ(sent.dtype(), v1::DTYPE_FLOAT32);
  EXPECT_THAT(sent.shape(), ElementsAre(2, kChannels, kImageSize, kImageSize));
  absl::StatusOr<formats::Array> expected = ToFloat32(half);  // the float16 values, widened
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(sent.data(), expected->data);

  result = Run({"sample", "--labels", "1,2,3", "--noise", Path("noise.npy")});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.err, HasSubstr("expected [3, C, H, W]"));
}

TEST_F(CliTest, AuthTokenFileIsSentAsBearerToken) {
  ASSERT_TRUE(formats::WriteFileBytes(Path("token"), "tok-123\n").ok());
  CliResult result = Run({"models", "--auth_token_file", Path("token")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(server_.sampler().last_authorization(), "Bearer tok-123");
}

TEST_F(CliTest, ServerErrorsPrintTheCodeNameAndMessage) {
  CliResult result = Run({"sample", "--labels", "1,2,3,1200"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_EQ(result.err,
            "gd: INVALID_ARGUMENT: labels[3] = 1200 is outside [0, 10) for model "
            "\"tiny\"\n");
  result = Run({"stream", "--labels", "1", "--model", "status:8"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_EQ(result.err, "gd: RESOURCE_EXHAUSTED: canned failure 8\n");
}

TEST_F(CliTest, BadFlagsFailBeforeAnyCall) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"sample", "--labels", "1", "--sampler", "foo"}, "--sampler = \"foo\" is not one of"},
      {{"sample", "--labels", "1,x"}, "labels[1] = \"x\""},
      {{"sample", "--labels", "1", "--eta", "0.5"}, "needs --sampler ddim"},
      {{"sample", "--labels", "1", "--sampler", "ddim", "--eta", "2"}, "outside [0, 1]"},
      {{"sample", "--labels", "1", "--timestep_respacing", "ddimx"}, "--timestep_respacing"},
      {{"sample", "--labels", "1", "--classifier_scale", "-1"}, "--classifier_scale"},
      {{"sample", "--labels", "1", "--every", "3"}, "--every does not apply to `gd sample`"},
      {{"models", "--labels", "1"}, "--labels does not apply to `gd models`"},
      {{"sample"}, "--labels 1,2,3"},
      {{"sample", "--labels", "1,2", "--num_samples", "3"}, "--num_samples = 3"},
      {{"sample", "--labels", "1", "--out", "/nonexistent/dir/x.png"}, "does not exist"},
      {{"sample", "--labels", "1", "--tls_ca", "ca.pem"}, "--tls_ca needs --tls"},
      {{"sample", "--labels", "1", "--timeout_s", "-1"}, "--timeout_s"},
      {{"sample", "--labels", "1", "--auth_token_file", "/nonexistent"}, "/nonexistent"},
      {{"frobnicate"}, "unknown command \"frobnicate\""},
      {{"sample", "--no_such_flag"}, "no_such_flag"},
      {{"sample", "--labels", "1", "--clip_denoised", "maybe"}, "clip_denoised"},
  };
  const int calls_before = server_.sampler().calls();
  for (const Case& c : cases) {
    CliResult result = Run(c.args);
    EXPECT_NE(result.exit_code, 0) << c.args[1];
    EXPECT_THAT(result.err, HasSubstr(c.message)) << c.args[1];
  }
  EXPECT_EQ(server_.sampler().calls(), calls_before);
  EXPECT_EQ(Run({}).exit_code, 2);  // no command
}

// gd --helpfull lists every flag, under its group, with the commands that read it; nothing is
// left out of the help's table.
TEST_F(CliTest, HelpfullListsEveryFlag) {
  CliResult result = Run({"--helpfull"}, /*with_server=*/false);
  EXPECT_EQ(result.exit_code, 0);
  for (const char* flag : {"--server",
                           "--labels",
                           "--num_samples",
                           "--balanced_labels",
                           "--random_labels",
                           "--classifier_scale",
                           "--sampler",
                           "--eta",
                           "--timestep_respacing",
                           "--steps",
                           "--solver_order",
                           "--skip_type",
                           "--dynamic_thresholding_ratio",
                           "--seed",
                           "--clip_denoised",
                           "--noise",
                           "--images_per_request",
                           "--concurrency",
                           "--max_retries",
                           "--retry_backoff_s",
                           "--resume",
                           "--out",
                           "--npz",
                           "--tensor_out",
                           "--columns",
                           "--min_tile_px",
                           "--captions",
                           "--every",
                           "--dump_dir",
                           "--strip",
                           "--strip_columns",
                           "--gif",
                           "--gif_frame_ms",
                           "--listen",
                           "--service",
                           "--tls",
                           "--tls_ca",
                           "--tls_cert",
                           "--tls_key",
                           "--tls_server_name",
                           "--auth_token_file",
                           "--timeout_s",
                           "--load_balancing_policy"}) {
    EXPECT_THAT(result.out, HasSubstr(absl::StrCat("\n  ", flag, " (default: "))) << flag;
  }
  EXPECT_THAT(result.out, HasSubstr("usage: gd <command>"));
  EXPECT_THAT(result.out, HasSubstr("  view    a web page"));
  EXPECT_THAT(result.out, HasSubstr("[gd sample]"));  // --concurrency and friends
  EXPECT_THAT(result.out, Not(HasSubstr("Not in the help's table")));
  EXPECT_THAT(result.out, Not(HasSubstr(".cc")));  // no source paths
}

// gd COMMAND --help: that command's flags only, grouped, with examples, wherever --help stands.
TEST_F(CliTest, EachCommandHasItsOwnHelp) {
  CliResult sample = Run({"sample", "--labels", "1", "--help"}, /*with_server=*/false);
  EXPECT_EQ(sample.exit_code, 0);
  EXPECT_THAT(sample.out, HasSubstr("usage: gd sample [flags]"));
  EXPECT_THAT(sample.out, HasSubstr("examples:\n  gd sample --labels"));
  EXPECT_THAT(sample.out, HasSubstr("--balanced_labels"));
  for (const char* group : {"\nWhat to sample:\n", "\nSampler:\n", "\nMany images:\n",
                            "\nOutputs:\n", "\nConnection:\n"}) {
    EXPECT_THAT(sample.out, HasSubstr(group)) << group;
  }
  for (const char* foreign : {"--every", "--listen", "--service", "--strip", "gd_main"}) {
    EXPECT_THAT(sample.out, Not(HasSubstr(foreign))) << foreign;
  }
  CliResult stream = Run({"--help", "stream"}, /*with_server=*/false);
  EXPECT_THAT(stream.out, HasSubstr("usage: gd stream [flags]"));
  EXPECT_THAT(stream.out, HasSubstr("--every"));
  EXPECT_THAT(stream.out, Not(HasSubstr("--concurrency")));
  CliResult health = Run({"health", "-h"}, /*with_server=*/false);
  EXPECT_THAT(health.out, HasSubstr("--service"));
  EXPECT_THAT(health.out, Not(HasSubstr("--labels")));
  CliResult general = Run({"--help"}, /*with_server=*/false);
  EXPECT_THAT(general.out, HasSubstr("gd <command> --help"));
  EXPECT_THAT(general.out, Not(HasSubstr("--labels")));
}

// With stderr on a terminal, sample draws a progress bar there (and still writes its outputs).
TEST_F(CliTest, ProgressBarOnATerminal) {
  int controller = -1, terminal = -1;
  ASSERT_EQ(openpty(&controller, &terminal, nullptr, nullptr, nullptr), 0);
  // The child gets the terminal as its stderr (dup2 clears close-on-exec there) and nothing else.
  fcntl(controller, F_SETFD, FD_CLOEXEC);
  fcntl(terminal, F_SETFD, FD_CLOEXEC);
  const pid_t pid = Start({"sample", "--labels", "1,2", "--timestep_respacing", "6"},
                          /*with_server=*/true, /*stderr_fd=*/terminal);
  ASSERT_GT(pid, 0);
  close(terminal);
  std::string drawn;
  char buffer[4096];
  for (;;) {  // until the child closes the terminal (read fails with EIO)
    pollfd ready = {controller, POLLIN, 0};
    if (poll(&ready, 1, 30'000) <= 0) break;
    const ssize_t got = read(controller, buffer, sizeof(buffer));
    if (got <= 0) break;
    drawn.append(buffer, got);
  }
  close(controller);
  EXPECT_EQ(WaitForExit(pid), 0) << drawn;
  EXPECT_THAT(drawn, HasSubstr("2/2 images"));
  EXPECT_THAT(drawn, HasSubstr("images/s"));
  EXPECT_THAT(drawn, HasSubstr("ETA"));
  EXPECT_THAT(ReadFileOrEmpty(Path("stdout.txt")), HasSubstr("2 images"));
  // The bar went through StreamSample with progress-only steps.
  EXPECT_EQ(server_.sampler().last_method(), "StreamSample");
  const v1::SampleRequest seen = server_.sampler().last_request();
  EXPECT_FALSE(seen.stream().x_t());
  EXPECT_FALSE(seen.stream().pred_xstart());
}

// ---- TLS ----------------------------------------------------------------------------------------

// Serves the fake over mutual TLS: a certificate for "gd.test" signed by a throwaway CA, and
// client certificates signed by the same CA required. The certificates come from the openssl
// command (the tests skip without it).
class TlsTest : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    const std::string make_certificates = absl::StrCat(
        "(cd '", dir_, "' && printf 'subjectAltName=DNS:gd.test\\n' > san.ext && ",
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes ",
        "-keyout ca.key -out ca.pem -days 1 -subj /CN=gd-test-ca && ",
        "for who in server client; do ",
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $who.key ",
        "-out $who.csr -subj /CN=gd.test && openssl x509 -req -in $who.csr -CA ca.pem ",
        "-CAkey ca.key -CAcreateserial -out $who.pem -days 1 -extfile san.ext || exit 1; ",
        "done) >/dev/null 2>&1");
    if (std::system(make_certificates.c_str()) != 0) {
      GTEST_SKIP() << "openssl could not make test certificates";
    }
    grpc::SslServerCredentialsOptions ssl(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = ReadFileOrEmpty(Path("ca.pem"));
    ssl.pem_key_cert_pairs.push_back(
        {ReadFileOrEmpty(Path("server.key")), ReadFileOrEmpty(Path("server.pem"))});
    tls_server_ = std::make_unique<FakeServer>(grpc::SslServerCredentials(ssl));
    ASSERT_TRUE(tls_server_->started());
  }

  ClientOptions TlsOptions() const {
    ClientOptions options;
    options.target = tls_server_->address();
    options.tls = true;
    options.tls_ca_file = Path("ca.pem");
    options.tls_cert_file = Path("client.pem");
    options.tls_key_file = Path("client.key");
    options.tls_server_name_override = "gd.test";  // the certificate's name, not 127.0.0.1
    return options;
  }

  static absl::StatusCode ListModelsCode(const ClientOptions& options) {
    absl::StatusOr<std::unique_ptr<SamplerClient>> client = SamplerClient::Create(options);
    if (!client.ok()) return client.status().code();
    return (*client)->ListModels().status().code();
  }

  std::unique_ptr<FakeServer> tls_server_;
};

TEST_F(TlsTest, MutualTlsWithTheRightCertificatesOnly) {
  EXPECT_EQ(ListModelsCode(TlsOptions()), absl::StatusCode::kOk);

  ClientOptions no_client_certificate = TlsOptions();
  no_client_certificate.tls_cert_file.clear();
  no_client_certificate.tls_key_file.clear();
  EXPECT_EQ(ListModelsCode(no_client_certificate), absl::StatusCode::kUnavailable);

  ClientOptions wrong_name = TlsOptions();
  wrong_name.tls_server_name_override = "other.test";
  EXPECT_EQ(ListModelsCode(wrong_name), absl::StatusCode::kUnavailable);

  ClientOptions plaintext;
  plaintext.target = tls_server_->address();
  EXPECT_EQ(ListModelsCode(plaintext), absl::StatusCode::kUnavailable);
}

TEST_F(TlsTest, CliConnectsWithTlsFlags) {
  CliResult result = Run({"health", "--server=" + tls_server_->address(), "--tls", "--tls_ca",
                          Path("ca.pem"), "--tls_cert", Path("client.pem"), "--tls_key",
                          Path("client.key"), "--tls_server_name", "gd.test"},
                         /*with_server=*/false);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out, "SERVING\n");
}

}  // namespace
}  // namespace gd::client
