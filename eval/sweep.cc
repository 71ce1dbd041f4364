#include "eval/sweep.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/io/formats/formats.h"
#include "core/io/npy.h"
#include "eval/status_macros.h"

namespace gd::eval {
namespace {

namespace fs = std::filesystem;
namespace v1 = guided_diffusion::v1;

// A request refused for load (UNAVAILABLE, RESOURCE_EXHAUSTED) is tried this many times in all,
// waiting 1, 2, 4, ... seconds between tries.
constexpr int kMaxTries = 5;

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

absl::StatusOr<v1::SampleResponse> SampleWithRetries(client::SamplerClient& client,
                                                     const v1::SampleRequest& request) {
  absl::StatusOr<v1::SampleResponse> response;
  for (int attempt = 0; attempt < kMaxTries; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::seconds(1 << (attempt - 1)));
    response = client.Sample(request);
    if (response.ok() || (!absl::IsUnavailable(response.status()) &&
                          !absl::IsResourceExhausted(response.status()))) {
      return response;
    }
  }
  return response;
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
  ASSIGN_OR_RETURN(v1::ModelInfo info, client.GetModel(options.model));
  ASSIGN_OR_RETURN(v1::SampleRequest base, BaseRequest(options, point, scale));
  const int64_t per_request = std::max<int64_t>(1, info.max_images_per_request());
  const int64_t num_classes = std::max<int64_t>(1, info.num_classes());
  const int64_t image_bytes = int64_t{info.image_size()} * info.image_size() * info.channels();
  const int64_t requests = (options.num_samples + per_request - 1) / per_request;

  std::string pixels(static_cast<size_t>(options.num_samples * image_bytes), '\0');
  std::atomic<int64_t> next{0}, done_images{0};
  std::mutex mu;
  absl::Status first_error;
  const auto started = std::chrono::steady_clock::now();
  auto work = [&] {
    for (int64_t r = next++; r < requests; r = next++) {
      const int64_t first = r * per_request;
      const int64_t count = std::min(per_request, options.num_samples - first);
      v1::SampleRequest request = base;
      request.set_first_image_index(static_cast<uint64_t>(first));
      for (int64_t i = first; i < first + count; ++i) request.add_labels(i % num_classes);
      auto response = SampleWithRetries(client, request);
      absl::StatusOr<formats::Array> images =
          response.ok() ? client::TensorToArray(response->images_uint8(), "images_uint8")
                        : absl::StatusOr<formats::Array>(response.status());
      std::lock_guard<std::mutex> lock(mu);
      if (images.ok() && static_cast<int64_t>(images->data.size()) != count * image_bytes) {
        images = absl::InternalError(
            absl::StrFormat("the server returned %d bytes of images for %d images of %d bytes",
                            images->data.size(), count, image_bytes));
      }
      if (!images.ok()) {
        if (first_error.ok()) first_error = images.status();
        next = requests;  // stop handing out work
        return;
      }
      std::copy(images->data.begin(), images->data.end(),
                pixels.begin() + static_cast<std::ptrdiff_t>(first * image_bytes));
      const int64_t so_far = done_images += count;
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      std::cerr << absl::StrFormat("\r[sweep] %s:%s scale %g: %d/%d images, %.2f images/s   ",
                                   point.sampler, point.steps, scale, so_far, options.num_samples,
                                   so_far / std::max(seconds, 1e-9))
                << std::flush;
    }
  };
  std::vector<std::thread> threads;
  for (int64_t t = 0; t < std::max<int64_t>(1, options.concurrency); ++t)
    threads.emplace_back(work);
  for (auto& t : threads) t.join();
  std::cerr << "\n";
  if (!first_error.ok()) {
    return absl::Status(first_error.code(),
                        absl::StrCat(point.sampler, ":", point.steps, " at scale ", scale, ": ",
                                     first_error.message()));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  formats::Array images{
      formats::DType::kUInt8,
      {options.num_samples, info.image_size(), info.image_size(), info.channels()},
      std::move(pixels)};
  formats::Array labels{formats::DType::kInt64, {options.num_samples}, {}};
  for (int64_t i = 0; i < options.num_samples; ++i) {
    const int64_t label = i % num_classes;
    labels.data.append(reinterpret_cast<const char*>(&label), sizeof(label));
  }
  RETURN_IF_ERROR(formats::WriteNpz(path, {{"arr_0", std::move(images)}, {"arr_1", labels}}));
  return seconds;
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
