// gd-eval's evaluator network: the feature extractor whose activations take the places that
// Inception-V3's take in the reference's evaluations/evaluator.py. Inception's weights cannot be
// had here and would not suit 28x28 grey images anyway, so the evaluator is a small plain CNN
// classifier trained on CLEAN images (gd-train evaluator):
//
//   stages.i   (conv3x3 -> BN -> ReLU) x 2, then a 2x2 max pool before the next stage
//   head       conv1x1 -> BN -> ReLU, averaged over space      -> pool features   (pool_3's role)
//   classifier dropout -> linear                                -> logits          (softmax's role)
//   the output of stage `spatial_stage`, its first `spatial_channels` channels, flattened
//                                                               -> spatial features (mixed_6/conv)
//
// Numbers computed in this feature space are NOT comparable with published (ImageNet,
// Inception-V3) FID, sFID, IS, precision or recall; they compare runs scored by the same
// evaluator only. The evaluator knows nothing of diffusion, servers or metrics.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/nn/config.h"

namespace gd::eval {

struct EvaluatorConfig {
  int64_t image_size = 28;
  int64_t in_channels = 1;
  int64_t num_classes = 10;
  std::vector<int64_t> stage_channels = {32, 64, 128};  // one stage per resolution
  int64_t feature_channels = 256;                       // pool feature width
  int64_t spatial_stage = 1;     // the stage whose output gives the spatial features
  int64_t spatial_channels = 7;  // how many of its channels (the reference takes 7)
  double dropout = 0.3;          // before the classifier (training only)
};

// --evaluator_* flags (their defaults are EvaluatorConfig's); --image_size, --in_channels and
// --num_classes are the reference's flags.
std::vector<FlagSpec> EvaluatorFlagSpecs();
absl::StatusOr<EvaluatorConfig> EvaluatorConfigFromFlags(const ReferenceFlags& flags);
absl::StatusOr<EvaluatorConfig> EvaluatorConfigFromFlagString(const std::string& flag_string);
// The flag string that EvaluatorConfigFromFlagString reads back into `config`.
std::string ToFlagString(const EvaluatorConfig& config);

// What the evaluator sees in a batch of N images.
struct Features {
  torch::Tensor pool;     // float32 [N x feature_channels]: FID, precision and recall
  torch::Tensor spatial;  // float32 [N x spatial_channels * h * w]: sFID
  torch::Tensor logits;   // float32 [N x num_classes]: Inception Score and label agreement
};

class EvaluatorNetImpl : public torch::nn::Module {
 public:
  explicit EvaluatorNetImpl(const EvaluatorConfig& config);
  // x float32 [N x in_channels x image_size x image_size] in [-1, 1].
  Features forward(const torch::Tensor& x);
  const EvaluatorConfig& config() const { return config_; }

 private:
  EvaluatorConfig config_;
  std::vector<torch::nn::Sequential> stages_;  // stages.i.{0..5}: conv, bn, relu, conv, bn, relu
  torch::nn::Sequential head_{nullptr};        // head.{0..2}: conv1x1, bn, relu
  torch::nn::Dropout dropout_{nullptr};
  torch::nn::Linear classifier_{nullptr};
};
TORCH_MODULE(EvaluatorNet);

// Checks the config (positive sizes, a spatial stage and channel count that exist, an image size
// the pooling divides) and builds the network.
absl::StatusOr<EvaluatorNet> CreateEvaluatorNet(const EvaluatorConfig& config);

// evaluator.json, beside a model:
//   {"name": "fashion-mnist-evaluator", "flags": "--image_size 28 ...",
//    "weights": "evaluator.safetensors", "test_accuracy": 0.93, "test_data": "...",
//    "class_names": [...]}
// `weights` is relative to the JSON file's folder.
struct EvaluatorSpec {
  std::string name;
  std::string flags;
  std::string weights_path;  // as read: resolved against the JSON's folder
  double test_accuracy = 0;  // top-1 on test_data when trained (0: unknown)
  std::string test_data;
  std::vector<std::string> class_names;
};
absl::StatusOr<EvaluatorSpec> ReadEvaluatorSpec(const std::string& json_path);
// Writes `spec` with `weights` made relative to the JSON's folder.
absl::Status WriteEvaluatorSpec(const std::string& json_path, const EvaluatorSpec& spec);

// A loaded evaluator in inference mode (CPU, float32).
class Evaluator {
 public:
  static absl::StatusOr<Evaluator> Load(const std::string& json_path);
  Evaluator(EvaluatorSpec spec, EvaluatorNet net, std::string fingerprint);

  // images uint8 [N x C x H x W] (C, H, W as the evaluator's config), scored in batches of
  // `batch_size`. An error names the shape expected when it does not fit.
  absl::StatusOr<Features> Compute(const torch::Tensor& images_uint8,
                                   int64_t batch_size = 500) const;

  const EvaluatorSpec& spec() const { return spec_; }
  const EvaluatorConfig& config() const { return net_->config(); }
  // "<name>:<crc32 of the weights file>": statistics cached under one fingerprint are only
  // compared with features of the same evaluator.
  const std::string& fingerprint() const { return fingerprint_; }

 private:
  EvaluatorSpec spec_;
  // Compute runs forward in inference mode, which changes nothing in the module.
  mutable EvaluatorNet net_;
  std::string fingerprint_;
};

// The bundled model's evaluator.json, found as gd::FindBundledModelDir finds the bundled model
// (so $GD_BUNDLED_MODEL counts here too); "" when there is none.
std::string FindBundledEvaluator();

}  // namespace gd::eval
