// Helpers private to gd_formats: little-endian fields, NpyArray -> Array, precondition checks. Not
// installed for, nor included by, anything outside core/io/formats.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/io/formats/formats.h"

namespace gd::formats::internal {

static_assert(
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
    "gd::formats keeps elements little-endian in memory: a little-endian host is assumed");

// An unsigned little-endian field of `bytes` (at most 8) bytes.
inline uint64_t LoadLittle(const char* p, int bytes) {
  uint64_t value = 0;
  for (int i = bytes - 1; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(p[i]);
  return value;
}
inline uint16_t Le16(const char* p) { return static_cast<uint16_t>(LoadLittle(p, 2)); }
inline uint32_t Le32(const char* p) { return static_cast<uint32_t>(LoadLittle(p, 4)); }
inline uint64_t Le64(const char* p) { return LoadLittle(p, 8); }

inline void PutLittle(std::string* out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

// `npy` as an Array, or an error naming `what` if its type is not a DType (complex).
absl::StatusOr<Array> ArrayFromNpy(NpyArray npy, absl::string_view what);

// A broken precondition of a function whose signature cannot carry a Status: prints
// "gd::formats::<function>: <message>" to stderr and aborts.
[[noreturn]] void PreconditionFailed(absl::string_view function, absl::string_view message);

}  // namespace gd::formats::internal
