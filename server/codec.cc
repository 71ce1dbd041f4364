#include "server/codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/io/image.h"
#include "core/status_macros.h"

namespace gd::server {
namespace {

absl::StatusOr<std::vector<std::string>> EncodePngs(const torch::Tensor& samples) {
  const torch::Tensor pixels = SamplesToUint8(samples.clamp(-1, 1));
  std::vector<std::string> pngs;
  for (int64_t i = 0; i < pixels.size(0); ++i) {
    ASSIGN_OR_RETURN(auto png, EncodePng(pixels[i]));
    pngs.push_back(std::move(png));
  }
  return pngs;
}

}  // namespace

absl::Status Bounded(const absl::Status& status) {
  if (status.message().size() <= kMaxStatusMessageBytes) return status;
  return absl::Status(status.code(),
                      absl::StrCat(status.message().substr(0, kMaxStatusMessageBytes), "..."));
}

grpc::Status ToGrpc(const absl::Status& status) {
  const absl::Status bounded = Bounded(status);
  return grpc::Status(static_cast<grpc::StatusCode>(bounded.code()),
                      std::string(bounded.message()));
}

std::string Quote(const std::string& value, size_t max_bytes) {
  if (value.size() <= max_bytes) return absl::StrCat("\"", value, "\"");
  return absl::StrCat("\"", value.substr(0, max_bytes), "...\" (", value.size(), " bytes)");
}

absl::StatusOr<torch::Tensor> TensorFromProto(const v1::Tensor& tensor, const std::string& field) {
  torch::ScalarType type;
  switch (tensor.dtype()) {
    case v1::DTYPE_FLOAT32: type = torch::kFloat32; break;
    case v1::DTYPE_FLOAT16: type = torch::kFloat16; break;
    case v1::DTYPE_UINT8: type = torch::kUInt8; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".dtype = ", tensor.dtype(),
          v1::DType_IsValid(tensor.dtype()) ? absl::StrCat(" (", v1::DType_Name(tensor.dtype()), ")")
                                            : std::string(),
          " is not allowed (DTYPE_FLOAT32, DTYPE_FLOAT16 or DTYPE_UINT8)"));
  }
  std::vector<int64_t> shape(tensor.shape().begin(), tensor.shape().end());
  // Bounded with zero dimensions counted as 1: a zero-size tensor's strides are still products of
  // its other dimensions, and [0, 2^40, 2^40] must not overflow them (found by fuzzing).
  constexpr int64_t kMaxSpan = int64_t{1} << 40;
  int64_t numel = 1, span = 1;
  for (int64_t d : shape) {
    if (d < 0 || span > kMaxSpan / std::max<int64_t>(d, 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".shape [", absl::StrJoin(shape, ", "), "] is not a valid shape"));
    }
    span *= std::max<int64_t>(d, 1);
    numel *= d;
  }
  const size_t bytes = static_cast<size_t>(numel) * torch::elementSize(type);
  if (tensor.data().size() != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".data has ", tensor.data().size(), " bytes; shape [", absl::StrJoin(shape, ", "),
        "] of ", v1::DType_Name(tensor.dtype()), " needs ", bytes));
  }
  torch::Tensor out = torch::empty(shape, type);
  if (bytes > 0) std::memcpy(out.data_ptr(), tensor.data().data(), bytes);
  return out;
}

void TensorToProto(const torch::Tensor& tensor, v1::DType dtype, v1::Tensor* out) {
  torch::ScalarType type = torch::kFloat32;
  if (dtype == v1::DTYPE_FLOAT16) type = torch::kFloat16;
  if (dtype == v1::DTYPE_UINT8) type = torch::kUInt8;
  const torch::Tensor t = tensor.to(torch::kCPU, type).contiguous();
  out->Clear();
  for (int64_t d : t.sizes()) out->add_shape(d);
  out->set_dtype(dtype);
  out->set_data(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
}

absl::StatusOr<SampleJob> JobFromRequest(const v1::SampleRequest& request) {
  SampleJob job;
  job.labels.assign(request.labels().begin(), request.labels().end());
  job.num_samples = request.num_samples();
  job.classifier_scale = request.classifier_scale();
  switch (request.sampler()) {
    case v1::SAMPLER_KIND_UNSPECIFIED:
    case v1::SAMPLER_KIND_DDPM: job.sampler = SamplerKind::kDdpm; break;
    case v1::SAMPLER_KIND_DDIM: job.sampler = SamplerKind::kDdim; break;
    case v1::SAMPLER_KIND_DPM_SOLVER_PP: job.sampler = SamplerKind::kDpmSolverPP; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "sampler = ", request.sampler(),
          " is unknown (SAMPLER_KIND_DDPM, SAMPLER_KIND_DDIM or SAMPLER_KIND_DPM_SOLVER_PP)"));
  }
  job.eta = request.eta();
  if (request.timestep_respacing().size() > kMaxRespacingBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "timestep_respacing ", Quote(request.timestep_respacing()), " is longer than ",
        kMaxRespacingBytes, " bytes"));
  }
  job.timestep_respacing = request.timestep_respacing();
  job.steps = request.steps();
  job.solver_order = request.solver_order();
  switch (request.skip_type()) {
    case v1::SKIP_TYPE_UNSPECIFIED: break;
    case v1::SKIP_TYPE_LOGSNR: job.skip_type = SkipType::kLogSnr; break;
    case v1::SKIP_TYPE_TIME_UNIFORM: job.skip_type = SkipType::kTimeUniform; break;
    case v1::SKIP_TYPE_TIME_QUADRATIC: job.skip_type = SkipType::kTimeQuadratic; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "skip_type = ", request.skip_type(),
          " is unknown (SKIP_TYPE_LOGSNR, SKIP_TYPE_TIME_UNIFORM or SKIP_TYPE_TIME_QUADRATIC)"));
  }
  job.dynamic_thresholding_ratio = request.dynamic_thresholding_ratio();
  job.first_image_index = request.first_image_index();
  job.seed = request.seed();
  job.clip_denoised = request.has_clip_denoised() ? request.clip_denoised().value() : true;
  if (request.has_noise()) {
    ASSIGN_OR_RETURN(const torch::Tensor noise, TensorFromProto(request.noise(), "noise"));
    if (!noise.is_floating_point()) {
      return absl::InvalidArgumentError("noise.dtype must be DTYPE_FLOAT32 or DTYPE_FLOAT16");
    }
    job.noise = noise.to(torch::kFloat32);
  }
  const v1::StreamOptions& stream = request.stream();
  if (!v1::StreamOptions::Format_IsValid(stream.format())) {
    return absl::InvalidArgumentError(
        absl::StrCat("stream.format = ", stream.format(), " is unknown"));
  }
  job.stream_every = std::max<int64_t>(1, stream.every());
  job.stream_x_t = stream.x_t();
  job.stream_pred_xstart = stream.pred_xstart();
  return job;
}

absl::StatusOr<v1::SampleResponse> ResponseFromResult(const JobResult& result,
                                                      const v1::OutputOptions& output) {
  v1::SampleResponse response;
  for (int64_t label : result.labels) response.add_labels(label);
  if (!output.skip_png()) {
    ASSIGN_OR_RETURN(auto pngs, EncodePngs(result.samples));
    for (auto& png : pngs) response.add_png(std::move(png));
  }
  if (output.float32()) TensorToProto(result.samples, v1::DTYPE_FLOAT32, response.mutable_samples());
  if (output.uint8()) {
    TensorToProto(SamplesToUint8(result.samples), v1::DTYPE_UINT8, response.mutable_images_uint8());
  }
  response.set_steps(static_cast<uint32_t>(result.steps));
  response.set_queue_seconds(result.queue_seconds);
  response.set_sampling_seconds(result.sampling_seconds);
  return response;
}

absl::StatusOr<v1::StepEvent> StepEventFromUpdate(const StepUpdate& update,
                                                  const v1::StreamOptions& stream,
                                                  int64_t images) {
  v1::StepEvent event;
  event.set_step(static_cast<uint32_t>(update.step));
  event.set_total_steps(static_cast<uint32_t>(update.total_steps));
  event.set_timestep(std::llround(update.timestep));
  event.set_continuous_timestep(update.timestep);
  if (update.elapsed_seconds > 0) {
    event.set_images_per_second(static_cast<double>(images) * static_cast<double>(update.step + 1) /
                                static_cast<double>(update.total_steps) / update.elapsed_seconds);
  }
  const bool png = stream.format() == v1::StreamOptions::FORMAT_PNG;
  const v1::DType dtype = stream.format() == v1::StreamOptions::FORMAT_TENSOR_FLOAT16
                              ? v1::DTYPE_FLOAT16
                              : v1::DTYPE_FLOAT32;
  // Only the fields the format calls for are touched, so a PNG event carries no empty Tensor
  // messages and a tensor event no empty PNG lists.
  auto add = [&](const torch::Tensor& t, v1::Tensor* (v1::StepEvent::*tensor)(),
                 google::protobuf::RepeatedPtrField<std::string>* (v1::StepEvent::*pngs)())
      -> absl::Status {
    if (!t.defined()) return absl::OkStatus();
    if (!png) {
      TensorToProto(t, dtype, (event.*tensor)());
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(auto encoded, EncodePngs(t));
    for (auto& image : encoded) *(event.*pngs)()->Add() = std::move(image);
    return absl::OkStatus();
  };
  if (auto s = add(update.x_t, &v1::StepEvent::mutable_x_t, &v1::StepEvent::mutable_x_t_png);
      !s.ok()) {
    return s;
  }
  if (auto s = add(update.pred_xstart, &v1::StepEvent::mutable_pred_xstart,
                   &v1::StepEvent::mutable_pred_xstart_png);
      !s.ok()) {
    return s;
  }
  return event;
}

void DescribeModel(const Engine& engine, v1::ModelInfo* info) {
  const ModelBundle& m = engine.bundle();
  info->set_name(m.name);
  info->set_description(m.description);
  info->set_image_size(static_cast<uint32_t>(m.image_size()));
  info->set_channels(static_cast<uint32_t>(m.channels()));
  info->set_num_classes(static_cast<uint32_t>(m.num_classes()));
  info->set_class_conditional(m.class_conditional());
  info->set_has_classifier(m.has_classifier());
  info->set_diffusion_steps(static_cast<uint32_t>(m.diffusion.diffusion_steps));
  for (SamplerKind kind : engine.samplers()) {
    switch (kind) {
      case SamplerKind::kDdpm: info->add_samplers(v1::SAMPLER_KIND_DDPM); break;
      case SamplerKind::kDdim: info->add_samplers(v1::SAMPLER_KIND_DDIM); break;
      case SamplerKind::kDpmSolverPP: info->add_samplers(v1::SAMPLER_KIND_DPM_SOLVER_PP); break;
    }
  }
  for (const auto& name : m.class_names) info->add_class_names(name);
  info->set_model_flags(m.model_flags);
  info->set_classifier_flags(m.classifier_flags);
  info->set_device(m.device.str());
  info->set_dtype(ToString(m.precision));
  info->set_max_images_per_request(static_cast<uint32_t>(engine.max_images_per_request()));
  info->set_default_classifier_scale(m.default_classifier_scale);
  info->set_max_steps(static_cast<uint32_t>(engine.options().max_steps));
  info->set_max_classifier_scale(engine.options().max_classifier_scale);
}

const char* SamplerName(SamplerKind kind) { return ToString(kind); }

}  // namespace gd::server
