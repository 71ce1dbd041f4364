// .npy from outside (noise inputs, sample dumps): formats::ParseNpyArray and ParseNpy. Beyond not
// crashing, a parsed array holds exactly numel * item_size bytes, and serializes to a .npy that
// parses back to the same array.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/io/formats/formats.h"
#include "fuzz/fuzzing.h"

namespace {

namespace formats = gd::formats;

// The element count of `shape`, or -1 when it overflows int64.
int64_t CheckedNumel(const std::vector<int64_t>& shape) {
  int64_t numel = 1;
  for (int64_t side : shape) {
    if (side < 0 || __builtin_mul_overflow(numel, side, &numel)) return -1;
  }
  return numel;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<formats::NpyArray> array = formats::ParseNpyArray(bytes, "input.npy");
  if (array.ok()) {
    const int64_t numel = CheckedNumel(array->shape);
    GD_FUZZ_CHECK(numel >= 0, "a parsed shape overflows");
    GD_FUZZ_CHECK(array->data.size() == static_cast<uint64_t>(numel) * array->type.item_size,
                  absl::StrCat(array->data.size(), " bytes for ", numel, " elements"));
    const std::string again = formats::SerializeNpy(array->type, array->shape, array->data);
    absl::StatusOr<formats::NpyArray> reparsed = formats::ParseNpyArray(again, "again.npy");
    GD_FUZZ_CHECK(reparsed.ok(), reparsed.status().ToString());
    GD_FUZZ_CHECK(reparsed->type == array->type && reparsed->shape == array->shape &&
                      reparsed->data == array->data,
                  "the serialized array parses back differently");
  }
  absl::StatusOr<formats::Array> plain = formats::ParseNpy(bytes, "input.npy");
  if (plain.ok()) {
    const int64_t numel = CheckedNumel(plain->shape);
    GD_FUZZ_CHECK(numel >= 0 && plain->data.size() ==
                                    static_cast<uint64_t>(numel) * formats::DTypeSize(plain->dtype),
                  "ParseNpy's data does not match its shape");
  }
  return 0;
}
