// Checkpoint files: reading the state_dicts that PyTorch's torch.save writes (the official
// guided-diffusion .pt files among them), reading and writing safetensors, and loading a
// name -> tensor list strictly into a torch::nn::Module.
//
// The torch reader never runs a general unpickler: LibTorch's torch::pickle_load cannot read a
// saved state_dict (pytorch/pytorch issue 100741), and Python's unpickler would execute whatever
// globals a file names. Ours understands only what a state_dict needs (OrderedDict,
// _rebuild_tensor_v2, _rebuild_parameter, typed storages) and refuses anything else by name.
//
// This module knows nothing of the networks that use it: keys are plain strings, and the model
// is any torch::nn::Module. Every failure, truncated or hostile files included, is a Status.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gd {

// Name -> tensor, in file order. Tensors are CPU, contiguous and never alias one another.
using StateDict = std::vector<std::pair<std::string, torch::Tensor>>;

// A torch.save zip-format file (PyTorch >= 1.6) holding a state_dict: an OrderedDict (or dict) of
// name -> tensor, its `_metadata` ignored. Storages shared between tensors (views with offsets
// and strides) are read once; each returned tensor is its own contiguous copy.
// Errors: NOT_FOUND (no file), UNIMPLEMENTED (legacy non-zip torch.save format),
// INVALID_ARGUMENT (a global, opcode, dtype or structure a state_dict does not need),
// DATA_LOSS (truncated or inconsistent archive or pickle).
absl::StatusOr<StateDict> ReadTorchCheckpoint(const std::string& path);

// safetensors: 8-byte little-endian header length, a JSON header {name: {dtype, shape,
// data_offsets}, "__metadata__": {string: string}}, raw little-endian data. Tensors come back in
// the header's order; dtypes F64, F32, F16, BF16, I64, I32, I16, I8, U8 and BOOL. Offsets outside
// the data, sizes that disagree with shape * dtype and overlapping tensors are DATA_LOSS errors.
// `metadata`, when given, receives "__metadata__" (cleared when there is none).
absl::StatusOr<StateDict> ReadSafetensors(const std::string& path,
                                          std::map<std::string, std::string>* metadata = nullptr);

// Writes `tensors` in the given order (each made contiguous and CPU first), with `metadata` as
// "__metadata__" when not empty. Writes `path`.tmp, then renames it over `path`.
absl::Status WriteSafetensors(const std::string& path, const StateDict& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// ReadTorchCheckpoint or ReadSafetensors, chosen by the file's first bytes (a zip's
// "PK\x03\x04" or a legacy torch.save pickle -> torch; a JSON header -> safetensors), never by
// its extension.
absl::StatusOr<StateDict> ReadCheckpoint(const std::string& path);

// Strict load of `state` into `module`'s parameters and buffers (names as named_parameters() and
// named_buffers() give them, e.g. "input_blocks.1.0.in_layers.2.weight"). Every missing key,
// unexpected key and shape mismatch is reported together, naming up to 10 keys of each kind and
// both shapes, e.g. `checkpoint "x.pt" for model "imagenet256": key "out.2.weight" has shape
// [6, 256, 3, 3], the model expects [3, 256, 3, 3]`; on any of them nothing is loaded.
// Values are copied under NoGradGuard into the existing tensors, converted to their dtype and
// device. `what` names the model and `source_path` the file in messages.
absl::Status LoadStateDict(torch::nn::Module& module, const StateDict& state,
                           const std::string& what, const std::string& source_path);

// Parameters then buffers of `module` (recursively, in registration order), detached: they share
// memory with the module.
StateDict ModuleStateDict(const torch::nn::Module& module);

}  // namespace gd
