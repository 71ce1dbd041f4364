#include "eval/evaluator.h"

#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/io/bundled_model.h"
#include "core/io/image.h"
#include "core/io/npy.h"
#include "core/nn/checkpoint.h"
#include "core/status_macros.h"

namespace gd::eval {
namespace {

namespace fs = std::filesystem;
namespace nn = torch::nn;

nn::Sequential ConvStage(int64_t in_channels, int64_t out_channels) {
  auto conv = [](int64_t in, int64_t out) {
    return nn::Conv2d(nn::Conv2dOptions(in, out, /*kernel_size=*/3).padding(1).bias(false));
  };
  return nn::Sequential(conv(in_channels, out_channels), nn::BatchNorm2d(out_channels), nn::ReLU(),
                        conv(out_channels, out_channels), nn::BatchNorm2d(out_channels),
                        nn::ReLU());
}

absl::StatusOr<std::vector<int64_t>> ParseChannels(const std::string& text) {
  std::vector<int64_t> channels;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 1) {
      return absl::InvalidArgumentError(absl::StrCat("--evaluator_channels = \"", text, "\": \"",
                                                     part, "\" is not a positive channel count"));
    }
    channels.push_back(v);
  }
  return channels;
}

absl::Status CheckConfig(const EvaluatorConfig& c) {
  const int64_t stages = static_cast<int64_t>(c.stage_channels.size());
  if (c.image_size < 1 || c.in_channels < 1 || c.num_classes < 2 || c.feature_channels < 1 ||
      stages < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "evaluator: image_size %d, in_channels %d, num_classes %d, feature channels %d and %d "
        "stages must be positive (at least 2 classes)",
        c.image_size, c.in_channels, c.num_classes, c.feature_channels, stages));
  }
  if (c.image_size % (int64_t{1} << (stages - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "evaluator: image_size %d is not divisible by 2^%d (one 2x2 pool between %d stages)",
        c.image_size, stages - 1, stages));
  }
  if (c.spatial_stage < 0 || c.spatial_stage >= stages || c.spatial_channels < 1 ||
      c.spatial_channels > c.stage_channels[c.spatial_stage]) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "evaluator: spatial features from stage %d, %d channels: the stages are 0..%d with "
        "channels %s",
        c.spatial_stage, c.spatial_channels, stages - 1, absl::StrJoin(c.stage_channels, ",")));
  }
  if (c.dropout < 0 || c.dropout >= 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--evaluator_dropout = ", c.dropout, " is outside [0, 1)"));
  }
  return absl::OkStatus();
}

uint32_t FileCrc32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  uLong crc = crc32(0L, Z_NULL, 0);
  std::vector<char> buffer(1 << 16);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buffer.data()), static_cast<uInt>(in.gcount()));
  }
  return static_cast<uint32_t>(crc);
}

}  // namespace

std::vector<FlagSpec> EvaluatorFlagSpecs() {
  using T = FlagSpec::Type;
  const EvaluatorConfig d;
  return {
      {"evaluator_channels", T::kString, absl::StrJoin(d.stage_channels, ","),
       "channels of each stage (two 3x3 convolutions; a 2x2 max pool between stages)"},
      {"evaluator_feature_channels", T::kInt, absl::StrCat(d.feature_channels),
       "width of the pooled features (FID, precision, recall)"},
      {"evaluator_spatial_stage", T::kInt, absl::StrCat(d.spatial_stage),
       "stage whose output map gives the spatial features (sFID)"},
      {"evaluator_spatial_channels", T::kInt, absl::StrCat(d.spatial_channels),
       "channels of that map kept for sFID (the reference keeps 7)"},
      {"evaluator_dropout", T::kFloat, "0.3", "dropout before the classifier layer"},
  };
}

absl::StatusOr<EvaluatorConfig> EvaluatorConfigFromFlags(const ReferenceFlags& flags) {
  EvaluatorConfig c;
  c.image_size = flags.GetInt("image_size");
  c.in_channels = flags.GetInt("in_channels");
  c.num_classes = flags.GetInt("num_classes");
  ASSIGN_OR_RETURN(c.stage_channels, ParseChannels(flags.Get("evaluator_channels")));
  c.feature_channels = flags.GetInt("evaluator_feature_channels");
  c.spatial_stage = flags.GetInt("evaluator_spatial_stage");
  c.spatial_channels = flags.GetInt("evaluator_spatial_channels");
  c.dropout = flags.GetFloat("evaluator_dropout");
  RETURN_IF_ERROR(CheckConfig(c));
  return c;
}

absl::StatusOr<EvaluatorConfig> EvaluatorConfigFromFlagString(const std::string& flag_string) {
  const std::vector<std::string> args =
      absl::StrSplit(flag_string, absl::ByAnyChar(" \t\n"), absl::SkipEmpty());
  ASSIGN_OR_RETURN(ReferenceFlags flags, ReferenceFlags::Parse(args, EvaluatorFlagSpecs()));
  return EvaluatorConfigFromFlags(flags);
}

std::string ToFlagString(const EvaluatorConfig& c) {
  return absl::StrFormat(
      "--image_size %d --in_channels %d --num_classes %d --evaluator_channels %s "
      "--evaluator_feature_channels %d --evaluator_spatial_stage %d "
      "--evaluator_spatial_channels %d --evaluator_dropout %g",
      c.image_size, c.in_channels, c.num_classes, absl::StrJoin(c.stage_channels, ","),
      c.feature_channels, c.spatial_stage, c.spatial_channels, c.dropout);
}

EvaluatorNetImpl::EvaluatorNetImpl(const EvaluatorConfig& config) : config_(config) {
  auto stages = register_module("stages", nn::ModuleList());
  int64_t in = config_.in_channels;
  for (int64_t out : config_.stage_channels) {
    stages_.push_back(ConvStage(in, out));
    stages->push_back(stages_.back());
    in = out;
  }
  head_ = register_module("head",
                          nn::Sequential(nn::Conv2d(nn::Conv2dOptions(in, config_.feature_channels,
                                                                      /*kernel_size=*/1)
                                                        .bias(false)),
                                         nn::BatchNorm2d(config_.feature_channels), nn::ReLU()));
  dropout_ = register_module("dropout", nn::Dropout(config_.dropout));
  classifier_ =
      register_module("classifier", nn::Linear(config_.feature_channels, config_.num_classes));
}

Features EvaluatorNetImpl::forward(const torch::Tensor& x) {
  Features out;
  torch::Tensor h = x;
  for (size_t i = 0; i < stages_.size(); ++i) {
    if (i > 0) h = torch::max_pool2d(h, /*kernel_size=*/{2, 2});
    h = stages_[i]->forward(h);
    if (static_cast<int64_t>(i) == config_.spatial_stage) {
      out.spatial = h.narrow(1, 0, config_.spatial_channels).flatten(1);
    }
  }
  out.pool = head_->forward(h).mean({2, 3});
  out.logits = classifier_->forward(dropout_->forward(out.pool));
  return out;
}

absl::StatusOr<EvaluatorNet> CreateEvaluatorNet(const EvaluatorConfig& config) {
  RETURN_IF_ERROR(CheckConfig(config));
  try {
    return EvaluatorNet(config);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("evaluator: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<EvaluatorSpec> ReadEvaluatorSpec(const std::string& json_path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileBytes(json_path));
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    EvaluatorSpec spec;
    spec.name = j.value("name", fs::path(json_path).parent_path().filename().string());
    spec.flags = j.at("flags").get<std::string>();
    spec.weights_path =
        (fs::path(json_path).parent_path() / j.at("weights").get<std::string>()).string();
    spec.test_accuracy = j.value("test_accuracy", 0.0);
    spec.test_data = j.value("test_data", "");
    spec.class_names = j.value("class_names", std::vector<std::string>{});
    return spec;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(json_path, ": ", e.what(), " (needs \"flags\" and \"weights\" strings)"));
  }
}

absl::Status WriteEvaluatorSpec(const std::string& json_path, const EvaluatorSpec& spec) {
  const fs::path folder = fs::absolute(json_path).parent_path();
  nlohmann::json j = {
      {"name", spec.name},
      {"flags", spec.flags},
      {"weights", fs::absolute(spec.weights_path).lexically_relative(folder).string()},
      {"test_accuracy", spec.test_accuracy},
      {"test_data", spec.test_data},
      {"class_names", spec.class_names},
  };
  return WriteFileBytes(json_path, j.dump(2) + "\n");
}

Evaluator::Evaluator(EvaluatorSpec spec, EvaluatorNet net, std::string fingerprint)
    : spec_(std::move(spec)), net_(std::move(net)), fingerprint_(std::move(fingerprint)) {}

absl::StatusOr<Evaluator> Evaluator::Load(const std::string& json_path) {
  ASSIGN_OR_RETURN(EvaluatorSpec spec, ReadEvaluatorSpec(json_path));
  ASSIGN_OR_RETURN(EvaluatorConfig config, EvaluatorConfigFromFlagString(spec.flags));
  ASSIGN_OR_RETURN(EvaluatorNet net, CreateEvaluatorNet(config));
  ASSIGN_OR_RETURN(StateDict weights, ReadCheckpoint(spec.weights_path));
  RETURN_IF_ERROR(LoadStateDict(*net, weights, "evaluator " + spec.name, spec.weights_path));
  net->eval();
  const std::string fingerprint =
      absl::StrFormat("%s:%08x", spec.name, FileCrc32(spec.weights_path));
  return Evaluator(std::move(spec), std::move(net), fingerprint);
}

absl::StatusOr<Features> Evaluator::Compute(const torch::Tensor& images_uint8,
                                            int64_t batch_size) const {
  const EvaluatorConfig& c = config();
  const std::vector<int64_t> expected = {c.in_channels, c.image_size, c.image_size};
  if (images_uint8.dim() != 4 || images_uint8.scalar_type() != torch::kUInt8 ||
      images_uint8.sizes().slice(1).vec() != expected) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "evaluator %s scores uint8 images [N x %d x %d x %d]; got %s %s", spec_.name, c.in_channels,
        c.image_size, c.image_size, c10::toString(images_uint8.scalar_type()),
        absl::StrJoin(images_uint8.sizes().vec(), "x")));
  }
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> pool, spatial, logits;
  try {
    for (int64_t i = 0; i < images_uint8.size(0); i += batch_size) {
      const int64_t n = std::min(batch_size, images_uint8.size(0) - i);
      // Uint8ToSamples reads the .npz layout (NHWC) and returns NCHW.
      const torch::Tensor nhwc = images_uint8.narrow(0, i, n).permute({0, 2, 3, 1});
      const Features f = net_->forward(Uint8ToSamples(nhwc));
      pool.push_back(f.pool);
      spatial.push_back(f.spatial);
      logits.push_back(f.logits);
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("evaluator ", spec_.name, ": ", e.what_without_backtrace()));
  }
  return Features{torch::cat(pool), torch::cat(spatial), torch::cat(logits)};
}

std::string FindBundledEvaluator() {
  const std::string dir = FindBundledModelDir("evaluator.json");
  return dir.empty() ? "" : (fs::path(dir) / "evaluator.json").string();
}

}  // namespace gd::eval
