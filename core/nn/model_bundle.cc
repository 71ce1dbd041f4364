#include "core/nn/model_bundle.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "core/nn/checkpoint.h"
#include "core/nn/guidance.h"
#include "core/status_macros.h"

namespace gd {
namespace {

namespace fs = std::filesystem;

absl::Status Annotate(const absl::Status& status, const std::string& context) {
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

template <typename Net>
absl::Status LoadWeights(Net& net, const std::string& path, const std::string& what) {
  ASSIGN_OR_RETURN(auto state, ReadCheckpoint(path));
  return LoadStateDict(*net, state, what, path);
}

// Runs the networks once at batch 1 in their precision, gradient included, so that a LibTorch
// without a kernel they need there (LibTorch 1.13 has no float16 convolutions on CPU) is reported
// when the model loads, naming the precision, rather than by every request.
absl::Status CheckKernels(ModelBundle& bundle, const std::string& context) {
  if (bundle.precision == Precision::kFloat32) return absl::OkStatus();
  try {
    const auto options = torch::TensorOptions().device(bundle.device);
    const torch::Tensor x =
        torch::zeros({1, bundle.channels(), bundle.image_size(), bundle.image_size()}, options);
    const torch::Tensor t = torch::zeros({1}, options);
    const torch::Tensor y = torch::zeros({1}, options.dtype(torch::kInt64));
    {
      torch::NoGradGuard no_grad;
      bundle.unet->forward(x, t, bundle.class_conditional() ? y : torch::Tensor());
    }
    if (bundle.classifier) {
      ClassifierGradient(bundle.classifier, x, t, y, torch::ones({1}, options));
    }
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    return absl::InvalidArgumentError(absl::StrCat(
        context, ": ", ToString(bundle.precision), " on ", bundle.device.str(),
        " is not supported by this LibTorch (", what.substr(0, what.find('\n')), "); use ",
        bundle.device.is_cpu() ? "bf16 or fp32 on CPU" : "fp32"));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t ModelBundle::num_classes() const {
  if (class_conditional()) return unet_config.num_classes;
  if (classifier_config.has_value()) return classifier_config->out_channels;
  return 0;
}

absl::StatusOr<ReferenceFlags> SpecFlags(const ModelSpec& spec) {
  return ReferenceFlags::ParseStrings({spec.model_flags, spec.classifier_flags});
}

absl::StatusOr<ModelSpec> ReadModelDir(const std::string& dir) {
  const fs::path root(dir);
  const fs::path json_path = root / "model.json";
  std::ifstream in(json_path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("model directory \"", dir, "\" has no model.json"));
  }
  nlohmann::json json;
  try {
    in >> json;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(json_path.string(), ": ", e.what()));
  }
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(json_path.string(), " is not a JSON object"));
  }
  ModelSpec spec;
  auto text = [&](const char* key, std::string* out) -> absl::Status {
    if (!json.contains(key)) return absl::OkStatus();
    if (!json[key].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(json_path.string(), ": \"", key, "\" must be a string"));
    }
    *out = json[key].get<std::string>();
    return absl::OkStatus();
  };
  for (auto [key, field] : std::vector<std::pair<const char*, std::string*>>{
           {"name", &spec.name},
           {"description", &spec.description},
           {"model_flags", &spec.model_flags},
           {"model_path", &spec.model_path},
           {"classifier_flags", &spec.classifier_flags},
           {"classifier_path", &spec.classifier_path}}) {
    RETURN_IF_ERROR(text(key, field));
  }
  for (const auto& [key, value] : json.items()) {
    static const std::vector<std::string> known = {"name", "description", "model_flags",
                                                   "model_path", "classifier_flags",
                                                   "classifier_path", "class_names",
                                                   "default_classifier_scale"};
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      return absl::InvalidArgumentError(absl::StrCat(json_path.string(), ": unknown key \"", key,
                                                     "\""));
    }
  }
  if (json.contains("class_names")) {
    if (!json["class_names"].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(json_path.string(), ": \"class_names\" must be an array of strings"));
    }
    for (const auto& name : json["class_names"]) {
      if (!name.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(json_path.string(), ": \"class_names\" must be an array of strings"));
      }
      spec.class_names.push_back(name.get<std::string>());
    }
  }
  if (json.contains("default_classifier_scale")) {
    const auto& scale = json["default_classifier_scale"];
    if (!scale.is_number() || scale.get<double>() < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          json_path.string(), ": \"default_classifier_scale\" must be a number >= 0"));
    }
    spec.default_classifier_scale = scale.get<double>();
  }
  if (spec.name.empty()) spec.name = fs::absolute(root).lexically_normal().filename().string();
  if (spec.model_path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(json_path.string(), ": \"model_path\" is missing"));
  }
  spec.model_path = (root / spec.model_path).string();
  if (!spec.classifier_path.empty()) spec.classifier_path = (root / spec.classifier_path).string();
  return spec;
}

absl::Status WriteModelDir(const std::string& dir, const ModelSpec& spec) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  nlohmann::json json = {{"name", spec.name},
                         {"description", spec.description},
                         {"model_flags", spec.model_flags},
                         {"model_path", fs::path(spec.model_path).filename().string()}};
  if (!spec.classifier_path.empty()) {
    json["classifier_flags"] = spec.classifier_flags;
    json["classifier_path"] = fs::path(spec.classifier_path).filename().string();
  }
  if (!spec.class_names.empty()) json["class_names"] = spec.class_names;
  if (spec.default_classifier_scale > 0) {
    json["default_classifier_scale"] = spec.default_classifier_scale;
  }
  std::ofstream out(fs::path(dir) / "model.json");
  out << json.dump(2) << "\n";
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", dir, "/model.json"));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<ModelBundle>> LoadModelBundle(const ModelSpec& spec,
                                                             const torch::Device& device,
                                                             Precision precision) {
  const std::string context = absl::StrCat("model \"", spec.name, "\"");
  auto flags = SpecFlags(spec);
  if (!flags.ok()) return Annotate(flags.status(), context);
  auto bundle = std::make_shared<ModelBundle>();
  bundle->name = spec.name;
  bundle->description = spec.description;
  bundle->model_flags = spec.model_flags;
  const bool with_classifier = spec.random_weights ? !spec.classifier_flags.empty()
                                                  : !spec.classifier_path.empty();
  bundle->classifier_flags = with_classifier ? spec.classifier_flags : "";
  bundle->flags = *flags;
  bundle->diffusion = flags->Diffusion();
  bundle->class_names = spec.class_names;
  bundle->default_classifier_scale = spec.default_classifier_scale;
  bundle->device = device;
  bundle->precision = precision;
  auto unet_config = flags->UNet();
  if (!unet_config.ok()) return Annotate(unet_config.status(), context);
  unet_config->precision = Precision::kFloat32;
  bundle->unet_config = *unet_config;
  if (auto d = GaussianDiffusion::Create(bundle->diffusion); !d.ok()) {
    return Annotate(d.status(), context);
  }
  try {
    auto unet = CreateUNet(*unet_config);
    if (!unet.ok()) return Annotate(unet.status(), context);
    bundle->unet = *unet;
    if (!spec.random_weights) {
      RETURN_IF_ERROR(LoadWeights(bundle->unet, spec.model_path, spec.name));
    }
    bundle->unet->to(device);
    bundle->unet->SetPrecision(precision);
    FreezeForInference(*bundle->unet);
    bundle->unet_config.precision = precision;

    if (with_classifier) {
      auto classifier_config = flags->Classifier();
      if (!classifier_config.ok()) return Annotate(classifier_config.status(), context);
      classifier_config->precision = Precision::kFloat32;
      auto classifier = CreateEncoderUNet(*classifier_config);
      if (!classifier.ok()) return Annotate(classifier.status(), context);
      bundle->classifier = *classifier;
      if (!spec.random_weights) {
        RETURN_IF_ERROR(LoadWeights(bundle->classifier, spec.classifier_path,
                                    absl::StrCat(spec.name, " classifier")));
      }
      bundle->classifier->to(device);
      bundle->classifier->SetPrecision(precision);
      FreezeForInference(*bundle->classifier);
      classifier_config->precision = precision;
      bundle->classifier_config = *classifier_config;
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(context, ": ", e.what_without_backtrace()));
  }
  if (!bundle->class_names.empty() &&
      static_cast<int64_t>(bundle->class_names.size()) != bundle->num_classes()) {
    return absl::InvalidArgumentError(absl::StrCat(context, ": ", bundle->class_names.size(),
                                                   " class names for ", bundle->num_classes(),
                                                   " classes"));
  }
  RETURN_IF_ERROR(CheckKernels(*bundle, context));
  return bundle;
}

}  // namespace gd
