// gd-server: serves guided-diffusion models over gRPC.
//
//   gd-server                                   # the bundled Fashion-MNIST model
//   gd-server --model_dir models/fashion-mnist,other/model
//   gd-server --model_name imagenet256 --model_path 256x256_diffusion.pt \
//       --model_flags "--attention_resolutions 32,16,8 --class_cond True ..." \
//       --classifier_path 256x256_classifier.pt --classifier_flags "--classifier_depth 2 ..."
//
// Every flag is listed by --help and in docs/flags.md.
#include <algorithm>
#include <atomic>
#include <climits>
#include <csignal>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/engine/allocator.h"
#include "core/engine/engine.h"
#include "core/engine/intra_op_threads.h"
#include "core/io/bundled_model.h"
#include "core/nn/cpu_features.h"
#include "core/nn/model_bundle.h"
#include "server/codec.h"
#include "server/model_registry.h"
#include "server/metrics.h"
#include "server/sampler_service.h"
#include "server/security.h"
#include "core/status_macros.h"

ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on (0.0.0.0: all IPv4 interfaces).");
ABSL_FLAG(int, port, 50051, "gRPC port.");
ABSL_FLAG(std::vector<std::string>, model_dir, {},
          "Model directories (each with a model.json), comma-separated; the first is the "
          "default model. Without any model flag the bundled model is served.");
ABSL_FLAG(std::string, model_name, "", "Name of the model given by --model_path/--model_flags.");
ABSL_FLAG(std::string, model_path, "", "Diffusion checkpoint (.pt state_dict or .safetensors).");
ABSL_FLAG(std::string, model_flags, "",
          "The reference's MODEL_FLAGS for --model_path, verbatim, e.g. \"--image_size 256 "
          "--class_cond True --learn_sigma True ...\".");
ABSL_FLAG(std::string, classifier_path, "", "Noisy classifier checkpoint (enables guidance).");
ABSL_FLAG(std::string, classifier_flags, "", "The reference's CLASSIFIER_FLAGS, verbatim.");
ABSL_FLAG(std::string, device, "cpu", "Where the models run: cpu, cuda or cuda:N.");
ABSL_FLAG(std::string, dtype, "fp32",
          "Network precision: fp32, fp16 or bf16 (torso convolutions, as the reference's "
          "convert_to_fp16; norms stay fp32).");
ABSL_FLAG(int, threads, 0, "Intra-op CPU threads (0: all cores).");
ABSL_FLAG(int, max_batch, 32, "Images (slots) per UNet forward.");
ABSL_FLAG(int, lanes, 0,
          "CPU: the networks of each batch run as up to this many sub-batches side by side, each "
          "on its share of --threads (0: 2 on the CPU with 2 or more threads, else 1). On 2 "
          "cores 2 lanes ran batches of 8 1.3-1.7x faster than 1 (docs/benchmarks.md, \"Lanes\").");
ABSL_FLAG(int, max_queue_images, 256,
          "Images that may wait for a slot per model; beyond it requests get RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, max_images_per_request, 0, "Images per request (0: --max_batch).");
ABSL_FLAG(int, max_steps, gd::server::kDefaultMaxSteps,
          "Denoising steps per request: after respacing for DDPM/DDIM, model calls for DPM-Solver++ "
          "(0: no limit). 250 is the reference's sampling default; a full 1000-step DDPM run "
          "costs four times that and needs --max_steps 1000.");
ABSL_FLAG(double, max_classifier_scale, gd::server::kDefaultMaxClassifierScale,
          "Largest classifier_scale accepted (0: no limit). The paper's scales are 0.5-10; far "
          "larger ones overflow the update and are refused up front.");
ABSL_FLAG(int, max_message_bytes, 64 << 20, "Largest gRPC message received or sent.");
ABSL_FLAG(int, drain_timeout_s, 30,
          "On SIGTERM/SIGINT: seconds running requests get to finish before being cancelled.");
ABSL_FLAG(int, encoder_threads, 2, "Threads that encode tensors and PNGs for the wire.");
ABSL_FLAG(int, stream_buffer_events, 32,
          "Step events buffered per stream for a slow reader before the oldest are dropped.");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error.");
ABSL_FLAG(int, metrics_port, 9090,
          "HTTP port of /metrics (Prometheus), /healthz and /readyz; 0 turns it off.");
ABSL_FLAG(std::string, metrics_host, "0.0.0.0", "Address the metrics endpoint listens on.");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve gRPC over TLS (with --tls_key).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require and verify client certificates (mutual TLS). Needs --tls_cert.");
ABSL_FLAG(std::string, auth_token_file, "",
          "File of accepted bearer tokens, one per line: Sampler calls must send "
          "\"authorization: Bearer <token>\" (health and reflection stay open).");
ABSL_FLAG(int, max_concurrent_streams, 0, "StreamSample calls open at once (0: no limit).");
ABSL_FLAG(int, max_connection_age_s, 0,
          "Close each client connection (GOAWAY, calls in flight finish) after this many "
          "seconds, so clients re-resolve DNS and spread onto replicas added since (0: never).");
ABSL_FLAG(int64_t, max_pixel_steps, 0,
          "Per request: images x height x width x steps (0: no limit).");

namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::vector<gd::ModelSpec>> ModelSpecs() {
  std::vector<gd::ModelSpec> specs;
  const std::string model_path = absl::GetFlag(FLAGS_model_path);
  if (!model_path.empty()) {
    gd::ModelSpec spec;
    spec.name = absl::GetFlag(FLAGS_model_name);
    if (spec.name.empty()) spec.name = fs::path(model_path).stem().string();
    spec.model_path = model_path;
    spec.model_flags = absl::GetFlag(FLAGS_model_flags);
    spec.classifier_path = absl::GetFlag(FLAGS_classifier_path);
    spec.classifier_flags = absl::GetFlag(FLAGS_classifier_flags);
    specs.push_back(spec);
  } else if (!absl::GetFlag(FLAGS_classifier_path).empty() ||
             !absl::GetFlag(FLAGS_model_flags).empty()) {
    return absl::InvalidArgumentError("--model_flags and --classifier_path need --model_path");
  }
  for (const auto& dir : absl::GetFlag(FLAGS_model_dir)) {
    if (dir.empty()) continue;
    ASSIGN_OR_RETURN(auto spec, gd::ReadModelDir(dir));
    specs.push_back(spec);
  }
  if (specs.empty()) {
    const std::string bundled = gd::FindBundledModelDir("model.json");
    if (bundled.empty()) {
      return absl::NotFoundError(
          "no model given (--model_dir or --model_path) and the bundled model was not found "
          "(looked beside the binary, in /usr/share/gd/models and ./models; set "
          "GD_BUNDLED_MODEL)");
    }
    ASSIGN_OR_RETURN(auto spec, gd::ReadModelDir(bundled));
    specs.push_back(spec);
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (specs[i].name == specs[j].name) {
        return absl::InvalidArgumentError(
            absl::StrCat("two models are named \"", specs[i].name, "\""));
      }
    }
  }
  return specs;
}

int Fail(const absl::Status& status) {
  spdlog::critical("{}", std::string(status.message()));
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "serves guided-diffusion models over gRPC (service guided_diffusion.v1.Sampler).\n"
      "  gd-server [--model_dir DIR,...] [--model_path P --model_flags \"...\" "
      "[--classifier_path C --classifier_flags \"...\"]] [--port 50051] [--device cpu]");
  absl::ParseCommandLine(argc, argv);
  spdlog::set_level(spdlog::level::from_str(absl::GetFlag(FLAGS_log_level)));
  spdlog::info("memory: {}", gd::ConfigureAllocator());

  // Signals are handled by a dedicated thread (sigwait), never in an async handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const int threads = absl::GetFlag(FLAGS_threads) > 0
                          ? absl::GetFlag(FLAGS_threads)
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(threads);
  auto precision = gd::ParsePrecision(absl::GetFlag(FLAGS_dtype));
  if (!precision.ok()) return Fail(precision.status());
  if (const int age = absl::GetFlag(FLAGS_max_connection_age_s); age < 0) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--max_connection_age_s = ", age, " is negative (0: never)")));
  }
  if (const int lanes = absl::GetFlag(FLAGS_lanes); lanes < 0) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--lanes = ", lanes, " is negative (0: 2 on the CPU with 2 or more threads)")));
  }
  torch::Device device = torch::kCPU;
  try {
    device = torch::Device(absl::GetFlag(FLAGS_device));
  } catch (const c10::Error&) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--device \"", absl::GetFlag(FLAGS_device), "\" is not cpu, cuda or cuda:N")));
  }
  if (device.is_cuda() && !torch::cuda::is_available()) {
    return Fail(absl::FailedPreconditionError(
        "--device cuda: this LibTorch has no CUDA, or no GPU is visible"));
  }
  auto specs = ModelSpecs();
  if (!specs.ok()) return Fail(specs.status());

  auto credentials = gd::server::MakeServerCredentials(
      {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_tls_client_ca)});
  if (!credentials.ok()) return Fail(credentials.status());
  auto tokens = gd::server::ReadAuthTokens(absl::GetFlag(FLAGS_auth_token_file));
  if (!tokens.ok()) return Fail(tokens.status());

  auto registry = std::make_shared<gd::server::ModelRegistry>();
  auto metrics = std::make_shared<gd::server::Metrics>(registry);
  gd::server::ServiceOptions service_options;
  service_options.encoder_threads = absl::GetFlag(FLAGS_encoder_threads);
  service_options.max_pending_events = std::max(1, absl::GetFlag(FLAGS_stream_buffer_events));
  service_options.auth_tokens = *tokens;
  service_options.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  service_options.on_request_done = [metrics](const gd::server::RequestRecord& record) {
    metrics->RequestFinished(record);
  };
  gd::server::SamplerService service(registry, service_options);
  std::atomic<bool> ready{false};
  std::unique_ptr<gd::server::MetricsHttpServer> metrics_http;
  if (absl::GetFlag(FLAGS_metrics_port) > 0) {
    auto started = gd::server::MetricsHttpServer::Start(
        absl::GetFlag(FLAGS_metrics_host), absl::GetFlag(FLAGS_metrics_port),
        [metrics] { return metrics->Render(); }, [&ready] { return ready.load(); });
    if (!started.ok()) return Fail(started.status());
    metrics_http = std::move(*started);
    spdlog::info("metrics on http://{}:{}/metrics", absl::GetFlag(FLAGS_metrics_host),
                 metrics_http->port());
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address =
      absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port));
  int bound_port = 0;
  builder.AddListeningPort(address, *credentials, &bound_port);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  builder.SetMaxSendMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  if (const int age = absl::GetFlag(FLAGS_max_connection_age_s); age > 0) {
    // Calls in flight on an aged connection keep running (the grace period is unbounded);
    // the client's next call opens a new connection after re-resolving the target.
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               static_cast<int>(std::min<int64_t>(age * int64_t{1000}, INT32_MAX)));
  }
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    return Fail(absl::UnavailableError(absl::StrCat("cannot listen on ", address)));
  }
  auto* health = server->GetHealthCheckService();
  health->SetServingStatus(false);  // NOT_SERVING until every model is loaded
  spdlog::info("listening on {}:{}{}{} (health NOT_SERVING while models load)",
               absl::GetFlag(FLAGS_host), bound_port,
               absl::GetFlag(FLAGS_tls_cert).empty() ? "" : ", TLS",
               service_options.auth_tokens.empty() ? "" : ", bearer tokens required");

  gd::EngineOptions engine_options;
  engine_options.max_batch = absl::GetFlag(FLAGS_max_batch);
  engine_options.max_queue_images = absl::GetFlag(FLAGS_max_queue_images);
  engine_options.max_images_per_request = absl::GetFlag(FLAGS_max_images_per_request);
  engine_options.max_steps = absl::GetFlag(FLAGS_max_steps);
  engine_options.max_classifier_scale = absl::GetFlag(FLAGS_max_classifier_scale);
  engine_options.max_pixel_steps = absl::GetFlag(FLAGS_max_pixel_steps);
  engine_options.lanes = absl::GetFlag(FLAGS_lanes) != 0
                             ? absl::GetFlag(FLAGS_lanes)
                             : gd::DefaultLanes(device.is_cpu(), threads);
  engine_options.threads = threads;
  for (size_t i = 0; i < specs->size(); ++i) {
    const gd::ModelSpec& spec = (*specs)[i];
    const auto started = std::chrono::steady_clock::now();
    auto bundle = gd::LoadModelBundle(spec, device, *precision);
    if (!bundle.ok()) return Fail(bundle.status());
    auto engine = gd::Engine::Create(*bundle, engine_options);
    if (!engine.ok()) return Fail(engine.status());
    registry->Add(std::shared_ptr<gd::Engine>(std::move(*engine)), i == 0);
    spdlog::info("model \"{}\" loaded in {:.1f} s: {} UNet parameters{}, {}x{}x{}, {} on {}",
                 spec.name,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(),
                 gd::CountParameters(*(*bundle)->unet),
                 (*bundle)->has_classifier()
                     ? absl::StrCat(" + classifier ", gd::CountParameters(*(*bundle)->classifier))
                     : std::string(" (no classifier)"),
                 (*bundle)->channels(), (*bundle)->image_size(), (*bundle)->image_size(),
                 gd::ToString(*precision), device.str());
  }
  if (device.is_cpu() && gd::CpuEmulates(*precision)) {
    spdlog::warn("--dtype bf16 on a CPU without bf16 instructions (no avx512_bf16 or amx_bf16 in "
                 "/proc/cpuinfo): oneDNN emulates them, slower than fp32 and less accurate; "
                 "use fp32 here");
  }
  health->SetServingStatus(true);
  ready = true;
  spdlog::info("serving {} model(s) on port {}, {} threads, {} lane(s), max_batch {}",
               specs->size(), bound_port, threads, engine_options.lanes, engine_options.max_batch);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  const int drain_s = absl::GetFlag(FLAGS_drain_timeout_s);
  spdlog::info("signal {}: draining for up to {} s", signal_number, drain_s);
  health->SetServingStatus(false);
  ready = false;
  registry->StopAccepting();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(drain_s);
  for (const auto& engine : registry->All()) engine->Shutdown(deadline);
  // Engines finish or cancel their requests (UNAVAILABLE) by the deadline; the calls end with
  // them, so the gRPC shutdown below returns promptly.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(drain_s + 2));
  spdlog::info("stopped");
  return 0;
}
