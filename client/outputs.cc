#include "client/outputs.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/gd_client.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

absl::Status WriteNpy(const std::string& path, const formats::Array& array) {
  return formats::WriteFileBytes(path, formats::SerializeNpy(array));
}

}  // namespace

int64_t GridColumns(int64_t count, int64_t columns) {
  return columns > 0 ? columns : std::max<int64_t>(1, std::min(count, kMaxGridColumns));
}

absl::StatusOr<formats::Array> StepTensor(const v1::Tensor& tensor, absl::string_view what) {
  absl::StatusOr<formats::Array> array = TensorToArray(tensor, what);
  if (array.ok()) array = ToFloat32(*std::move(array), what);
  if (array.ok() && array->shape.size() != 4) {
    return absl::InternalError(absl::StrCat(what, ": the server sent a ", array->shape.size(),
                                            "-D tensor, expected [N, C, H, W]"));
  }
  return array;
}

absl::Status DumpStep(const v1::StepEvent& step, const std::string& dir) {
  const std::pair<const char*, const v1::Tensor*> tensors[] = {
      {"x_t", step.has_x_t() ? &step.x_t() : nullptr},
      {"pred_xstart", step.has_pred_xstart() ? &step.pred_xstart() : nullptr}};
  for (const auto& [name, tensor] : tensors) {
    if (tensor == nullptr) continue;
    absl::StatusOr<formats::Array> array =
        StepTensor(*tensor, absl::StrCat("step ", step.step(), " ", name));
    if (!array.ok()) return array.status();
    const std::string path = absl::StrFormat("%s/%s_%04d.npy", dir, name, step.step());
    if (absl::Status status = WriteNpy(path, *array); !status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status WriteOutputs(const v1::SampleResponse& response, const Outputs& outputs) {
  std::optional<formats::Array> samples;  // float32 [N, C, H, W]
  std::optional<formats::Array> images;   // uint8 [N, H, W, C]
  if (response.has_samples()) {
    absl::StatusOr<formats::Array> array = StepTensor(response.samples(), "samples");
    if (!array.ok()) return array.status();
    samples = *std::move(array);
  }
  if (response.has_images_uint8()) {
    absl::StatusOr<formats::Array> array = TensorToArray(response.images_uint8(), "images_uint8");
    if (!array.ok()) return array.status();
    if (array->dtype != formats::DType::kUInt8 || array->shape.size() != 4) {
      return absl::InternalError("the server sent images_uint8 that are not uint8 [N, H, W, C]");
    }
    images = *std::move(array);
  } else if (samples.has_value() && (!outputs.grid_path.empty() || !outputs.npz_path.empty())) {
    absl::StatusOr<formats::Array> array = SamplesToUint8(*samples);
    if (!array.ok()) return array.status();
    images = *std::move(array);
  }
  if ((!outputs.tensor_path.empty() && !samples.has_value()) ||
      ((!outputs.grid_path.empty() || !outputs.npz_path.empty()) && !images.has_value())) {
    return absl::InternalError("the server's response lacks the samples or images asked for");
  }

  const size_t count = static_cast<size_t>(response.labels_size());
  std::string shape;  // C x H x W when the images came back
  if (samples.has_value()) {
    shape = absl::StrCat(" ", absl::StrJoin(samples->shape.begin() + 1, samples->shape.end(), "x"));
  } else if (images.has_value() && images->shape.size() == 4) {
    shape = absl::StrCat(" ", images->shape[3], "x", images->shape[1], "x", images->shape[2]);
  }
  const double images_per_second =
      response.sampling_seconds() > 0 ? count / response.sampling_seconds() : 0;
  absl::PrintF(
      "%d %s%s from \"%s\": %d steps in %.2f s (%.2f images/s), queued %.2f s, request %s\n", count,
      count == 1 ? "image" : "images", shape, response.model(), response.steps(),
      response.sampling_seconds(), images_per_second, response.queue_seconds(),
      response.request_id());

  if (!outputs.tensor_path.empty()) {
    if (absl::Status status = WriteNpy(outputs.tensor_path, *samples); !status.ok()) return status;
    absl::PrintF("wrote %s\n", outputs.tensor_path);
  }
  if (!outputs.npz_path.empty()) {
    const int64_t n = images->shape[0];
    if (static_cast<int64_t>(count) != n) {
      return absl::InternalError(
          absl::StrCat("the server sent ", count, " labels for ", n, " images"));
    }
    formats::Array labels;
    labels.dtype = formats::DType::kInt64;
    labels.shape = {n};
    labels.data.resize(count * sizeof(int64_t));
    if (count > 0) std::memcpy(labels.data.data(), response.labels().data(), labels.data.size());
    const std::string npz = formats::SerializeNpz({{"arr_0", *images}, {"arr_1", labels}});
    if (absl::Status status = formats::WriteFileBytes(outputs.npz_path, npz); !status.ok()) {
      return status;
    }
    absl::PrintF("wrote %s\n", outputs.npz_path);
  }
  if (!outputs.grid_path.empty()) {
    absl::StatusOr<std::vector<formats::Image>> tiles = Uint8ToImages(*images);
    if (!tiles.ok()) return tiles.status();
    if (tiles->empty()) return absl::InternalError("the server sent no images");
    const int64_t columns = GridColumns(static_cast<int64_t>(tiles->size()), outputs.columns);
    absl::StatusOr<std::string> png = formats::EncodePng(formats::MakeGrid(*tiles, columns));
    if (!png.ok()) return png.status();
    if (absl::Status status = formats::WriteFileBytes(outputs.grid_path, *png); !status.ok()) {
      return status;
    }
    absl::PrintF("wrote %s\n", outputs.grid_path);
  }
  return absl::OkStatus();
}

}  // namespace gd::client
