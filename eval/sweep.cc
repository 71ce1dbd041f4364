#include "eval/sweep.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/io/formats/formats.h"
#include "core/io/npy.h"
#include "client/bulk_sample.h"
#include "client/progress.h"
#include "client/run_state.h"
#include "core/status_macros.h"

namespace gd::eval {
namespace {

namespace fs = std::filesystem;
namespace v1 = guided_diffusion::v1;

absl::StatusOr<v1::SampleRequest> BaseRequest(const SweepOptions& options,
                                              const SamplerPoint& point, double scale) {
  v1::SampleRequest request;
  request.set_model(options.model);
  request.set_classifier_scale(scale);
  request.set_seed(options.seed);
  request.mutable_output()->set_skip_png(true);
  request.mutable_output()->set_uint8(true);
  if (point.sampler == "ddim" || point.sampler == "ddpm") {
    request.set_sampler(point.sampler == "ddim" ? v1::SAMPLER_KIND_DDIM : v1::SAMPLER_KIND_DDPM);
    request.set_timestep_respacing(point.steps);
    return request;
  }
  uint32_t steps = 0;
  if (!absl::SimpleAtoi(point.steps, &steps) || steps < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("dpm++:", point.steps, ": DPM-Solver++ takes a step count, e.g. dpm++:20"));
  }
  request.set_sampler(v1::SAMPLER_KIND_DPM_SOLVER_PP);
  request.set_steps(steps);
  return request;
}

// How many complete images an .npz sample batch holds (0 when it is missing or unreadable).
int64_t ExistingImages(const std::string& path) {
  if (!fs::exists(path)) return 0;
  auto members = ReadNpz(path);
  if (!members.ok()) return 0;
  for (const auto& [name, tensor] : *members) {
    if (name == "arr_0") return tensor.size(0);
  }
  return 0;
}

std::string PointFile(const SweepOptions& options, const SamplerPoint& point, double scale) {
  std::string sampler = point.sampler == "dpm++" ? "dpmpp" : point.sampler;
  return (fs::path(options.out_dir) /
          absl::StrFormat("samples_%s_%s_scale%g.npz", sampler, point.steps, scale))
      .string();
}

// The sampling time of a point, beside its .npz, so a resumed sweep still reports it.
absl::Status WriteSeconds(const std::string& npz_path, double seconds) {
  return formats::WriteFileBytes(npz_path + ".json",
                                 nlohmann::json{{"sampling_seconds", seconds}}.dump() + "\n");
}

double ReadSeconds(const std::string& npz_path) {
  auto text = formats::ReadFileBytes(npz_path + ".json");
  if (!text.ok()) return 0;
  const nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  return j.is_object() ? j.value("sampling_seconds", 0.0) : 0.0;
}

absl::Status WriteTables(const std::string& out_dir, const std::vector<SweepRow>& rows) {
  const fs::path dir(out_dir);
  RETURN_IF_ERROR(formats::WriteFileBytes((dir / "sweep.csv").string(), SweepCsv(rows)));
  RETURN_IF_ERROR(formats::WriteFileBytes((dir / "sweep.md").string(), SweepMarkdown(rows)));
  nlohmann::json j = nlohmann::json::array();
  for (const SweepRow& r : rows) {
    j.push_back({{"sampler", r.sampler},
                 {"steps", r.steps},
                 {"classifier_scale", r.classifier_scale},
                 {"sampling_seconds", r.seconds},
                 {"scores", ToJson(r.scores)}});
  }
  return formats::WriteFileBytes((dir / "sweep.json").string(), j.dump(2) + "\n");
}

}  // namespace

absl::StatusOr<std::vector<SamplerPoint>> ParseSamplerPoints(const std::string& text) {
  std::vector<SamplerPoint> points;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::vector<std::string> parts = absl::StrSplit(item, absl::MaxSplits(':', 1));
    const bool known = parts[0] == "ddim" || parts[0] == "ddpm" || parts[0] == "dpm++";
    if (parts.size() != 2 || parts[1].empty() || !known) {
      return absl::InvalidArgumentError(
          absl::StrCat("--samplers item \"", item,
                       "\" is not SAMPLER:STEPS with SAMPLER ddim, ddpm or dpm++ "
                       "(e.g. ddim:ddim50, ddpm:250, dpm++:20)"));
    }
    points.push_back({parts[0], parts[1]});
  }
  if (points.empty()) return absl::InvalidArgumentError("--samplers names no sampler");
  return points;
}

absl::StatusOr<double> DrawSamples(client::SamplerClient& client, const SweepOptions& options,
                                   const SamplerPoint& point, double scale,
                                   const std::string& path) {
  // The client library's bulk sampler: requests of the model's max_images_per_request, each
  // with its first_image_index, retried on load, resumable from the parts beside `path`.
  client::BulkSampleOptions bulk;
  ASSIGN_OR_RETURN(bulk.base, BaseRequest(options, point, scale));
  bulk.num_images = options.num_samples;
  bulk.label_choice = client::LabelChoice::kBalanced;
  bulk.kept.images = true;
  bulk.concurrency = static_cast<int>(std::max<int64_t>(1, options.concurrency));
  bulk.npz_path = path;
  bulk.resume = fs::exists(client::RunStateDir(path));
  const std::string what = absl::StrCat(point.sampler, ":", point.steps, " scale ", scale);
  std::cerr << absl::StrFormat("[sweep] %s: %d images\n", what, options.num_samples);
  // gd sample's display: a bar on a terminal, a line every 10 s in a log, retries reported.
  client::RunProgress progress(stderr);
  auto result = client::BulkSample(
      client, bulk, [&](const client::BulkProgress& p) { progress.Update(p); });
  progress.Clear();
  if (!result.ok()) {
    return absl::Status(result.status().code(),
                        absl::StrCat(what, ": ", result.status().message()));
  }
  return result->seconds;
}

absl::StatusOr<std::vector<SweepRow>> RunSweep(client::SamplerClient& client,
                                               const SweepOptions& options,
                                               const Evaluator& evaluator,
                                               const BatchStats& reference) {
  std::error_code ec;
  fs::create_directories(options.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", options.out_dir));
  std::vector<SweepRow> rows;
  if (!options.real_data.empty()) {
    ASSIGN_OR_RETURN(BatchStats real, LoadBatch(evaluator, options.real_data, options.real_split,
                                                options.num_samples));
    ASSIGN_OR_RETURN(Scores scores, Score(evaluator, reference, real));
    rows.push_back({"real", options.real_split, 0, 0, std::move(scores)});
  }
  for (const SamplerPoint& point : options.samplers) {
    for (double scale : options.scales) {
      const std::string path = PointFile(options, point, scale);
      double seconds = 0;
      if (ExistingImages(path) != options.num_samples) {
        ASSIGN_OR_RETURN(seconds, DrawSamples(client, options, point, scale, path));
        RETURN_IF_ERROR(WriteSeconds(path, seconds));
      } else {
        seconds = ReadSeconds(path);
        std::cerr << "[sweep] " << path << " is complete: scoring it again\n";
      }
      ASSIGN_OR_RETURN(BatchStats samples, LoadBatch(evaluator, path));
      ASSIGN_OR_RETURN(Scores scores, Score(evaluator, reference, samples));
      std::cerr << absl::StrFormat(
          "[sweep] %s:%s scale %g: FID %.2f, precision %.3f, recall %.3f, IS %.2f, agreement "
          "%.3f\n",
          point.sampler, point.steps, scale, scores.fid, scores.precision, scores.recall,
          scores.inception_score, scores.agreement.value_or(std::nan("")));
      rows.push_back({point.sampler, point.steps, scale, seconds, std::move(scores)});
      RETURN_IF_ERROR(WriteTables(options.out_dir, rows));
    }
  }
  return rows;
}

}  // namespace gd::eval
