// The reference's flag strings (--model_flags "--image_size 64 --num_channels ..."):
// gd::ReferenceFlags::ParseStrings and the configs built from them. Beyond not crashing (UBSan
// makes overflow in the arithmetic on flag values a crash), a parsed flag set written back with
// ToFlagString (as gd-train records a model) parses to the same flags.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/nn/config.h"
#include "fuzz/fuzzing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<gd::ReferenceFlags> flags = gd::ReferenceFlags::ParseStrings({text});
  if (!flags.ok()) return 0;
  (void)flags->UNet();
  (void)flags->Classifier();
  (void)flags->Diffusion();
  for (bool reference_only : {false, true}) {
    const std::string written = flags->ToFlagString(reference_only);
    absl::StatusOr<gd::ReferenceFlags> again = gd::ReferenceFlags::ParseStrings({written});
    GD_FUZZ_CHECK(again.ok(), absl::StrCat("\"", written, "\": ", again.status().ToString()));
    if (!reference_only) {
      GD_FUZZ_CHECK(again->ToJson() == flags->ToJson(),
                    absl::StrCat("\"", written, "\" parses to other flags"));
    }
  }
  return 0;
}
