// safetensors checkpoints (--model_path): gd::ReadSafetensors. Beyond not crashing, every tensor it
// returns is a defined, contiguous CPU tensor.
#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "core/nn/checkpoint.h"
#include "fuzz/fuzzing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static gd::fuzz::InputFile* const file = new gd::fuzz::InputFile();
  std::map<std::string, std::string> metadata;
  absl::StatusOr<gd::StateDict> state = gd::ReadSafetensors(file->Write(data, size), &metadata);
  if (!state.ok()) return 0;
  for (const auto& [name, tensor] : *state) {
    GD_FUZZ_CHECK(tensor.defined() && tensor.is_contiguous() && tensor.device().is_cpu(), name);
  }
  return 0;
}
