// Tensor wrappers over gd::formats' .npy and .npz: dtype mapping and tensor <-> bytes copies.
#include "core/io/npy.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/io/formats/formats.h"
#include "core/status_macros.h"

namespace gd {
namespace {

// numpy's element types and the tensor dtypes they become, both ways. (formats::ParseNpyArray has
// already widened u2/u4 to i4/i8.)
struct TensorNpyType {
  torch::ScalarType tensor_type;
  formats::NpyType npy_type;
};
constexpr TensorNpyType kTensorNpyTypes[] = {
    {torch::kHalf, {'f', 2}},           {torch::kFloat, {'f', 4}},
    {torch::kDouble, {'f', 8}},         {torch::kChar, {'i', 1}},
    {torch::kShort, {'i', 2}},          {torch::kInt, {'i', 4}},
    {torch::kLong, {'i', 8}},           {torch::kByte, {'u', 1}},
    {torch::kBool, {'b', 1}},           {torch::kComplexFloat, {'c', 8}},
    {torch::kComplexDouble, {'c', 16}},
};

const TensorNpyType* FindByTensorType(torch::ScalarType tensor_type) {
  for (const TensorNpyType& entry : kTensorNpyTypes) {
    if (entry.tensor_type == tensor_type) return &entry;
  }
  return nullptr;
}

const TensorNpyType* FindByNpyType(formats::NpyType npy_type) {
  for (const TensorNpyType& entry : kTensorNpyTypes) {
    if (entry.npy_type == npy_type) return &entry;
  }
  return nullptr;
}

// A tensor of a dtype .npy can hold: bfloat16 and other floating types become float32, quantized
// tensors are dequantized, other integer types (LibTorch 2.x's uint16/32/64) become int64.
torch::Tensor ToNpyType(const torch::Tensor& tensor) {
  if (tensor.is_quantized()) return tensor.dequantize();
  if (FindByTensorType(tensor.scalar_type()) != nullptr) return tensor;
  if (tensor.is_complex()) return tensor.to(torch::kComplexFloat);
  if (tensor.is_floating_point()) return tensor.to(torch::kFloat);
  return tensor.to(torch::kLong);
}

// A contiguous CPU tensor that owns a copy of `array`; errors name `what`.
absl::StatusOr<torch::Tensor> ToTensor(const formats::NpyArray& array, absl::string_view what) {
  const TensorNpyType* type = FindByNpyType(array.type);
  if (type == nullptr) {
    return absl::InternalError(absl::StrCat(what, ": no tensor dtype for numpy kind '",
                                            std::string(1, array.type.kind), "' of ",
                                            array.type.item_size, " bytes"));
  }
  try {
    torch::Tensor tensor = torch::empty(array.shape, type->tensor_type);
    if (!array.data.empty()) std::memcpy(tensor.data_ptr(), array.data.data(), array.data.size());
    return tensor;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  }
}

}  // namespace

absl::StatusOr<std::string> ReadFileBytes(const std::string& path) {
  return formats::ReadFileBytes(path);
}

absl::Status WriteFileBytes(const std::string& path, absl::string_view bytes) {
  return formats::WriteFileBytes(path, bytes);
}

absl::StatusOr<torch::Tensor> ParseNpy(absl::string_view bytes, absl::string_view what) {
  ASSIGN_OR_RETURN(auto array, formats::ParseNpyArray(bytes, what));
  return ToTensor(array, what);
}

absl::StatusOr<torch::Tensor> ReadNpy(const std::string& path) {
  ASSIGN_OR_RETURN(auto bytes, formats::ReadFileBytes(path));
  return ParseNpy(bytes, path);
}

std::string SerializeNpy(const torch::Tensor& tensor) {
  TORCH_CHECK(tensor.defined(), "SerializeNpy: undefined tensor");
  const torch::Tensor data = ToNpyType(tensor).to(torch::kCPU).contiguous();
  const absl::string_view bytes(static_cast<const char*>(data.data_ptr()),
                                data.numel() * data.element_size());
  return formats::SerializeNpy(FindByTensorType(data.scalar_type())->npy_type, data.sizes().vec(),
                               bytes);
}

absl::Status WriteNpy(const std::string& path, const torch::Tensor& tensor) {
  std::string bytes;
  try {
    bytes = SerializeNpy(tensor);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what_without_backtrace()));
  }
  return formats::WriteFileBytes(path, bytes);
}

absl::StatusOr<std::vector<std::pair<std::string, torch::Tensor>>> ReadNpz(
    const std::string& path) {
  ASSIGN_OR_RETURN(auto file, formats::ReadFileBytes(path));
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  absl::Status status =
      formats::VisitNpz(file, path, [&](const std::string& name, const formats::NpyArray& array) {
        ASSIGN_OR_RETURN(torch::Tensor tensor,
                         ToTensor(array, absl::StrCat(path, ":", name, ".npy")));
        tensors.emplace_back(name, std::move(tensor));
        return absl::OkStatus();
      });
  RETURN_IF_ERROR(status);
  return tensors;
}

absl::Status WriteNpz(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& arrays) {
  std::vector<std::string> names;
  names.reserve(arrays.size());
  for (const auto& [name, tensor] : arrays) names.push_back(name);
  return formats::WriteNpz(path, names, [&](size_t index) -> absl::StatusOr<std::string> {
    try {
      return SerializeNpy(arrays[index].second);
    } catch (const c10::Error& e) {
      return absl::InvalidArgumentError(e.what_without_backtrace());
    }
  });
}

}  // namespace gd
