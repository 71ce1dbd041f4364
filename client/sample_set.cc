#include "client/sample_set.h"

#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/gd_client.h"
#include "core/status_macros.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// OK when `array` is `dtype` of rank 4 with `count` items along its first axis.
absl::Status CheckBatch(const formats::Array& array, formats::DType dtype, int64_t count,
                        absl::string_view what, absl::string_view layout) {
  if (array.dtype != dtype || array.shape.size() != 4 || array.shape[0] != count) {
    return absl::InternalError(absl::StrCat(
        what, ": expected ", formats::DTypeName(dtype), " ", layout, " with N = ", count, ", got ",
        formats::DTypeName(array.dtype), " ", ShapeText(array.shape)));
  }
  return absl::OkStatus();
}

// The first axis of each part's array, one after the other; all parts must have the array.
absl::StatusOr<std::optional<formats::Array>> ConcatMember(
    const std::vector<const SampleSet*>& parts, std::optional<formats::Array> SampleSet::*member,
    absl::string_view what) {
  const std::optional<formats::Array>& first = parts.front()->*member;
  formats::Array joined;
  if (first.has_value()) {
    joined.dtype = first->dtype;
    joined.shape = first->shape;
    joined.shape[0] = 0;
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::optional<formats::Array>& array = parts[i]->*member;
    if (array.has_value() != first.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "part ", i, (array.has_value() ? " has " : " lacks "), what, ", part 0 does not"));
    }
    if (!array.has_value()) continue;
    if (array->dtype != first->dtype || !std::equal(array->shape.begin() + 1, array->shape.end(),
                                                    first->shape.begin() + 1, first->shape.end())) {
      return absl::InvalidArgumentError(
          absl::StrCat("part ", i, "'s ", what, " are ", formats::DTypeName(array->dtype), " ",
                       ShapeText(array->shape), ", part 0's ", formats::DTypeName(first->dtype),
                       " ", ShapeText(first->shape)));
    }
    joined.shape[0] += array->shape[0];
    joined.data += array->data;
  }
  if (!first.has_value()) return std::optional<formats::Array>();
  return std::optional<formats::Array>(std::move(joined));
}

formats::Array LabelArray(const std::vector<int64_t>& labels) {
  formats::Array array;
  array.dtype = formats::DType::kInt64;
  array.shape = {static_cast<int64_t>(labels.size())};
  array.data.resize(labels.size() * sizeof(int64_t));
  if (!labels.empty()) std::memcpy(array.data.data(), labels.data(), array.data.size());
  return array;
}

absl::StatusOr<std::vector<int64_t>> LabelsOf(const formats::Array& array, absl::string_view what) {
  if (array.shape.size() != 1 ||
      (array.dtype != formats::DType::kInt64 && array.dtype != formats::DType::kInt32)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": arr_1 must be int64 or int32 [N], is ",
                                                   formats::DTypeName(array.dtype), " ",
                                                   ShapeText(array.shape)));
  }
  std::vector<int64_t> labels(static_cast<size_t>(array.shape[0]));
  for (size_t i = 0; i < labels.size(); ++i) {
    if (array.dtype == formats::DType::kInt64) {
      std::memcpy(&labels[i], array.data.data() + 8 * i, 8);
    } else {
      int32_t label;
      std::memcpy(&label, array.data.data() + 4 * i, 4);
      labels[i] = label;
    }
  }
  return labels;
}

}  // namespace

v1::OutputOptions WireOutputs(const KeptOutputs& kept) {
  v1::OutputOptions output;
  output.set_skip_png(true);
  output.set_float32(kept.samples);
  output.set_uint8(kept.images && !kept.samples);
  return output;
}

absl::StatusOr<SampleSet> SampleSetFromResponse(const v1::SampleResponse& response,
                                                const KeptOutputs& kept) {
  SampleSet set;
  set.labels.assign(response.labels().begin(), response.labels().end());
  const int64_t count = set.size();
  if (kept.samples) {
    if (!response.has_samples()) {
      return absl::InternalError("the server's response lacks the float32 samples asked for");
    }
    absl::StatusOr<formats::Array> samples = TensorToArray(response.samples(), "samples");
    if (samples.ok()) samples = ToFloat32(*std::move(samples), "samples");
    if (!samples.ok()) return absl::InternalError(samples.status().message());
    if (absl::Status shape =
            CheckBatch(*samples, formats::DType::kFloat32, count, "samples", "[N, C, H, W]");
        !shape.ok()) {
      return shape;
    }
    set.samples = *std::move(samples);
  }
  if (kept.images && response.has_images_uint8()) {
    absl::StatusOr<formats::Array> images = TensorToArray(response.images_uint8(), "images_uint8");
    if (!images.ok()) return absl::InternalError(images.status().message());
    if (absl::Status shape =
            CheckBatch(*images, formats::DType::kUInt8, count, "images_uint8", "[N, H, W, C]");
        !shape.ok()) {
      return shape;
    }
    set.images = *std::move(images);
  } else if (kept.images && set.samples.has_value()) {
    ASSIGN_OR_RETURN(set.images, SamplesToUint8(*set.samples));
  } else if (kept.images) {
    return absl::InternalError("the server's response lacks the uint8 images asked for");
  }
  return set;
}

absl::StatusOr<SampleSet> ConcatSampleSets(const std::vector<const SampleSet*>& parts) {
  SampleSet joined;
  if (parts.empty()) return joined;
  for (const SampleSet* part : parts) {
    joined.labels.insert(joined.labels.end(), part->labels.begin(), part->labels.end());
  }
  ASSIGN_OR_RETURN(joined.images, ConcatMember(parts, &SampleSet::images, "images"));
  ASSIGN_OR_RETURN(joined.samples, ConcatMember(parts, &SampleSet::samples, "samples"));
  return joined;
}

absl::Status WriteSampleSetNpz(const std::string& path, const SampleSet& set, bool with_samples) {
  if (!set.images.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write \"", path, "\": the set has no uint8 images for arr_0"));
  }
  std::vector<std::pair<std::string, formats::Array>> members = {{"arr_0", *set.images},
                                                                 {"arr_1", LabelArray(set.labels)}};
  if (with_samples && set.samples.has_value()) members.emplace_back("samples", *set.samples);
  // Written aside and renamed, so that a process killed while writing leaves PATH as it was.
  const std::string partial = path + ".tmp";
  RETURN_IF_ERROR(formats::WriteNpz(partial, members));
  if (std::rename(partial.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(partial.c_str());
    return absl::InternalError(
        absl::StrCat("renaming \"", partial, "\" to \"", path, "\": ", std::strerror(error)));
  }
  return absl::OkStatus();
}

absl::StatusOr<SampleSet> ReadSampleSetNpz(const std::string& path) {
  ASSIGN_OR_RETURN(auto bytes, formats::ReadFileBytes(path));
  ASSIGN_OR_RETURN(auto members, formats::ParseNpz(bytes, path));
  SampleSet set;
  std::optional<formats::Array> labels;
  for (auto& [name, array] : members) {
    if (name == "arr_0") {
      set.images = std::move(array);
    } else if (name == "arr_1") {
      labels = std::move(array);
    } else if (name == "samples") {
      set.samples = std::move(array);
    }
  }
  if (!set.images.has_value() || !labels.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": arr_0 or arr_1 is missing"));
  }
  ASSIGN_OR_RETURN(auto label_values, LabelsOf(*labels, path));
  set.labels = std::move(label_values);
  const int64_t count = set.size();
  absl::Status shape = CheckBatch(*set.images, formats::DType::kUInt8, count,
                                  absl::StrCat(path, ": arr_0"), "[N, H, W, C]");
  if (shape.ok() && set.samples.has_value()) {
    shape = CheckBatch(*set.samples, formats::DType::kFloat32, count,
                       absl::StrCat(path, ": samples"), "[N, C, H, W]");
  }
  if (!shape.ok()) return absl::InvalidArgumentError(shape.message());
  return set;
}

}  // namespace gd::client
