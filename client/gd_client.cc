#include "client/gd_client.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;

absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view what) {
  absl::StatusOr<std::string> bytes = formats::ReadFileBytes(path);
  if (!bytes.ok()) {
    return absl::Status(bytes.status().code(),
                        absl::StrCat("reading the ", what, ": ", bytes.status().message()));
  }
  return bytes;
}

absl::Status ValidateOptions(const ClientOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError("no target: set HOST:PORT or a gRPC target URI");
  }
  if (!options.tls) {
    for (const auto& [value, name] :
         {std::pair{&options.tls_ca_file, "tls_ca_file"},
          std::pair{&options.tls_cert_file, "tls_cert_file"},
          std::pair{&options.tls_key_file, "tls_key_file"},
          std::pair{&options.tls_server_name_override, "tls_server_name_override"}}) {
      if (!value->empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, " = \"", *value, "\" is set but TLS is off"));
      }
    }
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "mTLS needs both a client certificate and its private key (tls_cert_file and "
        "tls_key_file), or neither");
  }
  if (options.timeout_ms < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("timeout_ms = ", options.timeout_ms, " must be >= 0 (0 = no deadline)"));
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_message_bytes = ", options.max_message_bytes, " must be > 0"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeCredentials(
    const ClientOptions& options) {
  if (!options.tls) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  if (!options.tls_ca_file.empty()) {
    ASSIGN_OR_RETURN(auto roots, ReadPemFile(options.tls_ca_file, "TLS CA file"));
    ssl.pem_root_certs = std::move(roots);
  }
  if (!options.tls_cert_file.empty()) {
    ASSIGN_OR_RETURN(auto chain, ReadPemFile(options.tls_cert_file, "TLS certificate"));
    ASSIGN_OR_RETURN(auto key, ReadPemFile(options.tls_key_file, "TLS private key"));
    ssl.pem_cert_chain = std::move(chain);
    ssl.pem_private_key = std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

// Element size of the wire dtypes the client handles; 0 for the others.
size_t WireDTypeSize(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32:
      return 4;
    case v1::DTYPE_FLOAT16:
      return 2;
    case v1::DTYPE_UINT8:
      return 1;
    default:
      return 0;
  }
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// product(shape) * item_size, or an error when a dimension is negative or the product overflows.
absl::StatusOr<size_t> ByteCount(const std::vector<int64_t>& shape, size_t item_size,
                                 absl::string_view what) {
  size_t bytes = item_size;
  for (int64_t dim : shape) {
    if (dim < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": shape ", ShapeText(shape), " has a negative dimension"));
    }
    if (dim > 0 && bytes > std::numeric_limits<size_t>::max() / static_cast<size_t>(dim)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": shape ", ShapeText(shape), " is too large"));
    }
    bytes *= static_cast<size_t>(dim);
  }
  return bytes;
}

// OK when `actual` bytes are exactly what `shape` of `item_size` elements needs.
absl::Status CheckByteCount(const std::vector<int64_t>& shape, size_t item_size, size_t actual,
                            absl::string_view what) {
  ASSIGN_OR_RETURN(auto bytes, ByteCount(shape, item_size, what));
  if (actual != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": shape ", ShapeText(shape), " needs ",
                                                   bytes, " bytes, there are ", actual));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  // grpc::StatusCode and absl::StatusCode share their numbering (both are google.rpc.Code).
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// ---- StreamReader -------------------------------------------------------------------------------

StreamReader::StreamReader(std::shared_ptr<grpc::Channel> channel,
                           std::unique_ptr<grpc::ClientContext> context, v1::Sampler::Stub* stub,
                           const v1::SampleRequest& request)
    : channel_(std::move(channel)),
      context_(std::move(context)),
      reader_(stub->StreamSample(context_.get(), request)) {}

StreamReader::~StreamReader() {
  if (!finished_) {
    Cancel();
    Finish().IgnoreError();  // releases the call; the caller did not want its status
  }
}

bool StreamReader::Next(v1::SampleEvent* event) { return !finished_ && reader_->Read(event); }

absl::Status StreamReader::Finish() {
  if (finished_) return status_;
  // ClientReader::Finish may only be called once every message has been read.
  v1::SampleEvent unread;
  while (reader_->Read(&unread)) {
  }
  status_ = FromGrpcStatus(reader_->Finish());
  finished_ = true;
  return status_;
}

void StreamReader::Cancel() { context_->TryCancel(); }

// ---- SamplerClient ------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SamplerClient>> SamplerClient::Create(const ClientOptions& options) {
  RETURN_IF_ERROR(ValidateOptions(options));
  ASSIGN_OR_RETURN(auto credentials, MakeCredentials(options));

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetUserAgentPrefix("gd-client/0.1");
  if (!options.load_balancing_policy.empty()) {
    args.SetLoadBalancingPolicyName(options.load_balancing_policy);
  }
  if (!options.tls_server_name_override.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name_override);
  }
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.target, credentials, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create a channel to \"", options.target, "\""));
  }
  return std::unique_ptr<SamplerClient>(new SamplerClient(options, std::move(channel)));
}

SamplerClient::SamplerClient(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      sampler_(v1::Sampler::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)) {}

std::unique_ptr<grpc::ClientContext> SamplerClient::NewContext(int64_t timeout_ms) const {
  auto context = std::make_unique<grpc::ClientContext>();
  if (timeout_ms > 0) {
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  }
  // Plain metadata rather than grpc::AccessTokenCredentials: call credentials are refused on
  // insecure channels, and a server behind a TLS-terminating proxy still needs the token.
  if (!options_.auth_token.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", options_.auth_token));
  }
  return context;
}

int64_t SamplerClient::MetadataTimeoutMs() const {
  return options_.timeout_ms > 0 ? std::min(options_.timeout_ms, kMetadataTimeoutMs)
                                 : kMetadataTimeoutMs;
}

absl::StatusOr<v1::SampleResponse> SamplerClient::Sample(const v1::SampleRequest& request) {
  std::unique_ptr<grpc::ClientContext> context = NewContext(options_.timeout_ms);
  v1::SampleResponse response;
  grpc::Status status = sampler_->Sample(context.get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

std::unique_ptr<StreamReader> SamplerClient::OpenStream(const v1::SampleRequest& request) {
  return std::unique_ptr<StreamReader>(
      new StreamReader(channel_, NewContext(options_.timeout_ms), sampler_.get(), request));
}

absl::StatusOr<v1::SampleResponse> SamplerClient::StreamSample(
    const v1::SampleRequest& request, const std::function<bool(const v1::SampleEvent&)>& on_event) {
  std::unique_ptr<StreamReader> stream = OpenStream(request);
  std::optional<v1::SampleResponse> result;
  v1::SampleEvent event;
  while (stream->Next(&event)) {
    if (!on_event(event)) {
      stream->Cancel();
      stream->Finish().IgnoreError();  // CANCELLED, or OK when the call had just ended
      return absl::CancelledError("the stream was cancelled by the caller");
    }
    if (event.has_result()) result = std::move(*event.mutable_result());
  }
  RETURN_IF_ERROR(stream->Finish());
  if (!result.has_value()) {
    return absl::InternalError("the server ended the stream without a result event");
  }
  return *std::move(result);
}

absl::StatusOr<v1::ListModelsResponse> SamplerClient::ListModels() {
  std::unique_ptr<grpc::ClientContext> context = NewContext(MetadataTimeoutMs());
  v1::ListModelsResponse response;
  grpc::Status status = sampler_->ListModels(context.get(), v1::ListModelsRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ModelInfo> SamplerClient::GetModel(const std::string& name) {
  std::unique_ptr<grpc::ClientContext> context = NewContext(MetadataTimeoutMs());
  v1::GetModelRequest request;
  request.set_name(name);
  v1::ModelInfo response;
  grpc::Status status = sampler_->GetModel(context.get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<std::string> SamplerClient::Health(const std::string& service) {
  std::unique_ptr<grpc::ClientContext> context = NewContext(MetadataTimeoutMs());
  HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse response;
  grpc::Status status = health_->Check(context.get(), request, &response);
  // The protocol answers Check for an unknown service with NOT_FOUND; Watch's word for it is
  // SERVICE_UNKNOWN, which callers can print and compare like the other states.
  if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
    return HealthCheckResponse::ServingStatus_Name(HealthCheckResponse::SERVICE_UNKNOWN);
  }
  if (!status.ok()) return FromGrpcStatus(status);
  return HealthCheckResponse::ServingStatus_Name(response.status());
}

double ContinuousTimestep(const v1::StepEvent& step) {
  if (step.continuous_timestep() == 0 && step.timestep() != 0) {
    return static_cast<double>(step.timestep());
  }
  return step.continuous_timestep();
}

// ---- Tensors ------------------------------------------------------------------------------------

absl::StatusOr<formats::Array> TensorToArray(const v1::Tensor& tensor, absl::string_view what) {
  formats::Array array;
  switch (tensor.dtype()) {
    case v1::DTYPE_FLOAT32:
      array.dtype = formats::DType::kFloat32;
      break;
    case v1::DTYPE_FLOAT16:
      array.dtype = formats::DType::kFloat16;
      break;
    case v1::DTYPE_UINT8:
      array.dtype = formats::DType::kUInt8;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": dtype ", v1::DType_Name(tensor.dtype()),
                       " is not one of DTYPE_FLOAT32, DTYPE_FLOAT16, DTYPE_UINT8"));
  }
  array.shape.assign(tensor.shape().begin(), tensor.shape().end());
  if (absl::Status size =
          CheckByteCount(array.shape, WireDTypeSize(tensor.dtype()), tensor.data().size(), what);
      !size.ok()) {
    return size;
  }
  array.data = tensor.data();
  return array;
}

absl::StatusOr<v1::Tensor> ArrayToTensor(const formats::Array& array, absl::string_view what) {
  v1::Tensor tensor;
  switch (array.dtype) {
    case formats::DType::kFloat32:
      tensor.set_dtype(v1::DTYPE_FLOAT32);
      break;
    case formats::DType::kFloat16:
      tensor.set_dtype(v1::DTYPE_FLOAT16);
      break;
    case formats::DType::kUInt8:
      tensor.set_dtype(v1::DTYPE_UINT8);
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": dtype ", formats::DTypeName(array.dtype),
                       " cannot be sent (allowed: float32 <f4, float16 <f2, uint8 |u1)"));
  }
  if (absl::Status size =
          CheckByteCount(array.shape, WireDTypeSize(tensor.dtype()), array.data.size(), what);
      !size.ok()) {
    return size;
  }
  tensor.mutable_shape()->Add(array.shape.begin(), array.shape.end());
  tensor.set_data(array.data);
  return tensor;
}

absl::StatusOr<formats::Array> ToFloat32(formats::Array array, absl::string_view what) {
  if (array.dtype == formats::DType::kFloat32) return array;
  if (array.dtype != formats::DType::kFloat16) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": dtype ",
                                                   formats::DTypeName(array.dtype),
                                                   " is not float32 (<f4) or float16 (<f2)"));
  }
  if (absl::Status size = CheckByteCount(array.shape, 2, array.data.size(), what); !size.ok()) {
    return size;
  }
  const size_t count = array.data.size() / 2;
  std::string widened(count * 4, '\0');
  for (size_t i = 0; i < count; ++i) {
    uint16_t half;
    std::memcpy(&half, array.data.data() + 2 * i, 2);
    const float value = formats::HalfToFloat(half);
    std::memcpy(widened.data() + 4 * i, &value, 4);
  }
  array.dtype = formats::DType::kFloat32;
  array.data = std::move(widened);
  return array;
}

uint8_t SampleToUint8(float x) {
  // Two float32 roundings, (x + 1) then * 127.5, as torch computes the expression in float32.
  const float scaled = (x + 1.0f) * 127.5f;
  if (!(scaled > 0.0f)) return 0;  // also NaN
  if (scaled >= 255.0f) return 255;
  return static_cast<uint8_t>(scaled);  // truncates toward zero, like .to(th.uint8)
}

absl::StatusOr<formats::Array> SamplesToUint8(const formats::Array& samples,
                                              absl::string_view what) {
  if (samples.dtype != formats::DType::kFloat32 || samples.shape.size() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": expected float32 [N, C, H, W], got ",
                                                   formats::DTypeName(samples.dtype), " ",
                                                   ShapeText(samples.shape)));
  }
  if (absl::Status size = CheckByteCount(samples.shape, 4, samples.data.size(), what); !size.ok()) {
    return size;
  }
  const int64_t n = samples.shape[0], c = samples.shape[1], h = samples.shape[2],
                w = samples.shape[3];
  formats::Array images;
  images.dtype = formats::DType::kUInt8;
  images.shape = {n, h, w, c};
  images.data.resize(static_cast<size_t>(n * h * w * c));
  const char* in = samples.data.data();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t ch = 0; ch < c; ++ch) {
      for (int64_t y = 0; y < h; ++y) {
        for (int64_t x = 0; x < w; ++x) {
          float value;
          std::memcpy(&value, in + 4 * (((i * c + ch) * h + y) * w + x), 4);
          images.data[((i * h + y) * w + x) * c + ch] = static_cast<char>(SampleToUint8(value));
        }
      }
    }
  }
  return images;
}

absl::StatusOr<std::vector<formats::Image>> Uint8ToImages(const formats::Array& images_nhwc,
                                                          absl::string_view what) {
  const std::vector<int64_t>& shape = images_nhwc.shape;
  if (images_nhwc.dtype != formats::DType::kUInt8 || shape.size() != 4 ||
      (shape[3] != 1 && shape[3] != 3 && shape[3] != 4)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": expected uint8 [N, H, W, C] with C in {1, 3, 4}, got ",
                     formats::DTypeName(images_nhwc.dtype), " ", ShapeText(shape)));
  }
  if (absl::Status size = CheckByteCount(shape, 1, images_nhwc.data.size(), what); !size.ok()) {
    return size;
  }
  const size_t image_bytes = static_cast<size_t>(shape[1] * shape[2] * shape[3]);
  std::vector<formats::Image> images(static_cast<size_t>(shape[0]));
  for (size_t i = 0; i < images.size(); ++i) {
    images[i].height = shape[1];
    images[i].width = shape[2];
    images[i].channels = shape[3];
    images[i].pixels = images_nhwc.data.substr(i * image_bytes, image_bytes);
  }
  return images;
}

}  // namespace gd::client
