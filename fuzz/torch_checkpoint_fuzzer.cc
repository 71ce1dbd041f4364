// torch.save checkpoints (--model_path, --classifier_path): gd::ReadTorchCheckpoint, i.e.
// LibTorch's zip reader and our restricted unpickler. Beyond not crashing, every tensor it returns
// is a defined, contiguous CPU tensor that owns its memory alone.
#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <set>
#include <string>

#include "core/nn/checkpoint.h"
#include "fuzz/fuzzing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static gd::fuzz::InputFile* const file = new gd::fuzz::InputFile();
  absl::StatusOr<gd::StateDict> state = gd::ReadTorchCheckpoint(file->Write(data, size));
  if (!state.ok()) return 0;
  std::set<const void*> storages;
  for (const auto& [name, tensor] : *state) {
    GD_FUZZ_CHECK(tensor.defined() && tensor.is_contiguous() && tensor.device().is_cpu(), name);
    // checkpoint.h: tensors never alias one another.
    if (tensor.numel() > 0) {
      GD_FUZZ_CHECK(storages.insert(tensor.storage().data()).second, name + " aliases another");
    }
  }
  return 0;
}
