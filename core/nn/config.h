// Model descriptions in the reference's own terms. The flag strings of openai/guided-diffusion's
// README (MODEL_FLAGS, CLASSIFIER_FLAGS, SAMPLE_FLAGS) are accepted verbatim with the reference's
// defaults (script_util.py), plus the extensions for non-ImageNet data named in DESIGN.md:
// --in_channels, --num_classes, --classifier_channel_mult, --classifier_num_head_channels.
// A JSON object with the same keys is the other form. Turns them into typed configs.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/diffusion/gaussian_diffusion.h"

namespace gd {

// Floating-point mode of a network's torso (convert_to_fp16 in the reference): convolutions in
// the input, middle and output blocks hold half (or bfloat16) weights; norms, linears and the
// output head stay float32.
enum class Precision { kFloat32, kFloat16, kBFloat16 };
absl::StatusOr<Precision> ParsePrecision(const std::string& name);  // fp32 | fp16 | bf16
const char* ToString(Precision precision);
torch::ScalarType TorsoDtype(Precision precision);

// UNetModel / EncoderUNetModel constructor arguments (unet.py). attention_ds holds downsample
// rates (image_size / resolution), as the constructors take them.
struct UNetConfig {
  int64_t image_size = 64;
  int64_t in_channels = 3;
  int64_t model_channels = 128;
  int64_t out_channels = 3;
  int64_t num_res_blocks = 2;
  std::vector<int64_t> attention_ds;
  double dropout = 0.0;
  std::vector<double> channel_mult = {1, 2, 4, 8};
  bool conv_resample = true;
  int64_t num_classes = 0;  // UNet only: > 0 makes it class-conditional (label_emb)
  Precision precision = Precision::kFloat32;
  int64_t num_heads = 1;
  int64_t num_head_channels = -1;
  int64_t num_heads_upsample = -1;
  bool use_scale_shift_norm = false;
  bool resblock_updown = false;
  bool use_new_attention_order = false;
  std::string pool = "adaptive";  // EncoderUNetModel only: adaptive, attention, spatial, spatial_v2
};

struct FlagSpec {
  enum class Type { kInt, kFloat, kBool, kString };
  std::string name;  // without the leading "--"
  Type type;
  std::string default_value;
  std::string help;
};
// The reference's model, diffusion, classifier and sampling flags with their defaults, and ours.
const std::vector<FlagSpec>& ReferenceFlagSpecs();

// A parsed flag set: every known flag with its value (given or default), in canonical text.
// `extra_specs` lets a program add its own flags (gd-train's --lr ...) to the same command line;
// an extra spec with a reference name replaces it (its default wins).
class ReferenceFlags {
 public:
  // Tokens as a shell would split them: "--name value" or "--name=value". An unknown flag, a
  // missing or malformed value, or one flag given twice with different values is an error
  // naming the flag. Booleans take the reference's str2bool spellings (true/false, yes/no, 1/0).
  static absl::StatusOr<ReferenceFlags> Parse(const std::vector<std::string>& args,
                                              const std::vector<FlagSpec>& extra_specs = {});
  // Flag strings (the model's, the classifier's, ...) split on whitespace and read as one.
  static absl::StatusOr<ReferenceFlags> ParseStrings(const std::vector<std::string>& flag_strings);
  // JSON object {"image_size": 64, "class_cond": true, ...}; same keys and checks.
  static absl::StatusOr<ReferenceFlags> FromJson(const nlohmann::json& json);
  static ReferenceFlags Defaults();

  nlohmann::json ToJson() const;                   // every flag, typed
  // Only flags that differ from the defaults; with reference_only, only ReferenceFlagSpecs()
  // without the sampling-run flags (classifier_scale, batch_size, model_path...) and a program's
  // extra flags, so the string describes the model alone.
  std::string ToFlagString(bool reference_only = false) const;
  bool IsSet(const std::string& name) const;       // given explicitly
  const std::string& Get(const std::string& name) const;
  int64_t GetInt(const std::string& name) const;
  double GetFloat(const std::string& name) const;
  bool GetBool(const std::string& name) const;

  // The diffusion model, its process and the noisy classifier they describe. Sizes and counts
  // (image side, channels, blocks, classes, diffusion steps) must lie in [1, 2^24].
  absl::StatusOr<UNetConfig> UNet() const;
  absl::StatusOr<UNetConfig> Classifier() const;
  DiffusionConfig Diffusion() const;

 private:
  absl::Status Set(const FlagSpec& spec, const std::string& value);

  std::vector<FlagSpec> specs_;
  std::map<std::string, std::string> values_;
  std::map<std::string, bool> explicit_;
};

// The reference's channel_mult for its image sizes (64, 128, 256, 512); an error otherwise.
absl::StatusOr<std::vector<double>> DefaultChannelMult(int64_t image_size, const char* flag);
// "32,16,8" at image_size 256 -> downsample rates {8, 16, 32}.
absl::StatusOr<std::vector<int64_t>> AttentionDownsampleRates(const std::string& resolutions,
                                                              int64_t image_size,
                                                              const char* flag);

}  // namespace gd
