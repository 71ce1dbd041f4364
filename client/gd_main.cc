// gd: the command-line client of the guided-diffusion Sampler service.
//
//   gd sample --server HOST:PORT --labels 1,2,3 --out grid.png --npz samples.npz
//   gd sample --num_samples 5000 --balanced_labels --concurrency 4 --npz samples.npz
//   gd stream --server HOST:PORT --labels 7 --every 10 --dump_dir steps/
//   gd stream --server HOST:PORT --labels 1,2 --strip strip.png --gif trajectory.gif
//   gd view --server HOST:PORT [--listen 127.0.0.1:8080]
//   gd models --server HOST:PORT
//   gd health --server HOST:PORT
//
// Everything numeric happens on the server; this program validates flags before calling (so a
// typo never costs a sampling run), runs `gd sample` through the client library's BulkSample
// (requests of at most K images in flight side by side, retries, resumable: bulk_sample.h), turns
// results into files (outputs.h, trajectory.h), draws progress on stderr (progress.h) and serves
// the browser viewer (view_server.h). Which command reads which flag, and the help texts:
// cli_commands.h. Exit status: 0 on success, 1 when a call or a file write fails, 2 for bad flags.
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/bulk_sample.h"
#include "client/cli_commands.h"
#include "client/gd_client.h"
#include "client/http_server.h"
#include "client/models_table.h"
#include "client/outputs.h"
#include "client/progress.h"
#include "client/run_state.h"
#include "client/sampler_settings.h"
#include "client/trajectory.h"
#include "client/view_server.h"
#include "core/io/formats/formats.h"
#include "core/status_macros.h"

// ---- Connection (every command) ----
ABSL_FLAG(std::string, server, "localhost:50051",
          "Server address: HOST:PORT, or a gRPC target URI such as dns:///sampler.ns.svc:50051 "
          "(see --load_balancing_policy).");
ABSL_FLAG(bool, tls, false, "Connect with TLS (the server's certificate is verified).");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM file of the CA roots that sign the server's certificate (default: the system's "
          "roots). Needs --tls.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM client certificate chain for mutual TLS (with --tls_key). Needs --tls.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert. Needs --tls.");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name to verify the server's certificate against instead of the host in --server. "
          "Needs --tls.");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding a bearer token, sent as 'authorization: Bearer <token>' on every call.");
ABSL_FLAG(double, timeout_s, 0,
          "Deadline of sample/stream calls in seconds; 0 = none. models/health always use at "
          "most 10 s.");
ABSL_FLAG(std::string, load_balancing_policy, "",
          "gRPC load balancing policy, e.g. round_robin to spread calls over every replica a "
          "dns:/// target resolves to. Default: gRPC's (pick_first).");

// ---- What to sample (sample, stream; --model also for models) ----
ABSL_FLAG(std::string, model, "",
          "Model name (see `gd models`); empty = the server's default model. With `gd models`, "
          "shows that model only.");
ABSL_FLAG(std::vector<std::string>, labels, {},
          "Comma-separated class labels, one image per label, e.g. 1,2,3. Required for guidance "
          "and class-conditional models.");
ABSL_FLAG(uint32_t, num_samples, 0,
          "Image count: of unlabelled images (unconditional models without guidance), or with "
          "--balanced_labels / --random_labels. With --labels it must be 0 or the label count. "
          "gd sample splits it into requests of --images_per_request.");
ABSL_FLAG(bool, balanced_labels, false,
          "Label the --num_samples images 0, 1, ..., C-1, 0, 1, ... (C = the model's classes).");
ABSL_FLAG(bool, random_labels, false,
          "Label the --num_samples images with random classes, drawn from --seed (the same seed "
          "gives the same labels).");
ABSL_FLAG(double, classifier_scale, 0,
          "Classifier guidance scale s >= 0 (the paper's classifier scale); 0 = no guidance.");
ABSL_FLAG(uint64_t, seed, 0,
          "Seed of the run's randomness; image i draws from its own stream of (seed, i), whatever "
          "the requests it is split into.");
ABSL_FLAG(std::string, noise, "",
          "Starting noise x_T: .npy float32 (or float16, converted) [N, C, H, W], N = image "
          "count. With --sampler ddim --eta 0 the result is fully determined.");

// ---- Sampler (sample, stream) ----
ABSL_FLAG(std::string, sampler, "ddpm",
          "Reverse process: ddpm, ddim or dpm++ (DPM-Solver++, 10-20 steps with --steps).");
ABSL_FLAG(double, eta, 0, "DDIM noise scale in [0, 1] (0 = deterministic); ddim only.");
ABSL_FLAG(std::string, timestep_respacing, "",
          "ddpm and ddim: steps to run, as the reference's --timestep_respacing: 250 (evenly "
          "spaced), ddim25 (DDIM stride), 10,20,30 (steps per equal section); empty = every step.");
ABSL_FLAG(uint32_t, steps, 0, "dpm++ only, required: model calls, e.g. 15.");
ABSL_FLAG(uint32_t, solver_order, 0,
          "dpm++ only: 1, 2 or 3 (1 = DDIM's update, 2 = the usual 2M); 0 = the server's (2).");
ABSL_FLAG(std::string, skip_type, "",
          "dpm++ only: the time grid, logSNR, time_uniform or time_quadratic; empty = logSNR.");
ABSL_FLAG(double, dynamic_thresholding_ratio, 0,
          "Any sampler: clamp each predicted x_0 to its R-quantile of |x_0| (Imagen's dynamic "
          "thresholding), R in (0, 1], e.g. 0.995; 0 = off (static clipping).");
ABSL_FLAG(std::optional<bool>, clip_denoised, std::nullopt,
          "true or false: clip the predicted x_0 to [-1, 1] at every step (server default: true).");

// ---- Many images (sample) ----
ABSL_FLAG(uint32_t, images_per_request, 0,
          "Images per request; 0 = the model's max_images_per_request (see gd models).");
ABSL_FLAG(int32_t, concurrency, 2, "Requests in flight at once, 1 to 64.");
ABSL_FLAG(int32_t, max_retries, 5,
          "Retries of a request refused with UNAVAILABLE or RESOURCE_EXHAUSTED (waiting "
          "--retry_backoff_s, doubling up to 30 s), 0 to 100; other errors end the run at once.");
ABSL_FLAG(double, retry_backoff_s, 1, "Wait before a request's first retry, 0 to 3600 seconds.");
ABSL_FLAG(bool, resume, false,
          "Continue an interrupted run with the same flags: the images finished are kept in "
          "NPZ.parts/ beside --npz, and only the missing ones are sampled.");

// ---- Outputs (sample, stream) ----
ABSL_FLAG(std::string, out, "",
          "Write the images as one PNG grid to this file, scaled up and with class names (see "
          "--min_tile_px, --captions).");
ABSL_FLAG(std::string, npz, "",
          "Write the reference's .npz: arr_0 uint8 [N, H, W, C], arr_1 int64 labels [N]. gd sample "
          "keeps finished requests in NPZ.parts/ until the end (see --resume).");
ABSL_FLAG(std::string, tensor_out, "",
          "Write the final samples as .npy float32 [N, C, H, W] in [-1, 1].");
ABSL_FLAG(int32_t, columns, 0, "Images per row of the --out grid; 0 = min(N, 10).");
ABSL_FLAG(int32_t, min_tile_px, 128,
          "Scale the --out grid's images up (nearest neighbour, by a whole factor) until each is "
          "at least this many pixels wide, 0 to 4096; 0 or 1 = the model's size.");
ABSL_FLAG(bool, captions, true,
          "Write each image's class name under it in the --out grid, when the model has class "
          "names (once under each column when a column holds one class).");

// ---- Streaming (stream) ----
ABSL_FLAG(uint32_t, every, 1, "Send a step event every K steps (the last step always comes).");
ABSL_FLAG(std::string, dump_dir, "",
          "Write each streamed step's x_t and pred_xstart as DIR/x_t_0000.npy, "
          "DIR/pred_xstart_0000.npy, ... (float32 [N, C, H, W], numbered by step, 0 = first "
          "denoising step), and DIR/steps.tsv: each step's timestep and continuous timestep. The "
          "directory is created if missing.");
ABSL_FLAG(std::string, strip, "",
          "Write a denoising strip PNG: pred_xstart at --strip_columns evenly spaced steps (the "
          "first and the last included), one row per image.");
ABSL_FLAG(uint32_t, strip_columns, 8, "Steps (columns) of the --strip, 1 to 1000.");
ABSL_FLAG(std::string, gif, "",
          "Write an animated GIF of x_t: one frame per streamed step (a grid of the images, "
          "--columns per row), the final samples held 1.5 s.");
ABSL_FLAG(int32_t, gif_frame_ms, 100, "Milliseconds per --gif frame, 10 to 65000.");

// ---- Viewer (view) ----
ABSL_FLAG(std::string, listen, "127.0.0.1:8080",
          "Address of the web page: HOST:PORT, HOST an IPv4 address or localhost; port 0 = any "
          "free port. A non-loopback address lets others sample through this process.");

// ---- Health (health) ----
ABSL_FLAG(std::string, service, "",
          "Service to check, e.g. guided_diffusion.v1.Sampler; empty = the whole server.");

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kMaxRetriesFlag = 100;
constexpr double kMaxRetryBackoffS = 3600;
constexpr int32_t kMaxMinTilePx = 4096;

// An error found before any call: printed like the others, but exits with kExitUsage.
absl::Status UsageError(absl::string_view message) { return absl::InvalidArgumentError(message); }

// ---- Connection ---------------------------------------------------------------------------------

absl::StatusOr<ClientOptions> OptionsFromFlags() {
  ClientOptions options;
  options.target = absl::GetFlag(FLAGS_server);
  options.tls = absl::GetFlag(FLAGS_tls);
  options.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_server_name_override = absl::GetFlag(FLAGS_tls_server_name);
  options.load_balancing_policy = absl::GetFlag(FLAGS_load_balancing_policy);
  if (options.target.empty()) return UsageError("--server is empty: give HOST:PORT");
  if (!options.tls) {
    for (const char* name : {"tls_ca", "tls_cert", "tls_key", "tls_server_name"}) {
      if (FlagIsSet(name)) return UsageError(absl::StrCat("--", name, " needs --tls"));
    }
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return UsageError("--tls_cert and --tls_key go together (mutual TLS)");
  }
  const double timeout_s = absl::GetFlag(FLAGS_timeout_s);
  if (!(timeout_s >= 0) || timeout_s > 1e9) {
    return UsageError(absl::StrCat("--timeout_s = ", timeout_s, " must be >= 0 (0 = none)"));
  }
  options.timeout_ms = static_cast<int64_t>(std::llround(timeout_s * 1000));
  if (timeout_s > 0 && options.timeout_ms == 0) options.timeout_ms = 1;
  const std::string token_file = absl::GetFlag(FLAGS_auth_token_file);
  if (!token_file.empty()) {
    absl::StatusOr<std::string> token = formats::ReadFileBytes(token_file);
    if (!token.ok()) {
      return UsageError(absl::StrCat("--auth_token_file: ", token.status().message()));
    }
    options.auth_token = std::string(absl::StripAsciiWhitespace(*token));
    if (options.auth_token.empty()) {
      return UsageError(absl::StrCat("--auth_token_file \"", token_file, "\" is empty"));
    }
  }
  return options;
}

// ---- What to sample -----------------------------------------------------------------------------

// The images a sample or stream command asks for, with the settings they share.
struct ImagesToSample {
  v1::SampleRequest base;  // model, classifier_scale, seed, sampler settings
  int64_t count = 0;
  LabelChoice label_choice = LabelChoice::kGiven;
  std::vector<int64_t> labels;  // kGiven: one per image, or none
  std::optional<formats::Array> noise;

  bool labelled() const { return label_choice != LabelChoice::kGiven || !labels.empty(); }
};

absl::StatusOr<std::vector<int64_t>> ParseLabels(const std::vector<std::string>& texts) {
  std::vector<int64_t> labels;
  for (size_t i = 0; i < texts.size(); ++i) {
    int64_t label = 0;
    if (!absl::SimpleAtoi(texts[i], &label) || label < 0) {
      return UsageError(absl::StrCat("--labels: labels[", i, "] = \"", texts[i],
                                     "\" is not a class number >= 0"));
    }
    labels.push_back(label);
  }
  return labels;
}

// The directory `path` would be written in must exist: found out before sampling, not after.
absl::Status CheckOutputDirectory(absl::string_view flag, const std::string& path) {
  if (path.empty()) return absl::OkStatus();
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(slash, 1));
  struct stat info;
  if (stat(dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    return UsageError(
        absl::StrCat("--", flag, " \"", path, "\": directory \"", dir, "\" does not exist"));
  }
  return absl::OkStatus();
}

// --noise as float32 [image_count, C, H, W].
absl::StatusOr<formats::Array> ReadNoise(const std::string& path, int64_t image_count) {
  absl::StatusOr<std::string> bytes = formats::ReadFileBytes(path);
  if (!bytes.ok()) return UsageError(absl::StrCat("--noise: ", bytes.status().message()));
  absl::StatusOr<formats::Array> noise = formats::ParseNpy(*bytes, path);
  if (noise.ok()) noise = ToFloat32(*std::move(noise), path);
  if (!noise.ok()) return UsageError(absl::StrCat("--noise: ", noise.status().message()));
  if (noise->shape.size() != 4 || noise->shape[0] != image_count) {
    return UsageError(absl::StrCat("--noise \"", path, "\" has shape [",
                                   absl::StrJoin(noise->shape, ", "), "]; expected [", image_count,
                                   ", C, H, W] for ", image_count, " images"));
  }
  return noise;
}

// --labels, --num_samples, --balanced_labels, --random_labels: how many images, labelled how.
absl::Status CountAndLabelsFromFlags(ImagesToSample& images) {
  ASSIGN_OR_RETURN(std::vector<int64_t> labels, ParseLabels(absl::GetFlag(FLAGS_labels)));
  const uint32_t num_samples = absl::GetFlag(FLAGS_num_samples);
  const bool balanced = absl::GetFlag(FLAGS_balanced_labels);
  const bool random = absl::GetFlag(FLAGS_random_labels);
  if (int{!labels.empty()} + int{balanced} + int{random} > 1) {
    return UsageError("give one of --labels, --balanced_labels and --random_labels");
  }
  if ((balanced || random) && num_samples == 0) {
    return UsageError(absl::StrCat("--", balanced ? "balanced" : "random",
                                   "_labels needs --num_samples N: how many images"));
  }
  if (labels.empty() && num_samples == 0) {
    return UsageError(
        "say how many images: --labels 1,2,3 (one per image), or --num_samples N (with "
        "--balanced_labels or --random_labels for labelled images)");
  }
  if (!labels.empty() && num_samples != 0 && num_samples != labels.size()) {
    return UsageError(absl::StrCat("--num_samples = ", num_samples, " but --labels has ",
                                   labels.size(), " labels (give one, or make them agree)"));
  }
  images.count = labels.empty() ? num_samples : static_cast<int64_t>(labels.size());
  images.label_choice =
      balanced ? LabelChoice::kBalanced : (random ? LabelChoice::kRandom : LabelChoice::kGiven);
  images.labels = std::move(labels);
  return absl::OkStatus();
}

absl::StatusOr<ImagesToSample> ImagesFromFlags() {
  ImagesToSample images;
  RETURN_IF_ERROR(CountAndLabelsFromFlags(images));
  v1::SampleRequest& base = images.base;
  base.set_model(absl::GetFlag(FLAGS_model));
  const double scale = absl::GetFlag(FLAGS_classifier_scale);
  if (!std::isfinite(scale) || scale < 0) {
    return UsageError(absl::StrCat("--classifier_scale = ", scale, " must be >= 0"));
  }
  base.set_classifier_scale(scale);
  base.set_seed(absl::GetFlag(FLAGS_seed));
  SamplerSettings sampler;
  sampler.sampler = absl::GetFlag(FLAGS_sampler);
  sampler.eta = absl::GetFlag(FLAGS_eta);
  sampler.timestep_respacing = absl::GetFlag(FLAGS_timestep_respacing);
  sampler.steps = absl::GetFlag(FLAGS_steps);
  sampler.solver_order = absl::GetFlag(FLAGS_solver_order);
  sampler.skip_type = absl::GetFlag(FLAGS_skip_type);
  sampler.dynamic_thresholding_ratio = absl::GetFlag(FLAGS_dynamic_thresholding_ratio);
  sampler.clip_denoised = absl::GetFlag(FLAGS_clip_denoised);
  RETURN_IF_ERROR(ApplySamplerSettings(sampler, base));
  if (const std::string path = absl::GetFlag(FLAGS_noise); !path.empty()) {
    ASSIGN_OR_RETURN(images.noise, ReadNoise(path, images.count));
  }
  return images;
}

// gd stream's single request.
absl::StatusOr<v1::SampleRequest> StreamRequest(const ImagesToSample& images,
                                                const Outputs& outputs) {
  v1::SampleRequest request = images.base;
  request.mutable_labels()->Add(images.labels.begin(), images.labels.end());
  if (images.labels.empty()) request.set_num_samples(static_cast<uint32_t>(images.count));
  if (images.noise.has_value()) {
    absl::StatusOr<v1::Tensor> tensor = ArrayToTensor(*images.noise, "--noise");
    if (!tensor.ok()) return UsageError(tensor.status().message());
    *request.mutable_noise() = *std::move(tensor);
  }
  *request.mutable_output() = WireOutputs(outputs.Kept());
  return request;
}

// gd sample's run: --images_per_request, --concurrency, retries, --resume.
absl::StatusOr<BulkSampleOptions> BulkOptionsFromFlags(ImagesToSample images,
                                                       const Outputs& outputs) {
  BulkSampleOptions options;
  options.base = std::move(images.base);
  options.num_images = images.count;
  options.label_choice = images.label_choice;
  options.labels = std::move(images.labels);
  options.noise = std::move(images.noise);
  options.kept = outputs.Kept();
  options.images_per_request = absl::GetFlag(FLAGS_images_per_request);
  options.concurrency = absl::GetFlag(FLAGS_concurrency);
  if (options.concurrency < 1 || options.concurrency > kMaxConcurrency) {
    return UsageError(absl::StrCat("--concurrency = ", options.concurrency, " is outside [1, ",
                                   kMaxConcurrency, "]"));
  }
  options.retry.max_retries = absl::GetFlag(FLAGS_max_retries);
  if (options.retry.max_retries < 0 || options.retry.max_retries > kMaxRetriesFlag) {
    return UsageError(absl::StrCat("--max_retries = ", options.retry.max_retries,
                                   " is outside [0, ", kMaxRetriesFlag, "]"));
  }
  const double backoff_s = absl::GetFlag(FLAGS_retry_backoff_s);
  if (!(backoff_s >= 0 && backoff_s <= kMaxRetryBackoffS)) {
    return UsageError(absl::StrCat("--retry_backoff_s = ", backoff_s, " is outside [0, ",
                                   kMaxRetryBackoffS, "]"));
  }
  options.retry.initial_backoff_ms = std::llround(backoff_s * 1000);
  options.npz_path = outputs.npz_path;
  options.resume = absl::GetFlag(FLAGS_resume);
  if (options.resume && options.npz_path.empty()) {
    return UsageError(
        "--resume needs --npz: a run keeps its finished images beside it, in NPZ.parts/");
  }
  return options;
}

absl::StatusOr<Outputs> OutputsFromFlags() {
  Outputs outputs;
  outputs.grid_path = absl::GetFlag(FLAGS_out);
  outputs.npz_path = absl::GetFlag(FLAGS_npz);
  outputs.tensor_path = absl::GetFlag(FLAGS_tensor_out);
  outputs.columns = absl::GetFlag(FLAGS_columns);
  outputs.min_tile_px = absl::GetFlag(FLAGS_min_tile_px);
  outputs.captions = absl::GetFlag(FLAGS_captions);
  if (outputs.columns < 0) {
    return UsageError(absl::StrCat("--columns = ", outputs.columns, " must be >= 0 (0 = auto)"));
  }
  if (outputs.min_tile_px < 0 || outputs.min_tile_px > kMaxMinTilePx) {
    return UsageError(absl::StrCat("--min_tile_px = ", outputs.min_tile_px, " is outside [0, ",
                                   kMaxMinTilePx, "]"));
  }
  for (const auto& [flag, path] :
       {std::pair{"out", &outputs.grid_path}, std::pair{"npz", &outputs.npz_path},
        std::pair{"tensor_out", &outputs.tensor_path}}) {
    RETURN_IF_ERROR(CheckOutputDirectory(flag, *path));
  }
  return outputs;
}

// The denoising strip and GIF `gd stream` is asked for.
absl::StatusOr<TrajectoryOptions> TrajectoryFromFlags(const Outputs& outputs) {
  TrajectoryOptions pictures;
  pictures.strip_path = absl::GetFlag(FLAGS_strip);
  pictures.strip_columns = absl::GetFlag(FLAGS_strip_columns);
  pictures.gif_path = absl::GetFlag(FLAGS_gif);
  pictures.gif_frame_ms = absl::GetFlag(FLAGS_gif_frame_ms);
  pictures.gif_columns = outputs.columns;
  if (pictures.strip_path.empty() && FlagIsSet("strip_columns")) {
    return UsageError("--strip_columns needs --strip");
  }
  if (pictures.gif_path.empty() && FlagIsSet("gif_frame_ms")) {
    return UsageError("--gif_frame_ms needs --gif");
  }
  if (pictures.strip_columns < 1 || pictures.strip_columns > 1000) {
    return UsageError(
        absl::StrCat("--strip_columns = ", pictures.strip_columns, " is outside [1, 1000]"));
  }
  if (pictures.gif_frame_ms < 10 || pictures.gif_frame_ms > 65000) {
    return UsageError(
        absl::StrCat("--gif_frame_ms = ", pictures.gif_frame_ms, " is outside [10, 65000]"));
  }
  for (const auto& [flag, path] :
       {std::pair{"strip", &pictures.strip_path}, std::pair{"gif", &pictures.gif_path}}) {
    RETURN_IF_ERROR(CheckOutputDirectory(flag, *path));
  }
  return pictures;
}

absl::Status MakeDumpDir(const std::string& dump_dir) {
  if (dump_dir.empty()) return absl::OkStatus();
  struct stat info;
  if (mkdir(dump_dir.c_str(), 0777) != 0 && errno != EEXIST) {
    return UsageError(absl::StrCat("--dump_dir \"", dump_dir, "\": ", std::strerror(errno)));
  }
  if (stat(dump_dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    return UsageError(absl::StrCat("--dump_dir \"", dump_dir, "\" is not a directory"));
  }
  return absl::OkStatus();
}

// ---- Commands -----------------------------------------------------------------------------------

// " 1x28x28" (C x H x W) of the images kept, or "".
std::string ImageShape(const SampleSet& set) {
  if (set.samples.has_value()) {
    return absl::StrCat(
        " ", absl::StrJoin(set.samples->shape.begin() + 1, set.samples->shape.end(), "x"));
  }
  if (set.images.has_value()) {
    const std::vector<int64_t>& shape = set.images->shape;
    return absl::StrCat(" ", shape[3], "x", shape[1], "x", shape[2]);
  }
  return "";
}

void PrintRunSummary(const BulkResult& result) {
  const int64_t count = result.samples.size();
  const int64_t sampled = count - result.images_resumed;
  std::string line = absl::StrFormat(
      "%d %s%s from \"%s\": %d steps, %d %s in %.2f s (%.2f images/s)", count,
      count == 1 ? "image" : "images", ImageShape(result.samples), result.model.name(),
      result.steps, result.requests, result.requests == 1 ? "request" : "requests", result.seconds,
      result.seconds > 0 ? sampled / result.seconds : 0.0);
  if (result.retries > 0) absl::StrAppend(&line, ", ", result.retries, " retried");
  if (result.images_resumed > 0) absl::StrAppend(&line, ", ", result.images_resumed, " resumed");
  if (result.request_ids.size() == 1) absl::StrAppend(&line, ", request ", result.request_ids[0]);
  absl::PrintF("%s\n", line);
}

absl::Status RunSample(SamplerClient& client, BulkSampleOptions options, const Outputs& outputs,
                       bool labelled) {
  RunProgress progress;
  // On a terminal the bar moves with every step; elsewhere plain Sample calls do.
  options.stream_steps = isatty(fileno(stderr)) == 1;
  absl::StatusOr<BulkResult> result =
      BulkSample(client, options, [&progress](const BulkProgress& now) { progress.Update(now); });
  progress.Clear();
  if (!result.ok()) {
    if (!options.resume && !options.npz_path.empty() &&
        std::filesystem::exists(RunStateDir(options.npz_path))) {
      absl::FPrintF(stderr,
                    "gd: the same command with --resume samples only the images still missing\n");
    }
    return result.status();
  }
  PrintRunSummary(*result);
  std::vector<std::string> class_names;
  if (labelled)
    class_names.assign(result->model.class_names().begin(), result->model.class_names().end());
  return WriteOutputs(result->samples, outputs, class_names, /*npz_written=*/true);
}

void PrintResponseSummary(const v1::SampleResponse& response, const SampleSet& set) {
  const int64_t count = set.size();
  const double images_per_second =
      response.sampling_seconds() > 0 ? count / response.sampling_seconds() : 0;
  absl::PrintF(
      "%d %s%s from \"%s\": %d steps in %.2f s (%.2f images/s), queued %.2f s, request %s\n", count,
      count == 1 ? "image" : "images", ImageShape(set), response.model(), response.steps(),
      response.sampling_seconds(), images_per_second, response.queue_seconds(),
      response.request_id());
}

// The class names for the --out grid's captions, when there is a grid to caption.
absl::StatusOr<std::vector<std::string>> GridClassNames(SamplerClient& client,
                                                        const v1::SampleRequest& request,
                                                        const Outputs& outputs) {
  if (outputs.grid_path.empty() || !outputs.captions || request.labels_size() == 0) {
    return std::vector<std::string>();
  }
  ASSIGN_OR_RETURN(auto model, client.GetModel(request.model()));
  return std::vector<std::string>(model.class_names().begin(), model.class_names().end());
}

absl::Status RunStream(SamplerClient& client, v1::SampleRequest request, const Outputs& outputs,
                       const TrajectoryOptions& picture_options) {
  const std::string dump_dir = absl::GetFlag(FLAGS_dump_dir);
  ASSIGN_OR_RETURN(auto class_names, GridClassNames(client, request, outputs));
  TrajectoryRecorder pictures(picture_options);
  v1::StreamOptions* stream = request.mutable_stream();
  stream->set_every(absl::GetFlag(FLAGS_every));
  stream->set_x_t(!dump_dir.empty() || pictures.needs_x_t());
  stream->set_pred_xstart(!dump_dir.empty() || pictures.needs_pred_xstart());
  // --dump_dir needs the tensors; pictures alone are lighter as the server's PNGs.
  const bool pictures_only = dump_dir.empty() && (stream->x_t() || stream->pred_xstart());
  stream->set_format(pictures_only ? v1::StreamOptions::FORMAT_PNG
                                   : v1::StreamOptions::FORMAT_TENSOR_FLOAT32);
  absl::Status step_status;  // a failed write stops the (possibly long) run
  if (!dump_dir.empty()) step_status = StartStepIndex(dump_dir);
  if (!step_status.ok()) return step_status;

  ProgressBar progress;
  absl::StatusOr<v1::SampleResponse> response =
      client.StreamSample(request, [&](const v1::SampleEvent& event) {
        progress.OnEvent(event);
        if (event.has_step() && !dump_dir.empty()) {
          step_status = DumpStep(event.step(), dump_dir);
        }
        if (step_status.ok()) step_status = pictures.OnEvent(event);
        return step_status.ok();
      });
  progress.Clear();
  if (!step_status.ok()) return step_status;
  if (!response.ok()) return response.status();
  ASSIGN_OR_RETURN(auto set, SampleSetFromResponse(*response, outputs.Kept()));
  PrintResponseSummary(*response, set);
  RETURN_IF_ERROR(WriteOutputs(set, outputs, class_names));
  return pictures.Finish();
}

bool IsLoopback(const std::string& host) { return absl::StartsWith(host, "127."); }

// Serves the viewer until SIGINT or SIGTERM (blocked in every thread by Main, taken here).
absl::Status RunView(SamplerClient& client, const ListenAddress& listen,
                     const sigset_t& stop_signals) {
  ViewServerOptions options;
  options.listen = listen;
  ASSIGN_OR_RETURN(auto server, ViewServer::Start(client, options));
  absl::PrintF("gd view: %s (Sampler at %s); Ctrl-C stops\n", (server)->url(),
               client.options().target);
  std::fflush(stdout);
  if (!IsLoopback(listen.host)) {
    absl::FPrintF(stderr,
                  "gd view: warning: listening on %s: whoever reaches it samples through this "
                  "process and its credentials\n",
                  listen.host);
  }
  // Say at once when the server is not there (the page says it too).
  if (absl::StatusOr<v1::ListModelsResponse> models = client.ListModels(); !models.ok()) {
    absl::FPrintF(stderr, "gd view: warning: %s: %s: %s\n", client.options().target,
                  absl::StatusCodeToString(models.status().code()), models.status().message());
  }
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  absl::FPrintF(stderr, "gd view: %s: stopping\n", strsignal(signal_number));
  server.reset();  // cancels the runs still going
  return absl::OkStatus();
}

absl::Status RunModels(SamplerClient& client) {
  std::vector<v1::ModelInfo> models;
  std::string default_model;
  if (const std::string name = absl::GetFlag(FLAGS_model); !name.empty()) {
    ASSIGN_OR_RETURN(auto model, client.GetModel(name));
    models.push_back(std::move(model));
  } else {
    ASSIGN_OR_RETURN(auto list, client.ListModels());
    models.assign(list.models().begin(), list.models().end());
    default_model = list.default_model();
  }
  absl::PrintF("%s", ModelsTable(models, default_model));
  return absl::OkStatus();
}

// Prints the health status; true only for SERVING.
absl::StatusOr<bool> RunHealth(SamplerClient& client) {
  ASSIGN_OR_RETURN(auto health, client.Health(absl::GetFlag(FLAGS_service)));
  absl::PrintF("%s\n", health);
  return health == "SERVING";
}

// What the command line asks for, checked as far as possible before any call.
struct Invocation {
  ClientOptions options;
  BulkSampleOptions run;       // sample
  bool labelled = false;       // sample: the images have labels (the grid gets class names)
  v1::SampleRequest request;   // stream
  Outputs outputs;             // sample, stream
  TrajectoryOptions pictures;  // stream
  ListenAddress listen;        // view
};

// The sample and stream parts of the invocation.
absl::Status SamplingFromFlags(Command command, Invocation& invocation) {
  ASSIGN_OR_RETURN(invocation.outputs, OutputsFromFlags());
  ASSIGN_OR_RETURN(auto images, ImagesFromFlags());
  invocation.labelled = images.labelled();
  if (command == Command::kSample) {
    ASSIGN_OR_RETURN(invocation.run, BulkOptionsFromFlags(std::move(images), invocation.outputs));
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(invocation.request, StreamRequest(images, invocation.outputs));
  ASSIGN_OR_RETURN(invocation.pictures, TrajectoryFromFlags(invocation.outputs));
  return MakeDumpDir(absl::GetFlag(FLAGS_dump_dir));
}

absl::StatusOr<Invocation> InvocationFromFlags(const CommandInfo& command) {
  RETURN_IF_ERROR(CheckFlagsApply(command));
  Invocation invocation;
  ASSIGN_OR_RETURN(invocation.options, OptionsFromFlags());
  if (command.command == Command::kSample || command.command == Command::kStream) {
    if (absl::Status status = SamplingFromFlags(command.command, invocation); !status.ok()) {
      return status;
    }
  }
  if (command.command == Command::kView) {
    absl::StatusOr<ListenAddress> listen = ParseListenAddress(absl::GetFlag(FLAGS_listen));
    if (!listen.ok()) return UsageError(absl::StrCat("--listen: ", listen.status().message()));
    invocation.listen = *listen;
  }
  return invocation;
}

void PrintError(const absl::Status& status) {
  absl::FPrintF(stderr, "gd: %s: %s\n", absl::StatusCodeToString(status.code()), status.message());
}

// Runs the command; its exit status.
int RunCommand(const CommandInfo& command, Invocation& invocation, const sigset_t& stop_signals) {
  absl::StatusOr<std::unique_ptr<SamplerClient>> client = SamplerClient::Create(invocation.options);
  if (!client.ok()) {
    PrintError(client.status());
    return kExitFailure;
  }
  absl::Status status;
  bool success = true;
  switch (command.command) {
    case Command::kSample:
      status =
          RunSample(**client, std::move(invocation.run), invocation.outputs, invocation.labelled);
      break;
    case Command::kStream:
      status = RunStream(**client, std::move(invocation.request), invocation.outputs,
                         invocation.pictures);
      break;
    case Command::kView:
      status = RunView(**client, invocation.listen, stop_signals);
      break;
    case Command::kModels:
      status = RunModels(**client);
      break;
    case Command::kHealth: {
      absl::StatusOr<bool> serving = RunHealth(**client);
      status = serving.status();
      success = serving.value_or(false);
      break;
    }
  }
  if (!status.ok()) {
    PrintError(status);
    return kExitFailure;
  }
  return success ? 0 : kExitFailure;
}

int Main(const std::vector<char*>& positional) {
  if (positional.size() < 2) {
    absl::FPrintF(stderr,
                  "usage: gd <sample|stream|view|models|health> [flags]  (gd --help: more)\n");
    return kExitUsage;
  }
  const CommandInfo* command = FindCommand(positional[1]);
  if (command == nullptr) {
    PrintError(UsageError(absl::StrCat("unknown command \"", positional[1],
                                       "\" (expected sample, stream, view, models or health)")));
    return kExitUsage;
  }
  if (positional.size() > 2) {
    PrintError(UsageError(absl::StrCat("unexpected argument \"", positional[2], "\"")));
    return kExitUsage;
  }
  absl::StatusOr<Invocation> invocation = InvocationFromFlags(*command);
  if (!invocation.ok()) {
    PrintError(invocation.status());
    return kExitUsage;
  }
  // `gd view` takes SIGINT/SIGTERM with sigwait: block them before gRPC starts any thread, so
  // that every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (command->command == Command::kView) pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  return RunCommand(*command, *invocation, stop_signals);
}

}  // namespace
}  // namespace gd::client

int main(int argc, char** argv) {
  // Our own help: per command, grouped, without the source file's build path (cli_commands.h).
  if (const std::string help = gd::client::HelpRequested(argc, argv); !help.empty()) {
    std::fputs(help.c_str(), stdout);
    return 0;
  }
  absl::SetProgramUsageMessage("the command-line client of the guided-diffusion sampling service");
  absl::FlagsUsageConfig usage_config;
  usage_config.version_string = [] { return std::string("gd 0.1.0\n"); };
  absl::SetFlagsUsageConfig(usage_config);
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  return gd::client::Main(positional);
}
