#include "core/nn/config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"

namespace gd {
namespace {

using Type = FlagSpec::Type;

// The shortest decimal text that reads back as exactly `v`.
std::string ShortestDouble(double v) {
  for (int precision = 1; precision <= 17; ++precision) {
    char buf[40];
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) return buf;
  }
  return absl::StrCat(v);
}

std::vector<FlagSpec> MakeReferenceSpecs() {
  return {
      // model_and_diffusion_defaults()
      {"image_size", Type::kInt, "64", "image height and width"},
      {"num_channels", Type::kInt, "128", "UNet base channel count"},
      {"num_res_blocks", Type::kInt, "2", "residual blocks per resolution"},
      {"num_heads", Type::kInt, "4", "attention heads (when num_head_channels is -1)"},
      {"num_heads_upsample", Type::kInt, "-1", "heads in the upsampling path (-1: num_heads)"},
      {"num_head_channels", Type::kInt, "-1", "fixed channels per head (-1: use num_heads)"},
      {"attention_resolutions", Type::kString, "16,8", "resolutions with self-attention"},
      {"channel_mult", Type::kString, "", "per-level channel multipliers (\"\": by image size)"},
      {"dropout", Type::kFloat, "0.0", "dropout rate"},
      {"class_cond", Type::kBool, "false", "class-conditional UNet (label embedding)"},
      {"use_checkpoint", Type::kBool, "false", "gradient checkpointing (accepted, no effect)"},
      {"use_scale_shift_norm", Type::kBool, "true", "FiLM-like scale-shift conditioning"},
      {"resblock_updown", Type::kBool, "false", "residual blocks for up/downsampling"},
      {"use_fp16", Type::kBool, "false", "UNet torso in float16"},
      {"use_new_attention_order", Type::kBool, "false", "split qkv before heads"},
      // diffusion_defaults()
      {"learn_sigma", Type::kBool, "false", "model outputs the variance interpolation too"},
      {"diffusion_steps", Type::kInt, "1000", "T of the diffusion process"},
      {"noise_schedule", Type::kString, "linear", "beta schedule: linear or cosine"},
      {"timestep_respacing", Type::kString, "", "respacing: \"250\", \"ddim25\", \"10,20,30\""},
      {"use_kl", Type::kBool, "false", "train on the rescaled variational bound"},
      {"predict_xstart", Type::kBool, "false", "model predicts x_0 instead of eps"},
      {"rescale_timesteps", Type::kBool, "false", "feed the model timesteps scaled to 0..1000"},
      {"rescale_learned_sigmas", Type::kBool, "false", "rescaled MSE loss"},
      // classifier_defaults()
      {"classifier_use_fp16", Type::kBool, "false", "classifier torso in float16"},
      {"classifier_width", Type::kInt, "128", "classifier base channel count"},
      {"classifier_depth", Type::kInt, "2", "classifier residual blocks per resolution"},
      {"classifier_attention_resolutions", Type::kString, "32,16,8", "classifier attention"},
      {"classifier_use_scale_shift_norm", Type::kBool, "true", "classifier scale-shift norm"},
      {"classifier_resblock_updown", Type::kBool, "true", "classifier residual downsampling"},
      {"classifier_pool", Type::kString, "attention",
       "classifier head: adaptive, attention, spatial, spatial_v2"},
      // classifier_sample.py's own flags
      {"classifier_scale", Type::kFloat, "1.0", "guidance scale"},
      {"clip_denoised", Type::kBool, "true", "clip x_0 predictions to [-1, 1]"},
      {"num_samples", Type::kInt, "10000", "images to sample"},
      {"batch_size", Type::kInt, "16", "images per batch"},
      {"use_ddim", Type::kBool, "false", "DDIM instead of DDPM"},
      {"model_path", Type::kString, "", "diffusion checkpoint"},
      {"classifier_path", Type::kString, "", "classifier checkpoint"},
      // Extensions for non-ImageNet data (DESIGN.md).
      {"in_channels", Type::kInt, "3", "image channels (1 for grey)"},
      {"num_classes", Type::kInt, "1000", "classes of the label embedding and classifier"},
      {"classifier_channel_mult", Type::kString, "",
       "classifier channel multipliers (\"\": by image size)"},
      {"classifier_num_head_channels", Type::kInt, "64", "classifier channels per head"},
  };
}

absl::StatusOr<std::string> Canonical(const FlagSpec& spec, const std::string& raw) {
  auto bad = [&](const char* expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", spec.name, " = \"", raw, "\" is not ", expected));
  };
  switch (spec.type) {
    case Type::kInt: {
      int64_t v = 0;
      if (!absl::SimpleAtoi(raw, &v)) return bad("an integer");
      return absl::StrCat(v);
    }
    case Type::kFloat: {
      double v = 0;
      if (!absl::SimpleAtod(raw, &v) || !std::isfinite(v)) return bad("a finite number");
      return ShortestDouble(v);
    }
    case Type::kBool: {
      const std::string v = absl::AsciiStrToLower(raw);
      if (v == "yes" || v == "true" || v == "t" || v == "y" || v == "1") return std::string("true");
      if (v == "no" || v == "false" || v == "f" || v == "n" || v == "0") return std::string("false");
      return bad("a boolean (true/false, yes/no, 1/0)");
    }
    case Type::kString:
      return raw;
  }
  return raw;
}

// The largest size or count flag (channels, blocks, classes, image side, diffusion steps): far
// above any real model (ImageNet-21k has 21,843 classes), low enough that the arithmetic on these
// values (2 * in_channels, channels times multipliers) cannot overflow.
constexpr int64_t kMaxSizeFlag = int64_t{1} << 24;

absl::Status SizeInRange(const ReferenceFlags& flags, const char* name) {
  const int64_t value = flags.GetInt(name);
  if (value < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " = ", value, " must be at least 1"));
  }
  if (value > kMaxSizeFlag) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " = ", value, " must be at most ", kMaxSizeFlag));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> ParseChannelMult(const std::string& text, int64_t image_size,
                                                     const char* flag) {
  if (text.empty()) return DefaultChannelMult(image_size, flag);
  std::vector<double> mult;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    double v = 0;
    // Finite too: "inf" parses, and a channel count of inf * model_channels is no integer.
    if (!absl::SimpleAtod(absl::StripAsciiWhitespace(part), &v) || !(v > 0) ||
        !std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " = \"", text, "\": \"", part,
                                                     "\" is not a positive finite multiplier"));
    }
    mult.push_back(v);
  }
  return mult;
}

}  // namespace

absl::StatusOr<Precision> ParsePrecision(const std::string& name) {
  if (name == "fp32" || name == "float32") return Precision::kFloat32;
  if (name == "fp16" || name == "float16") return Precision::kFloat16;
  if (name == "bf16" || name == "bfloat16") return Precision::kBFloat16;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype \"", name, "\" is unknown (allowed: fp32, fp16, bf16)"));
}

const char* ToString(Precision precision) {
  switch (precision) {
    case Precision::kFloat32: return "fp32";
    case Precision::kFloat16: return "fp16";
    case Precision::kBFloat16: return "bf16";
  }
  return "?";
}

torch::ScalarType TorsoDtype(Precision precision) {
  switch (precision) {
    case Precision::kFloat16: return torch::kFloat16;
    case Precision::kBFloat16: return torch::kBFloat16;
    case Precision::kFloat32: break;
  }
  return torch::kFloat32;
}

const std::vector<FlagSpec>& ReferenceFlagSpecs() {
  static const std::vector<FlagSpec> specs = MakeReferenceSpecs();
  return specs;
}

absl::StatusOr<std::vector<double>> DefaultChannelMult(int64_t image_size, const char* flag) {
  switch (image_size) {
    case 512: return std::vector<double>{0.5, 1, 1, 2, 2, 4, 4};
    case 256: return std::vector<double>{1, 1, 2, 2, 4, 4};
    case 128: return std::vector<double>{1, 1, 2, 3, 4};
    case 64: return std::vector<double>{1, 2, 3, 4};
    default: break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "image_size ", image_size, " has no default channel multipliers (the reference knows 64, "
      "128, 256, 512): give --", flag, ", e.g. \"1,2,2\""));
}

absl::StatusOr<std::vector<int64_t>> AttentionDownsampleRates(const std::string& resolutions,
                                                              int64_t image_size,
                                                              const char* flag) {
  std::vector<int64_t> rates;
  if (absl::StripAsciiWhitespace(resolutions).empty()) return rates;
  for (absl::string_view part : absl::StrSplit(resolutions, ',')) {
    int64_t res = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &res) || res < 1) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " = \"", resolutions, "\": \"",
                                                     part, "\" is not a positive resolution"));
    }
    rates.push_back(image_size / res);
  }
  return rates;
}

ReferenceFlags ReferenceFlags::Defaults() {
  ReferenceFlags flags;
  flags.specs_ = ReferenceFlagSpecs();
  for (const auto& spec : flags.specs_) {
    flags.values_[spec.name] = *Canonical(spec, spec.default_value);
  }
  return flags;
}

absl::Status ReferenceFlags::Set(const FlagSpec& spec, const std::string& value) {
  ASSIGN_OR_RETURN(auto canonical, Canonical(spec, value));
  if (explicit_[spec.name] && values_[spec.name] != canonical) {
    return absl::InvalidArgumentError(absl::StrCat("--", spec.name, " is given twice: \"",
                                                   values_[spec.name], "\" and \"", canonical,
                                                   "\""));
  }
  values_[spec.name] = canonical;
  explicit_[spec.name] = true;
  return absl::OkStatus();
}

absl::StatusOr<ReferenceFlags> ReferenceFlags::Parse(const std::vector<std::string>& args,
                                                     const std::vector<FlagSpec>& extra_specs) {
  ReferenceFlags flags = Defaults();
  for (const auto& extra : extra_specs) {
    auto it = std::find_if(flags.specs_.begin(), flags.specs_.end(),
                           [&](const FlagSpec& s) { return s.name == extra.name; });
    if (it != flags.specs_.end()) {
      *it = extra;
    } else {
      flags.specs_.push_back(extra);
    }
    ASSIGN_OR_RETURN(auto canonical, Canonical(extra, extra.default_value));
    flags.values_[extra.name] = canonical;
  }
  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    if (!absl::ConsumePrefix(&arg, "--")) {
      return absl::InvalidArgumentError(
          absl::StrCat("expected a flag (--name value), got \"", args[i], "\""));
    }
    std::string name(arg);
    std::optional<std::string> value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto spec = std::find_if(flags.specs_.begin(), flags.specs_.end(),
                             [&](const FlagSpec& s) { return s.name == name; });
    if (spec == flags.specs_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (!value.has_value()) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      value = args[++i];
    }
    RETURN_IF_ERROR(flags.Set(*spec, *value));
  }
  return flags;
}

absl::StatusOr<ReferenceFlags> ReferenceFlags::ParseStrings(
    const std::vector<std::string>& flag_strings) {
  std::vector<std::string> args;
  for (const auto& s : flag_strings) {
    for (absl::string_view token : absl::StrSplit(s, absl::ByAnyChar(" \t\n\r"), absl::SkipEmpty())) {
      args.emplace_back(token);
    }
  }
  return Parse(args);
}

absl::StatusOr<ReferenceFlags> ReferenceFlags::FromJson(const nlohmann::json& json) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError("a model description must be a JSON object of flags");
  }
  ReferenceFlags flags = Defaults();
  for (const auto& item : json.items()) {
    // Not a structured binding: lambdas cannot capture those before C++20 (clang refuses).
    const std::string& name = item.key();
    const nlohmann::json& value = item.value();
    auto spec = std::find_if(flags.specs_.begin(), flags.specs_.end(),
                             [&](const FlagSpec& s) { return s.name == name; });
    if (spec == flags.specs_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag \"", name, "\""));
    }
    std::string text;
    if (value.is_string()) {
      text = value.get<std::string>();
    } else if (value.is_boolean()) {
      text = value.get<bool>() ? "true" : "false";
    } else if (value.is_number_integer()) {
      text = absl::StrCat(value.get<int64_t>());
    } else if (value.is_number()) {
      text = absl::StrCat(value.get<double>());
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("flag \"", name, "\" has a value that is not a string, number or bool"));
    }
    RETURN_IF_ERROR(flags.Set(*spec, text));
  }
  return flags;
}

nlohmann::json ReferenceFlags::ToJson() const {
  nlohmann::json json = nlohmann::json::object();
  for (const auto& spec : specs_) {
    const std::string& v = values_.at(spec.name);
    switch (spec.type) {
      case Type::kInt: json[spec.name] = GetInt(spec.name); break;
      case Type::kFloat: json[spec.name] = GetFloat(spec.name); break;
      case Type::kBool: json[spec.name] = v == "true"; break;
      case Type::kString: json[spec.name] = v; break;
    }
  }
  return json;
}

std::string ReferenceFlags::ToFlagString(bool reference_only) const {
  std::vector<std::string> parts;
  // classifier_sample.py's run options say how to sample, not what the model is.
  static const std::vector<std::string> kRunFlags = {"classifier_scale", "clip_denoised",
                                                     "num_samples",      "batch_size",
                                                     "use_ddim",         "model_path",
                                                     "classifier_path"};
  const std::vector<FlagSpec>& specs = reference_only ? ReferenceFlagSpecs() : specs_;
  for (const auto& spec : specs) {
    if (reference_only &&
        std::find(kRunFlags.begin(), kRunFlags.end(), spec.name) != kRunFlags.end()) {
      continue;
    }
    const std::string& v = values_.at(spec.name);
    if (v == *Canonical(spec, spec.default_value)) continue;
    // An empty value as "--name=": ParseStrings (and argparse) read it back as "", where
    // `--name ""` would be the two quote characters.
    parts.push_back(v.empty() ? absl::StrCat("--", spec.name, "=")
                              : absl::StrCat("--", spec.name, " ", v));
  }
  return absl::StrJoin(parts, " ");
}

bool ReferenceFlags::IsSet(const std::string& name) const {
  auto it = explicit_.find(name);
  return it != explicit_.end() && it->second;
}

const std::string& ReferenceFlags::Get(const std::string& name) const {
  auto it = values_.find(name);
  TORCH_CHECK(it != values_.end(), "flag --", name, " is not defined");
  return it->second;
}

int64_t ReferenceFlags::GetInt(const std::string& name) const {
  int64_t v = 0;
  TORCH_CHECK(absl::SimpleAtoi(Get(name), &v), "flag --", name, " is not an integer");
  return v;
}

double ReferenceFlags::GetFloat(const std::string& name) const {
  double v = 0;
  TORCH_CHECK(absl::SimpleAtod(Get(name), &v), "flag --", name, " is not a number");
  return v;
}

bool ReferenceFlags::GetBool(const std::string& name) const { return Get(name) == "true"; }

absl::StatusOr<UNetConfig> ReferenceFlags::UNet() const {
  for (const char* name : {"image_size", "num_channels", "num_res_blocks", "in_channels",
                           "num_classes", "diffusion_steps"}) {
    RETURN_IF_ERROR(SizeInRange(*this, name));
  }
  UNetConfig c;
  c.image_size = GetInt("image_size");
  c.in_channels = GetInt("in_channels");
  c.model_channels = GetInt("num_channels");
  c.out_channels = GetBool("learn_sigma") ? 2 * c.in_channels : c.in_channels;
  c.num_res_blocks = GetInt("num_res_blocks");
  ASSIGN_OR_RETURN(c.attention_ds, AttentionDownsampleRates(Get("attention_resolutions"),
                                                            c.image_size, "attention_resolutions"));
  c.dropout = GetFloat("dropout");
  if (c.dropout < 0 || c.dropout >= 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--dropout = ", c.dropout, " is outside [0, 1)"));
  }
  ASSIGN_OR_RETURN(c.channel_mult,
                   ParseChannelMult(Get("channel_mult"), c.image_size, "channel_mult"));
  c.num_classes = GetBool("class_cond") ? GetInt("num_classes") : 0;
  c.precision = GetBool("use_fp16") ? Precision::kFloat16 : Precision::kFloat32;
  c.num_heads = GetInt("num_heads");
  c.num_head_channels = GetInt("num_head_channels");
  c.num_heads_upsample = GetInt("num_heads_upsample");
  c.use_scale_shift_norm = GetBool("use_scale_shift_norm");
  c.resblock_updown = GetBool("resblock_updown");
  c.use_new_attention_order = GetBool("use_new_attention_order");
  return c;
}

absl::StatusOr<UNetConfig> ReferenceFlags::Classifier() const {
  for (const char* name : {"image_size", "classifier_width", "classifier_depth", "in_channels",
                           "num_classes"}) {
    RETURN_IF_ERROR(SizeInRange(*this, name));
  }
  UNetConfig c;
  c.image_size = GetInt("image_size");
  c.in_channels = GetInt("in_channels");
  c.model_channels = GetInt("classifier_width");
  c.out_channels = GetInt("num_classes");
  c.num_res_blocks = GetInt("classifier_depth");
  ASSIGN_OR_RETURN(c.attention_ds,
                   AttentionDownsampleRates(Get("classifier_attention_resolutions"), c.image_size,
                                            "classifier_attention_resolutions"));
  ASSIGN_OR_RETURN(c.channel_mult, ParseChannelMult(Get("classifier_channel_mult"), c.image_size,
                                                    "classifier_channel_mult"));
  c.precision = GetBool("classifier_use_fp16") ? Precision::kFloat16 : Precision::kFloat32;
  c.num_head_channels = GetInt("classifier_num_head_channels");
  c.use_scale_shift_norm = GetBool("classifier_use_scale_shift_norm");
  c.resblock_updown = GetBool("classifier_resblock_updown");
  c.pool = Get("classifier_pool");
  return c;
}

DiffusionConfig ReferenceFlags::Diffusion() const {
  DiffusionConfig c;
  c.diffusion_steps = GetInt("diffusion_steps");
  c.noise_schedule = Get("noise_schedule");
  c.learn_sigma = GetBool("learn_sigma");
  c.use_kl = GetBool("use_kl");
  c.predict_xstart = GetBool("predict_xstart");
  c.rescale_timesteps = GetBool("rescale_timesteps");
  c.rescale_learned_sigmas = GetBool("rescale_learned_sigmas");
  c.timestep_respacing = Get("timestep_respacing");
  return c;
}

}  // namespace gd
