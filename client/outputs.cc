#include "client/outputs.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/gd_client.h"
#include "core/status_macros.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

absl::Status WriteNpy(const std::string& path, const formats::Array& array) {
  return formats::WriteFileBytes(path, formats::SerializeNpy(array));
}

std::string StepIndexPath(const std::string& dir) { return dir + "/steps.tsv"; }

absl::Status AppendStepLine(const v1::StepEvent& step, const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "a");
  if (file == nullptr) {
    return absl::InternalError(absl::StrCat("opening \"", path, "\": ", std::strerror(errno)));
  }
  absl::FPrintF(file, "%d\t%d\t%.6g\n", step.step(), step.timestep(), ContinuousTimestep(step));
  if (std::fclose(file) != 0) {
    return absl::InternalError(absl::StrCat("writing \"", path, "\": ", std::strerror(errno)));
  }
  return absl::OkStatus();
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

absl::Status StartStepIndex(const std::string& dir) {
  return formats::WriteFileBytes(StepIndexPath(dir), "step\ttimestep\tcontinuous_timestep\n");
}

absl::Status DumpStep(const v1::StepEvent& step, const std::string& dir) {
  const std::pair<const char*, const v1::Tensor*> tensors[] = {
      {"x_t", step.has_x_t() ? &step.x_t() : nullptr},
      {"pred_xstart", step.has_pred_xstart() ? &step.pred_xstart() : nullptr}};
  for (const auto& [name, tensor] : tensors) {
    if (tensor == nullptr) continue;
    ASSIGN_OR_RETURN(const formats::Array array,
                     StepTensor(*tensor, absl::StrCat("step ", step.step(), " ", name)));
    const std::string path = absl::StrFormat("%s/%s_%04d.npy", dir, name, step.step());
    RETURN_IF_ERROR(WriteNpy(path, array));
  }
  return AppendStepLine(step, StepIndexPath(dir));
}

std::vector<std::string> Captions(const std::vector<int64_t>& labels,
                                  const std::vector<std::string>& class_names) {
  if (class_names.empty()) return {};
  std::vector<std::string> captions;
  captions.reserve(labels.size());
  for (int64_t label : labels) {
    const bool known = label >= 0 && label < static_cast<int64_t>(class_names.size());
    captions.push_back(known ? class_names[static_cast<size_t>(label)] : absl::StrCat(label));
  }
  return captions;
}

absl::Status WriteOutputs(const SampleSet& set, const Outputs& outputs,
                          const std::vector<std::string>& class_names, bool npz_written) {
  const KeptOutputs kept = outputs.Kept();
  if ((kept.samples && !set.samples.has_value()) || (kept.images && !set.images.has_value())) {
    return absl::InternalError("the samples or images to write were not kept");
  }
  if (!outputs.tensor_path.empty()) {
    if (absl::Status status = WriteNpy(outputs.tensor_path, *set.samples); !status.ok()) {
      return status;
    }
    absl::PrintF("wrote %s\n", outputs.tensor_path);
  }
  if (!outputs.npz_path.empty()) {
    if (!npz_written) {
      absl::Status status = WriteSampleSetNpz(outputs.npz_path, set, /*with_samples=*/false);
      if (!status.ok()) return status;
    }
    absl::PrintF("wrote %s\n", outputs.npz_path);
  }
  if (!outputs.grid_path.empty()) {
    ASSIGN_OR_RETURN(auto tiles, Uint8ToImages(*set.images));
    if (tiles.empty()) return absl::InternalError("there are no images for the grid");
    SampleGridOptions grid;
    grid.columns = GridColumns(static_cast<int64_t>(tiles.size()), outputs.columns);
    grid.min_tile_px = outputs.min_tile_px;
    if (outputs.captions) grid.captions = Captions(set.labels, class_names);
    ASSIGN_OR_RETURN(auto picture, MakeSampleGrid(tiles, grid));
    ASSIGN_OR_RETURN(auto png, formats::EncodePng(picture));
    if (absl::Status status = formats::WriteFileBytes(outputs.grid_path, png); !status.ok()) {
      return status;
    }
    absl::PrintF("wrote %s\n", outputs.grid_path);
  }
  return absl::OkStatus();
}

}  // namespace gd::client
