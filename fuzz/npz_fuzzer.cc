// .npz from outside (training data, noise inputs): formats::VisitNpz, i.e. libzip behind our limits
// and the .npy parser for every member. Beyond not crashing, each member handed over holds exactly
// numel * item_size bytes under a name without the ".npy".
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/io/formats/formats.h"
#include "fuzz/fuzzing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  (void)gd::formats::VisitNpz(
      bytes, "input.npz", [](const std::string& name, gd::formats::NpyArray array) {
        int64_t numel = 1;
        for (int64_t side : array.shape) {
          GD_FUZZ_CHECK(side >= 0 && !__builtin_mul_overflow(numel, side, &numel),
                        absl::StrCat("member ", name, ": shape overflows"));
        }
        GD_FUZZ_CHECK(array.data.size() == static_cast<uint64_t>(numel) * array.type.item_size,
                      absl::StrCat("member ", name, ": ", array.data.size(), " bytes for ", numel,
                                   " elements"));
        return absl::OkStatus();
      });
  return 0;
}
