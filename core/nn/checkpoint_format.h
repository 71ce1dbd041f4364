// Internals shared by the checkpoint readers and writers (torch_checkpoint.cc, safetensors.cc,
// checkpoint.cc): the dtype table both formats name, file access that turns errno into a Status,
// and message helpers. Not part of the public API; include checkpoint.h instead.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gd::checkpoint_internal {

inline constexpr absl::string_view kZipMagic("PK\x03\x04", 4);
// The legacy (pre-1.6) torch.save format starts with a pickled magic number,
// 0x1950a86a20f9469cfc6c, written as LONG1 with 10 little-endian bytes.
inline constexpr absl::string_view kLegacyTorchMagic(
    "\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 12);
// The most dimensions a tensor in a checkpoint may declare.
inline constexpr size_t kMaxDims = 64;

// The dtypes both formats support, by their safetensors and torch storage names.
struct DtypeNames {
  const char* safetensors;
  const char* storage;
  torch::ScalarType type;
};
inline constexpr DtypeNames kDtypes[] = {
    {"F64", "DoubleStorage", torch::kFloat64}, {"F32", "FloatStorage", torch::kFloat32},
    {"F16", "HalfStorage", torch::kFloat16},   {"BF16", "BFloat16Storage", torch::kBFloat16},
    {"I64", "LongStorage", torch::kInt64},     {"I32", "IntStorage", torch::kInt32},
    {"I16", "ShortStorage", torch::kInt16},    {"I8", "CharStorage", torch::kInt8},
    {"U8", "ByteStorage", torch::kUInt8},      {"BOOL", "BoolStorage", torch::kBool},
};
inline constexpr char kSafetensorsDtypeList[] =
    "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";
inline constexpr char kStorageTypeList[] =
    "Double, Float, Half, BFloat16, Long, Int, Short, Char, Byte, Bool";

// nullptr when the name or type is not in kDtypes.
const DtypeNames* FindSafetensorsDtype(absl::string_view name);
const DtypeNames* FindStorageDtype(absl::string_view storage_type);
const DtypeNames* FindDtype(torch::ScalarType type);

bool HostIsLittleEndian();
// A name from a file, quoted and escaped for a message; long names are cut.
std::string Quoted(absl::string_view text);
std::string ShapeString(c10::IntArrayRef sizes);
absl::Status WithPrefix(const absl::Status& status, absl::string_view prefix);

// A bool tensor must hold only bytes 0 and 1; anything else is undefined behaviour downstream.
bool HasInvalidBools(const torch::Tensor& contiguous_bools);

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// `what` "path": strerror, as NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT (a directory) or
// UNAVAILABLE.
absl::Status FileError(absl::string_view what, const std::string& path, int error_number);
absl::StatusOr<FilePtr> OpenForReading(const std::string& path);
// Up to `max_bytes` from the start of the file.
absl::StatusOr<std::string> ReadPrefix(const std::string& path, size_t max_bytes);
// Whether a file starting with `prefix` is a legacy (pre-1.6, non-zip) torch.save pickle.
bool IsLegacyTorchPickle(absl::string_view prefix);

}  // namespace gd::checkpoint_internal
