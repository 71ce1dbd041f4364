// gd: the command-line client of the guided-diffusion Sampler service.
//
//   gd sample --server HOST:PORT --labels 1,2,3 --out grid.png --npz samples.npz
//   gd stream --server HOST:PORT --labels 7 --every 10 --dump_dir steps/
//   gd models --server HOST:PORT
//   gd health --server HOST:PORT
//
// Everything numeric happens on the server; this program validates flags before calling (so a
// typo never costs a sampling run), turns responses into files (PNG grid, the reference's .npz
// layout, raw .npy tensors) and draws a progress bar when stderr is a terminal. Exit status: 0 on
// success, 1 when a call or a file write fails, 2 for bad flags.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/gd_client.h"
#include "core/io/formats/formats.h"

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
          "Image count for unlabelled requests (unconditional models without guidance). With "
          "--labels it must be 0 or the label count.");
ABSL_FLAG(double, classifier_scale, 0,
          "Classifier guidance scale s >= 0 (the paper's classifier scale); 0 = no guidance.");
ABSL_FLAG(std::string, sampler, "ddpm", "Reverse process: ddpm or ddim.");
ABSL_FLAG(double, eta, 0, "DDIM noise scale in [0, 1] (0 = deterministic). Must be 0 for ddpm.");
ABSL_FLAG(std::string, timestep_respacing, "",
          "Steps to run, as the reference's --timestep_respacing: 250 (evenly spaced), ddim25 "
          "(DDIM stride), 10,20,30 (steps per equal section); empty = every step.");
ABSL_FLAG(uint64_t, seed, 0,
          "Seed of the request's randomness; image i draws from its own stream of (seed, i).");
ABSL_FLAG(std::optional<bool>, clip_denoised, std::nullopt,
          "true or false: clip the predicted x_0 to [-1, 1] at every step (server default: true).");
ABSL_FLAG(std::string, noise, "",
          "Starting noise x_T: .npy float32 (or float16, converted) [N, C, H, W], N = image "
          "count. With --sampler ddim --eta 0 the result is fully determined.");

// ---- Outputs (sample, stream) ----
ABSL_FLAG(std::string, out, "", "Write the images as one PNG grid to this file.");
ABSL_FLAG(std::string, npz, "",
          "Write the reference's .npz: arr_0 uint8 [N, H, W, C], arr_1 int64 labels [N].");
ABSL_FLAG(std::string, tensor_out, "",
          "Write the final samples as .npy float32 [N, C, H, W] in [-1, 1].");
ABSL_FLAG(int32_t, columns, 0, "Images per row of the --out grid; 0 = min(N, 10).");

// ---- Streaming (stream) ----
ABSL_FLAG(uint32_t, every, 1, "Send a step event every K steps (the last step always comes).");
ABSL_FLAG(std::string, dump_dir, "",
          "Write each streamed step's x_t and pred_xstart as DIR/x_t_0000.npy, "
          "DIR/pred_xstart_0000.npy, ... (float32 [N, C, H, W], numbered by step, 0 = first "
          "denoising step). The directory is created if missing.");

// ---- Health (health) ----
ABSL_FLAG(std::string, service, "",
          "Service to check, e.g. guided_diffusion.v1.Sampler; empty = the whole server.");

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int64_t kMaxGridColumns = 10;

constexpr char kUsage[] =
    "the command-line client of the guided-diffusion sampling service.\n"
    "\n"
    "usage: gd <command> [flags]\n"
    "  sample  sample images of the given classes:\n"
    "            gd sample --server HOST:PORT --labels 1,2,3 [--classifier_scale 4]\n"
    "              [--sampler ddim --timestep_respacing ddim25] [--out grid.png]\n"
    "              [--npz samples.npz] [--tensor_out samples.npy]\n"
    "  stream  the same, streaming every (--every K-th) step: [--dump_dir DIR]\n"
    "  models  list the server's models (--model M: one model)\n"
    "  health  the server's health (--service S); exit status 0 only when SERVING\n"
    "\n"
    "A progress bar is drawn on stderr when it is a terminal. Exit status: 0 success, 1 a failed\n"
    "call or write, 2 bad flags.";

enum class Command { kSample, kStream, kModels, kHealth };

constexpr std::pair<absl::string_view, Command> kCommands[] = {{"sample", Command::kSample},
                                                               {"stream", Command::kStream},
                                                               {"models", Command::kModels},
                                                               {"health", Command::kHealth}};

constexpr unsigned Bit(Command command) { return 1u << static_cast<unsigned>(command); }
constexpr unsigned kSampling = Bit(Command::kSample) | Bit(Command::kStream);

// The flags beyond the connection flags, and the commands that read them. Giving one of them to
// another command is a mistake the user should hear about rather than have silently ignored.
struct FlagUse {
  absl::string_view flag;
  unsigned commands;
};
constexpr FlagUse kCommandFlags[] = {
    {"model", kSampling | Bit(Command::kModels)},
    {"labels", kSampling},
    {"num_samples", kSampling},
    {"classifier_scale", kSampling},
    {"sampler", kSampling},
    {"eta", kSampling},
    {"timestep_respacing", kSampling},
    {"seed", kSampling},
    {"clip_denoised", kSampling},
    {"noise", kSampling},
    {"out", kSampling},
    {"npz", kSampling},
    {"tensor_out", kSampling},
    {"columns", kSampling},
    {"every", Bit(Command::kStream)},
    {"dump_dir", Bit(Command::kStream)},
    {"service", Bit(Command::kHealth)},
};

// An error found before any call: printed like the others, but exits with kExitUsage.
absl::Status UsageError(absl::string_view message) { return absl::InvalidArgumentError(message); }

// Whether the flag was given a value other than its default.
bool FlagIsSet(absl::string_view name) {
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  return flag != nullptr && flag->CurrentValue() != flag->DefaultValue();
}

absl::Status CheckFlagsApply(absl::string_view command_name, Command command) {
  for (const FlagUse& use : kCommandFlags) {
    if ((use.commands & Bit(command)) == 0 && FlagIsSet(use.flag)) {
      return UsageError(absl::StrCat("--", use.flag, " does not apply to `gd ", command_name, "`"));
    }
  }
  return absl::OkStatus();
}

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

// ---- Request ------------------------------------------------------------------------------------

// Where the final images go; empty paths are not written.
struct Outputs {
  std::string grid_path;
  std::string npz_path;
  std::string tensor_path;
  int64_t columns = 0;  // 0 = min(N, kMaxGridColumns)
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

bool IsPositiveInteger(absl::string_view text) {
  uint32_t value = 0;
  return !text.empty() && absl::ascii_isdigit(static_cast<unsigned char>(text[0])) &&
         absl::SimpleAtoi(text, &value) && value > 0;
}

// The reference's respacing forms: "", "250", "ddim25", "10,20,30".
absl::Status CheckRespacing(const std::string& respacing) {
  if (respacing.empty()) return absl::OkStatus();
  bool valid = true;
  if (absl::StartsWith(respacing, "ddim")) {
    valid = IsPositiveInteger(absl::string_view(respacing).substr(4));
  } else {
    for (absl::string_view section : absl::StrSplit(respacing, ',')) {
      valid &= IsPositiveInteger(section);
    }
  }
  if (valid) return absl::OkStatus();
  return UsageError(absl::StrCat("--timestep_respacing = \"", respacing,
                                 "\" is not N, ddimN or N1,N2,... (e.g. 250, ddim25, 10,20,30)"));
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

absl::StatusOr<v1::Tensor> ReadNoise(const std::string& path, size_t image_count) {
  absl::StatusOr<std::string> bytes = formats::ReadFileBytes(path);
  if (!bytes.ok()) return UsageError(absl::StrCat("--noise: ", bytes.status().message()));
  absl::StatusOr<formats::Array> noise = formats::ParseNpy(*bytes, path);
  if (noise.ok()) noise = ToFloat32(*std::move(noise), path);
  if (!noise.ok()) return UsageError(absl::StrCat("--noise: ", noise.status().message()));
  if (noise->shape.size() != 4 || noise->shape[0] != static_cast<int64_t>(image_count)) {
    return UsageError(absl::StrCat("--noise \"", path, "\" has shape [",
                                   absl::StrJoin(noise->shape, ", "), "]; expected [", image_count,
                                   ", C, H, W] for ", image_count, " images"));
  }
  absl::StatusOr<v1::Tensor> tensor = ArrayToTensor(*noise, path);
  if (!tensor.ok()) return UsageError(absl::StrCat("--noise: ", tensor.status().message()));
  return tensor;
}

// The SampleRequest the flags describe, checked as far as the client can without the model.
absl::StatusOr<v1::SampleRequest> RequestFromFlags(const Outputs& outputs) {
  v1::SampleRequest request;
  request.set_model(absl::GetFlag(FLAGS_model));
  absl::StatusOr<std::vector<int64_t>> labels = ParseLabels(absl::GetFlag(FLAGS_labels));
  if (!labels.ok()) return labels.status();
  request.mutable_labels()->Add(labels->begin(), labels->end());
  const uint32_t num_samples = absl::GetFlag(FLAGS_num_samples);
  if (labels->empty() && num_samples == 0) {
    return UsageError("say how many images: --labels 1,2,3 (one per image) or --num_samples N");
  }
  if (!labels->empty() && num_samples != 0 && num_samples != labels->size()) {
    return UsageError(absl::StrCat("--num_samples = ", num_samples, " but --labels has ",
                                   labels->size(), " labels (give one, or make them agree)"));
  }
  request.set_num_samples(num_samples);
  const size_t image_count = labels->empty() ? num_samples : labels->size();

  const double scale = absl::GetFlag(FLAGS_classifier_scale);
  if (!std::isfinite(scale) || scale < 0) {
    return UsageError(absl::StrCat("--classifier_scale = ", scale, " must be >= 0"));
  }
  request.set_classifier_scale(scale);
  const std::string sampler = absl::GetFlag(FLAGS_sampler);
  if (sampler == "ddpm") {
    request.set_sampler(v1::SAMPLER_KIND_DDPM);
  } else if (sampler == "ddim") {
    request.set_sampler(v1::SAMPLER_KIND_DDIM);
  } else {
    return UsageError(absl::StrCat("--sampler = \"", sampler, "\" is not one of ddpm, ddim"));
  }
  const double eta = absl::GetFlag(FLAGS_eta);
  if (!(eta >= 0 && eta <= 1)) {
    return UsageError(absl::StrCat("--eta = ", eta, " is outside [0, 1]"));
  }
  if (eta != 0 && sampler == "ddpm") {
    return UsageError(absl::StrCat("--eta = ", eta, " needs --sampler ddim (DDPM has no eta)"));
  }
  request.set_eta(eta);
  const std::string respacing = absl::GetFlag(FLAGS_timestep_respacing);
  if (absl::Status status = CheckRespacing(respacing); !status.ok()) return status;
  request.set_timestep_respacing(respacing);
  request.set_seed(absl::GetFlag(FLAGS_seed));
  if (const std::optional<bool> clip = absl::GetFlag(FLAGS_clip_denoised); clip.has_value()) {
    request.mutable_clip_denoised()->set_value(*clip);
  }
  if (const std::string noise_path = absl::GetFlag(FLAGS_noise); !noise_path.empty()) {
    absl::StatusOr<v1::Tensor> noise = ReadNoise(noise_path, image_count);
    if (!noise.ok()) return noise.status();
    *request.mutable_noise() = *std::move(noise);
  }

  // Only what the outputs need crosses the wire: uint8 images for the grid and the .npz, float32
  // samples for --tensor_out (the images then come from them, by the same formula as the
  // server's). No PNGs: the grid is assembled here.
  v1::OutputOptions* output = request.mutable_output();
  output->set_skip_png(true);
  output->set_float32(!outputs.tensor_path.empty());
  output->set_uint8(outputs.tensor_path.empty() &&
                    (!outputs.grid_path.empty() || !outputs.npz_path.empty()));
  return request;
}

absl::StatusOr<Outputs> OutputsFromFlags() {
  Outputs outputs;
  outputs.grid_path = absl::GetFlag(FLAGS_out);
  outputs.npz_path = absl::GetFlag(FLAGS_npz);
  outputs.tensor_path = absl::GetFlag(FLAGS_tensor_out);
  outputs.columns = absl::GetFlag(FLAGS_columns);
  if (outputs.columns < 0) {
    return UsageError(absl::StrCat("--columns = ", outputs.columns, " must be >= 0 (0 = auto)"));
  }
  for (const auto& [flag, path] :
       {std::pair{"out", &outputs.grid_path}, std::pair{"npz", &outputs.npz_path},
        std::pair{"tensor_out", &outputs.tensor_path}}) {
    if (absl::Status status = CheckOutputDirectory(flag, *path); !status.ok()) return status;
  }
  return outputs;
}

// ---- Progress -----------------------------------------------------------------------------------

// A one-line progress bar on stderr, redrawn in place, only when stderr is a terminal: steps
// done/total, images per second, estimated time left.
class ProgressBar {
 public:
  ProgressBar() : enabled_(isatty(STDERR_FILENO) == 1) {}
  ~ProgressBar() { Clear(); }

  bool enabled() const { return enabled_; }

  void OnEvent(const v1::SampleEvent& event) {
    if (!enabled_) return;
    const Clock::time_point now = Clock::now();
    if (event.has_accepted()) {
      total_steps_ = event.accepted().total_steps();
      num_images_ = event.accepted().num_images();
      accepted_at_ = now;
    } else if (event.has_step()) {
      const v1::StepEvent& step = event.step();
      total_steps_ = step.total_steps();
      steps_done_ = step.step() + 1;
      images_per_second_ = step.images_per_second();
      if (!first_step_at_.has_value()) {
        first_step_at_ = now;
        first_step_done_ = steps_done_;
      }
      // Redrawing at most 10 times a second keeps a fast CPU model from flooding the terminal.
      if (steps_done_ >= total_steps_ || now - drawn_at_ >= std::chrono::milliseconds(100)) {
        Draw(now);
      }
    } else if (event.has_result()) {
      Clear();
    }
  }

  // Erases the bar, so that what follows starts on a clean line.
  void Clear() {
    if (drawn_) std::fputs("\r\033[K", stderr);
    drawn_ = false;
  }

 private:
  using Clock = std::chrono::steady_clock;

  void Draw(Clock::time_point now) {
    constexpr int kWidth = 30;
    const double fraction = total_steps_ > 0 ? std::min(1.0, 1.0 * steps_done_ / total_steps_) : 0;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(filled, '#');
    bar.append(kWidth - filled, '-');
    double rate = images_per_second_;
    if (rate <= 0 && accepted_at_.has_value() && total_steps_ > 0) {
      const double elapsed = std::chrono::duration<double>(now - *accepted_at_).count();
      if (elapsed > 0) rate = num_images_ * fraction / elapsed;
    }
    std::string eta = "--:--";
    const double step_elapsed = std::chrono::duration<double>(now - *first_step_at_).count();
    if (steps_done_ > first_step_done_ && step_elapsed > 0) {
      const double seconds_per_step = step_elapsed / (steps_done_ - first_step_done_);
      const int64_t left = std::llround(seconds_per_step * (total_steps_ - steps_done_));
      eta = absl::StrFormat("%d:%02d", left / 60, left % 60);
    }
    std::fprintf(stderr, "\r[%s] %u/%u steps  %.2f images/s  ETA %s\033[K", bar.c_str(),
                 steps_done_, total_steps_, rate, eta.c_str());
    std::fflush(stderr);
    drawn_ = true;
    drawn_at_ = now;
  }

  const bool enabled_;
  bool drawn_ = false;
  uint32_t total_steps_ = 0;
  uint32_t num_images_ = 0;
  uint32_t steps_done_ = 0;
  uint32_t first_step_done_ = 0;
  double images_per_second_ = 0;
  std::optional<Clock::time_point> accepted_at_;
  std::optional<Clock::time_point> first_step_at_;
  Clock::time_point drawn_at_;
};

// ---- Writing results ----------------------------------------------------------------------------

absl::Status WriteNpy(const std::string& path, const formats::Array& array) {
  return formats::WriteFileBytes(path, formats::SerializeNpy(array));
}

// A streamed tensor as float32 [N, C, H, W] (float16 streams are widened).
absl::StatusOr<formats::Array> StepTensor(const v1::Tensor& tensor, absl::string_view what) {
  absl::StatusOr<formats::Array> array = TensorToArray(tensor, what);
  if (array.ok()) array = ToFloat32(*std::move(array), what);
  if (array.ok() && array->shape.size() != 4) {
    return absl::InternalError(absl::StrCat(what, ": the server sent a ", array->shape.size(),
                                            "-D tensor, expected [N, C, H, W]"));
  }
  return array;
}

// DIR/x_t_0012.npy and DIR/pred_xstart_0012.npy for step 12, as far as the event carries them.
absl::Status DumpStep(const v1::StepEvent& step, const std::string& dir) {
  const std::pair<const char*, const v1::Tensor*> tensors[] = {
      {"x_t", step.has_x_t() ? &step.x_t() : nullptr},
      {"pred_xstart", step.has_pred_xstart() ? &step.pred_xstart() : nullptr}};
  for (const auto& [name, tensor] : tensors) {
    if (tensor == nullptr) continue;
    absl::StatusOr<formats::Array> array =
        StepTensor(*tensor, absl::StrCat("step ", step.step(), " ", name));
    if (!array.ok()) return array.status();
    const std::string path = absl::StrFormat("%s/%s_%04d.npy", dir, name, step.step());
    if (absl::Status status = WriteNpy(path, *array); !status.ok()) return status;
  }
  return absl::OkStatus();
}

// Writes what `outputs` asks for and prints the summary line, then one line per file written.
absl::Status WriteOutputs(const v1::SampleResponse& response, const Outputs& outputs) {
  std::optional<formats::Array> samples;  // float32 [N, C, H, W]
  std::optional<formats::Array> images;   // uint8 [N, H, W, C]
  if (response.has_samples()) {
    absl::StatusOr<formats::Array> array = StepTensor(response.samples(), "samples");
    if (!array.ok()) return array.status();
    samples = *std::move(array);
  }
  if (response.has_images_uint8()) {
    absl::StatusOr<formats::Array> array = TensorToArray(response.images_uint8(), "images_uint8");
    if (!array.ok()) return array.status();
    if (array->dtype != formats::DType::kUInt8 || array->shape.size() != 4) {
      return absl::InternalError("the server sent images_uint8 that are not uint8 [N, H, W, C]");
    }
    images = *std::move(array);
  } else if (samples.has_value() && (!outputs.grid_path.empty() || !outputs.npz_path.empty())) {
    absl::StatusOr<formats::Array> array = SamplesToUint8(*samples);
    if (!array.ok()) return array.status();
    images = *std::move(array);
  }
  if ((!outputs.tensor_path.empty() && !samples.has_value()) ||
      ((!outputs.grid_path.empty() || !outputs.npz_path.empty()) && !images.has_value())) {
    return absl::InternalError("the server's response lacks the samples or images asked for");
  }

  const size_t count = static_cast<size_t>(response.labels_size());
  std::string shape;  // C x H x W when the images came back
  if (samples.has_value()) {
    shape = absl::StrCat(" ", absl::StrJoin(samples->shape.begin() + 1, samples->shape.end(), "x"));
  } else if (images.has_value() && images->shape.size() == 4) {
    shape = absl::StrCat(" ", images->shape[3], "x", images->shape[1], "x", images->shape[2]);
  }
  const double images_per_second =
      response.sampling_seconds() > 0 ? count / response.sampling_seconds() : 0;
  absl::PrintF(
      "%d %s%s from \"%s\": %d steps in %.2f s (%.2f images/s), queued %.2f s, request %s\n", count,
      count == 1 ? "image" : "images", shape, response.model(), response.steps(),
      response.sampling_seconds(), images_per_second, response.queue_seconds(),
      response.request_id());

  if (!outputs.tensor_path.empty()) {
    if (absl::Status status = WriteNpy(outputs.tensor_path, *samples); !status.ok()) return status;
    absl::PrintF("wrote %s\n", outputs.tensor_path);
  }
  if (!outputs.npz_path.empty()) {
    const int64_t n = images->shape[0];
    if (static_cast<int64_t>(count) != n) {
      return absl::InternalError(
          absl::StrCat("the server sent ", count, " labels for ", n, " images"));
    }
    formats::Array labels;
    labels.dtype = formats::DType::kInt64;
    labels.shape = {n};
    labels.data.resize(count * sizeof(int64_t));
    if (count > 0) std::memcpy(labels.data.data(), response.labels().data(), labels.data.size());
    const std::string npz = formats::SerializeNpz({{"arr_0", *images}, {"arr_1", labels}});
    if (absl::Status status = formats::WriteFileBytes(outputs.npz_path, npz); !status.ok()) {
      return status;
    }
    absl::PrintF("wrote %s\n", outputs.npz_path);
  }
  if (!outputs.grid_path.empty()) {
    absl::StatusOr<std::vector<formats::Image>> tiles = Uint8ToImages(*images);
    if (!tiles.ok()) return tiles.status();
    if (tiles->empty()) return absl::InternalError("the server sent no images");
    const int64_t columns =
        outputs.columns > 0 ? outputs.columns : std::min<int64_t>(tiles->size(), kMaxGridColumns);
    absl::StatusOr<std::string> png = formats::EncodePng(formats::MakeGrid(*tiles, columns));
    if (!png.ok()) return png.status();
    if (absl::Status status = formats::WriteFileBytes(outputs.grid_path, *png); !status.ok()) {
      return status;
    }
    absl::PrintF("wrote %s\n", outputs.grid_path);
  }
  return absl::OkStatus();
}

// ---- Commands -----------------------------------------------------------------------------------

absl::Status RunSample(SamplerClient& client, v1::SampleRequest request, const Outputs& outputs) {
  ProgressBar progress;
  absl::StatusOr<v1::SampleResponse> response;
  if (progress.enabled()) {
    // Progress-only step events (no x_t, no pred_xstart): a few bytes per step.
    request.mutable_stream()->set_every(1);
    response = client.StreamSample(request, [&progress](const v1::SampleEvent& event) {
      progress.OnEvent(event);
      return true;
    });
  } else {
    response = client.Sample(request);
  }
  progress.Clear();
  if (!response.ok()) return response.status();
  return WriteOutputs(*response, outputs);
}

absl::Status RunStream(SamplerClient& client, v1::SampleRequest request, const Outputs& outputs) {
  const std::string dump_dir = absl::GetFlag(FLAGS_dump_dir);
  v1::StreamOptions* stream = request.mutable_stream();
  stream->set_every(absl::GetFlag(FLAGS_every));
  stream->set_x_t(!dump_dir.empty());
  stream->set_pred_xstart(!dump_dir.empty());
  stream->set_format(v1::StreamOptions::FORMAT_TENSOR_FLOAT32);

  ProgressBar progress;
  absl::Status dump_status;
  absl::StatusOr<v1::SampleResponse> response =
      client.StreamSample(request, [&](const v1::SampleEvent& event) {
        progress.OnEvent(event);
        if (event.has_step() && !dump_dir.empty()) {
          dump_status = DumpStep(event.step(), dump_dir);
          return dump_status.ok();  // a failed write stops the (possibly long) run
        }
        return true;
      });
  progress.Clear();
  if (!dump_status.ok()) return dump_status;
  if (!response.ok()) return response.status();
  return WriteOutputs(*response, outputs);
}

std::string SamplerNames(const v1::ModelInfo& model) {
  std::vector<std::string> names;
  for (int kind : model.samplers()) {
    names.push_back(kind == v1::SAMPLER_KIND_DDIM ? "ddim" : "ddpm");
  }
  return absl::StrJoin(names, ",");
}

absl::Status RunModels(SamplerClient& client) {
  std::vector<v1::ModelInfo> models;
  std::string default_model;
  if (const std::string name = absl::GetFlag(FLAGS_model); !name.empty()) {
    absl::StatusOr<v1::ModelInfo> model = client.GetModel(name);
    if (!model.ok()) return model.status();
    models.push_back(*std::move(model));
  } else {
    absl::StatusOr<v1::ListModelsResponse> list = client.ListModels();
    if (!list.ok()) return list.status();
    models.assign(list->models().begin(), list->models().end());
    default_model = list->default_model();
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "SIZE", "CHANNELS", "CLASSES", "CONDITIONAL", "CLASSIFIER", "STEPS", "SAMPLERS"}};
  for (const v1::ModelInfo& model : models) {
    rows.push_back({absl::StrCat(model.name(), model.name() == default_model ? " *" : ""),
                    absl::StrCat(model.image_size()), absl::StrCat(model.channels()),
                    absl::StrCat(model.num_classes()), model.class_conditional() ? "yes" : "no",
                    model.has_classifier() ? "yes" : "no", absl::StrCat(model.diffusion_steps()),
                    SamplerNames(model)});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      absl::StrAppend(&line, row[i],
                      i + 1 < row.size() ? std::string(widths[i] - row[i].size() + 2, ' ') : "");
    }
    absl::PrintF("%s\n", line);
  }
  if (!default_model.empty()) absl::PrintF("* default model\n");
  return absl::OkStatus();
}

// Prints the health status; true only for SERVING.
absl::StatusOr<bool> RunHealth(SamplerClient& client) {
  absl::StatusOr<std::string> health = client.Health(absl::GetFlag(FLAGS_service));
  if (!health.ok()) return health.status();
  absl::PrintF("%s\n", *health);
  return *health == "SERVING";
}

// What the command line asks for, checked as far as possible before any call.
struct Invocation {
  ClientOptions options;
  v1::SampleRequest request;  // sample, stream
  Outputs outputs;            // sample, stream
};

absl::StatusOr<Invocation> InvocationFromFlags(absl::string_view command_name, Command command) {
  if (absl::Status status = CheckFlagsApply(command_name, command); !status.ok()) return status;
  Invocation invocation;
  absl::StatusOr<ClientOptions> options = OptionsFromFlags();
  if (!options.ok()) return options.status();
  invocation.options = *std::move(options);
  if (command == Command::kSample || command == Command::kStream) {
    absl::StatusOr<Outputs> outputs = OutputsFromFlags();
    if (!outputs.ok()) return outputs.status();
    invocation.outputs = *std::move(outputs);
    absl::StatusOr<v1::SampleRequest> request = RequestFromFlags(invocation.outputs);
    if (!request.ok()) return request.status();
    invocation.request = *std::move(request);
  }
  if (const std::string dump_dir = absl::GetFlag(FLAGS_dump_dir); !dump_dir.empty()) {
    struct stat info;
    if (mkdir(dump_dir.c_str(), 0777) != 0 && errno != EEXIST) {
      return UsageError(absl::StrCat("--dump_dir \"", dump_dir, "\": ", std::strerror(errno)));
    }
    if (stat(dump_dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
      return UsageError(absl::StrCat("--dump_dir \"", dump_dir, "\" is not a directory"));
    }
  }
  return invocation;
}

void PrintError(const absl::Status& status) {
  absl::FPrintF(stderr, "gd: %s: %s\n", absl::StatusCodeToString(status.code()), status.message());
}

int Main(const std::vector<char*>& positional) {
  if (positional.size() < 2) {
    absl::FPrintF(stderr, "usage: gd <sample|stream|models|health> [flags]  (gd --help: flags)\n");
    return kExitUsage;
  }
  const absl::string_view name = positional[1];
  const auto* found = std::find_if(std::begin(kCommands), std::end(kCommands),
                                   [name](const auto& entry) { return entry.first == name; });
  if (found == std::end(kCommands)) {
    PrintError(UsageError(absl::StrCat("unknown command \"", name,
                                       "\" (expected sample, stream, models or health)")));
    return kExitUsage;
  }
  const Command command = found->second;
  if (positional.size() > 2) {
    PrintError(UsageError(absl::StrCat("unexpected argument \"", positional[2], "\"")));
    return kExitUsage;
  }

  absl::StatusOr<Invocation> invocation = InvocationFromFlags(name, command);
  if (!invocation.ok()) {
    PrintError(invocation.status());
    return kExitUsage;
  }

  absl::StatusOr<std::unique_ptr<SamplerClient>> client =
      SamplerClient::Create(invocation->options);
  if (!client.ok()) {
    PrintError(client.status());
    return kExitFailure;
  }
  absl::Status status;
  bool success = true;
  switch (command) {
    case Command::kSample:
      status = RunSample(**client, std::move(invocation->request), invocation->outputs);
      break;
    case Command::kStream:
      status = RunStream(**client, std::move(invocation->request), invocation->outputs);
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

}  // namespace
}  // namespace gd::client

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(gd::client::kUsage);
  absl::FlagsUsageConfig usage_config;
  // --help lists this program's flags, not those of libraries linked in.
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "gd_main.cc");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  usage_config.version_string = [] { return std::string("gd 0.1.0\n"); };
  absl::SetFlagsUsageConfig(usage_config);
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  return gd::client::Main(positional);
}
