#include "client/models_table.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/sampler_settings.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

// A count or a scale, "-" for 0 (the server did not say, or there is no limit).
template <typename T>
std::string OrDash(T value) {
  return value == 0 ? "-" : absl::StrCat(value);
}

std::vector<std::string> Row(const v1::ModelInfo& model, const std::string& default_model) {
  std::vector<std::string> samplers;
  for (int kind : model.samplers()) samplers.push_back(SamplerName(kind));
  return {absl::StrCat(model.name(), model.name() == default_model ? " *" : ""),
          absl::StrCat(model.image_size()),
          absl::StrCat(model.channels()),
          absl::StrCat(model.num_classes()),
          model.class_conditional() ? "yes" : "no",
          model.has_classifier() ? "yes" : "no",
          absl::StrCat(model.diffusion_steps()),
          absl::StrJoin(samplers, ","),
          OrDash(model.default_classifier_scale()),
          OrDash(model.max_images_per_request()),
          OrDash(model.max_steps()),
          OrDash(model.max_classifier_scale())};
}

}  // namespace

std::string ModelsTable(const std::vector<v1::ModelInfo>& models,
                        const std::string& default_model) {
  std::vector<std::vector<std::string>> rows = {{"NAME", "SIZE", "CHANNELS", "CLASSES",
                                                 "CONDITIONAL", "CLASSIFIER", "STEPS", "SAMPLERS",
                                                 "SCALE", "MAX_IMAGES", "MAX_STEPS", "MAX_SCALE"}};
  bool default_listed = false;
  for (const v1::ModelInfo& model : models) {
    rows.push_back(Row(model, default_model));
    default_listed |= model.name() == default_model;
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string table;
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      absl::StrAppend(&table, row[i],
                      i + 1 < row.size() ? std::string(widths[i] - row[i].size() + 2, ' ') : "\n");
    }
  }
  absl::StrAppend(&table, default_listed ? "* default model. " : "",
                  "SCALE: recommended classifier scale; MAX_*: the server's limits per request\n");
  return table;
}

}  // namespace gd::client
