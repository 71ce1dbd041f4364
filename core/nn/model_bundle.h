// A served model: the diffusion UNet, its process description and, optionally, the noisy
// classifier that guides it, loaded from the reference's flag strings and checkpoints (or a
// model directory that names them), placed on a device in a precision, frozen for inference.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/diffusion/gaussian_diffusion.h"
#include "core/nn/config.h"
#include "core/nn/unet.h"

namespace gd {

// What to load, in the reference's own terms.
struct ModelSpec {
  std::string name;
  std::string description;
  std::string model_flags;       // MODEL_FLAGS of the reference README (+ diffusion flags)
  std::string model_path;        // .pt or .safetensors
  std::string classifier_flags;  // CLASSIFIER_FLAGS; empty with no classifier
  std::string classifier_path;   // empty: no classifier (unguided sampling only)
  std::vector<std::string> class_names;  // optional, one per class
  double default_classifier_scale = 0;    // recommended guidance scale; 0 = none given
  // Benchmarks of architectures without their checkpoints: the networks keep their initial
  // (random) weights, no path is read, and a classifier is built whenever classifier_flags is set.
  bool random_weights = false;
};

// A model directory holds model.json:
//   {"name": "...", "description": "...", "model_flags": "--image_size 28 ...",
//    "model_path": "model.safetensors", "classifier_flags": "...",
//    "classifier_path": "classifier.safetensors", "class_names": ["T-shirt/top", ...],
//    "default_classifier_scale": 3}
// Paths are relative to the directory; name defaults to the directory's name.
absl::StatusOr<ModelSpec> ReadModelDir(const std::string& dir);
absl::Status WriteModelDir(const std::string& dir, const ModelSpec& spec);

struct ModelBundle {
  std::string name;
  std::string description;
  std::string model_flags;       // as given
  std::string classifier_flags;  // as given ("" without classifier)
  ReferenceFlags flags;  // model and classifier flags read as one
  UNetConfig unet_config;
  DiffusionConfig diffusion;  // timestep_respacing as the flags say ("" = all steps)
  UNetModel unet{nullptr};
  std::optional<UNetConfig> classifier_config;
  EncoderUNetModel classifier{nullptr};  // empty when no classifier is loaded
  std::vector<std::string> class_names;
  double default_classifier_scale = 0;
  torch::Device device = torch::kCPU;
  Precision precision = Precision::kFloat32;

  bool has_classifier() const { return !classifier.is_empty(); }
  bool class_conditional() const { return unet_config.num_classes > 0; }
  // Classes the model or its classifier knows (0 for an unconditional model without classifier).
  int64_t num_classes() const;
  int64_t image_size() const { return unet_config.image_size; }
  int64_t channels() const { return unet_config.in_channels; }
};

// Builds both networks from the flags, loads the weights strictly, moves them to `device`,
// applies `precision` to the torsos (convert_to_fp16; use_fp16 in the flags is overridden) and
// freezes them. Every failure names the model, the file and what was wrong.
absl::StatusOr<std::shared_ptr<ModelBundle>> LoadModelBundle(const ModelSpec& spec,
                                                             const torch::Device& device,
                                                             Precision precision);

// The flags of a spec read as one set (model, then classifier flags).
absl::StatusOr<ReferenceFlags> SpecFlags(const ModelSpec& spec);

}  // namespace gd
