// gd: the command-line client of the guided-diffusion Sampler service.
//
//   gd sample --server HOST:PORT --labels 1,2,3 --out grid.png --npz samples.npz
//   gd stream --server HOST:PORT --labels 7 --every 10 --dump_dir steps/
//   gd stream --server HOST:PORT --labels 1,2 --strip strip.png --gif trajectory.gif
//   gd view --server HOST:PORT [--listen 127.0.0.1:8080]
//   gd models --server HOST:PORT
//   gd health --server HOST:PORT
//
// Everything numeric happens on the server; this program validates flags before calling (so a
// typo never costs a sampling run), turns responses into files (PNG grid, the reference's .npz
// layout, raw .npy tensors, denoising strips and GIFs: outputs.h, trajectory.h), draws a progress
// bar when stderr is a terminal (progress.h) and serves the browser viewer (view_server.h). Exit
// status: 0 on success, 1 when a call or a file write fails, 2 for bad flags.
#include <pthread.h>
#include <signal.h>
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
#include "client/http_server.h"
#include "client/outputs.h"
#include "client/progress.h"
#include "client/trajectory.h"
#include "client/view_server.h"
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

constexpr char kUsage[] =
    "the command-line client of the guided-diffusion sampling service.\n"
    "\n"
    "usage: gd <command> [flags]\n"
    "  sample  sample images of the given classes:\n"
    "            gd sample --server HOST:PORT --labels 1,2,3 [--classifier_scale 4]\n"
    "              [--sampler ddim --timestep_respacing ddim25] [--out grid.png]\n"
    "              [--npz samples.npz] [--tensor_out samples.npy]\n"
    "  stream  the same, streaming every (--every K-th) step: [--dump_dir DIR]\n"
    "            [--strip strip.png [--strip_columns 8]] [--gif trajectory.gif]\n"
    "  view    a web page to sample and watch every step live: [--listen 127.0.0.1:8080]\n"
    "  models  list the server's models (--model M: one model)\n"
    "  health  the server's health (--service S); exit status 0 only when SERVING\n"
    "\n"
    "A progress bar is drawn on stderr when it is a terminal. Exit status: 0 success, 1 a failed\n"
    "call or write, 2 bad flags.";

enum class Command { kSample, kStream, kView, kModels, kHealth };

constexpr std::pair<absl::string_view, Command> kCommands[] = {{"sample", Command::kSample},
                                                               {"stream", Command::kStream},
                                                               {"view", Command::kView},
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
    {"strip", Bit(Command::kStream)},
    {"strip_columns", Bit(Command::kStream)},
    {"gif", Bit(Command::kStream)},
    {"gif_frame_ms", Bit(Command::kStream)},
    {"listen", Bit(Command::kView)},
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
    if (absl::Status status = CheckOutputDirectory(flag, *path); !status.ok()) return status;
  }
  return pictures;
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

absl::Status RunStream(SamplerClient& client, v1::SampleRequest request, const Outputs& outputs,
                       const TrajectoryOptions& picture_options) {
  const std::string dump_dir = absl::GetFlag(FLAGS_dump_dir);
  TrajectoryRecorder pictures(picture_options);
  v1::StreamOptions* stream = request.mutable_stream();
  stream->set_every(absl::GetFlag(FLAGS_every));
  stream->set_x_t(!dump_dir.empty() || pictures.needs_x_t());
  stream->set_pred_xstart(!dump_dir.empty() || pictures.needs_pred_xstart());
  // --dump_dir needs the tensors; pictures alone are lighter as the server's PNGs.
  const bool pictures_only = dump_dir.empty() && (stream->x_t() || stream->pred_xstart());
  stream->set_format(pictures_only ? v1::StreamOptions::FORMAT_PNG
                                   : v1::StreamOptions::FORMAT_TENSOR_FLOAT32);

  ProgressBar progress;
  absl::Status step_status;  // a failed write stops the (possibly long) run
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
  if (absl::Status status = WriteOutputs(*response, outputs); !status.ok()) return status;
  return pictures.Finish();
}

bool IsLoopback(const std::string& host) { return absl::StartsWith(host, "127."); }

// Serves the viewer until SIGINT or SIGTERM (blocked in every thread by Main, taken here).
absl::Status RunView(SamplerClient& client, const ListenAddress& listen,
                     const sigset_t& stop_signals) {
  ViewServerOptions options;
  options.listen = listen;
  absl::StatusOr<std::unique_ptr<ViewServer>> server = ViewServer::Start(client, options);
  if (!server.ok()) return server.status();
  absl::PrintF("gd view: %s (Sampler at %s); Ctrl-C stops\n", (*server)->url(),
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
  server->reset();  // cancels the runs still going
  return absl::OkStatus();
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
  v1::SampleRequest request;   // sample, stream
  Outputs outputs;             // sample, stream
  TrajectoryOptions pictures;  // stream
  ListenAddress listen;        // view
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
  if (command == Command::kStream) {
    absl::StatusOr<TrajectoryOptions> pictures = TrajectoryFromFlags(invocation.outputs);
    if (!pictures.ok()) return pictures.status();
    invocation.pictures = *std::move(pictures);
  }
  if (command == Command::kView) {
    absl::StatusOr<ListenAddress> listen = ParseListenAddress(absl::GetFlag(FLAGS_listen));
    if (!listen.ok()) return UsageError(absl::StrCat("--listen: ", listen.status().message()));
    invocation.listen = *listen;
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
    absl::FPrintF(stderr,
                  "usage: gd <sample|stream|view|models|health> [flags]  (gd --help: flags)\n");
    return kExitUsage;
  }
  const absl::string_view name = positional[1];
  const auto* found = std::find_if(std::begin(kCommands), std::end(kCommands),
                                   [name](const auto& entry) { return entry.first == name; });
  if (found == std::end(kCommands)) {
    PrintError(UsageError(absl::StrCat("unknown command \"", name,
                                       "\" (expected sample, stream, view, models or health)")));
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

  // `gd view` takes SIGINT/SIGTERM with sigwait: block them before gRPC starts any thread, so
  // that every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (command == Command::kView) pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

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
      status = RunStream(**client, std::move(invocation->request), invocation->outputs,
                         invocation->pictures);
      break;
    case Command::kView:
      status = RunView(**client, invocation->listen, stop_signals);
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
