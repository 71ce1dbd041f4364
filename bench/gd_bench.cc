// gd-bench: what one machine sustains. Prints, for the model it loads: GFLOPs per UNet forward
// and per classifier guidance step (counted from the layers), the machine's matrix-multiply peak
// with the same threads, and for the engine in-process and the service over gRPC on loopback:
// images/s, UNet forwards/s, mean batch per iteration, achieved GFLOP/s and its fraction of the
// peak, and request latency p50/p95/p99, at 1..32 concurrent single-image requests and for batch
// requests of 1..64 images. Writes JSON and a Markdown table. Every scenario is time-bounded.
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <iostream>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/engine/allocator.h"
#include "core/engine/engine.h"
#include "core/engine/intra_op_threads.h"
#include "core/io/bundled_model.h"
#include "core/nn/flops.h"
#include "core/nn/guidance.h"
#include "core/nn/model_bundle.h"
#include "core/nn/op_profile.h"
#include "core/status_macros.h"
#include "bench/profile_report.h"

#ifdef GD_BENCH_GRPC
#include <grpcpp/grpcpp.h>

#include "client/gd_client.h"
#include "client/sampler_settings.h"
#include "server/model_registry.h"
#include "server/sampler_service.h"
#endif

ABSL_FLAG(std::string, model_dir, "", "Model directory (default: the bundled model).");
ABSL_FLAG(std::string, model_path, "", "Diffusion checkpoint, with --model_flags.");
ABSL_FLAG(std::string, model_flags, "", "The reference's MODEL_FLAGS.");
ABSL_FLAG(std::string, classifier_path, "", "Classifier checkpoint, with --classifier_flags.");
ABSL_FLAG(std::string, classifier_flags, "", "The reference's CLASSIFIER_FLAGS.");
ABSL_FLAG(bool, random_weights, false,
          "Build the networks from --model_flags/--classifier_flags with random weights (no "
          "checkpoint): the speed of an architecture, e.g. the reference's 256x256 model.");
ABSL_FLAG(std::string, device, "cpu", "cpu, cuda or cuda:N.");
ABSL_FLAG(std::string, dtype, "fp32", "fp32, fp16 or bf16.");
ABSL_FLAG(int, threads, 0, "Intra-op threads (0: all cores).");
ABSL_FLAG(std::string, sampler, "ddim", "Sampler of every request: ddpm, ddim or dpm++.");
ABSL_FLAG(std::string, timestep_respacing, "ddim10", "ddpm/ddim: the steps of every request.");
ABSL_FLAG(int, steps, 15, "dpm++: model calls per request.");
ABSL_FLAG(int, solver_order, 2, "dpm++: solver order, 1-3.");
ABSL_FLAG(std::string, skip_type, "logSNR", "dpm++: logSNR, time_uniform or time_quadratic.");
ABSL_FLAG(double, classifier_scale, 1.0, "Guidance scale of every request (0: unguided).");
ABSL_FLAG(double, seconds, 8, "Duration of each scenario.");
ABSL_FLAG(std::string, concurrency, "1,2,4,8,16,32", "Concurrent single-image requests.");
ABSL_FLAG(double, unguided_share, 0,
          "Concurrency scenarios: this fraction of the clients (0-1, spread among the others) "
          "send unguided requests (scale 0), a mixed load.");
ABSL_FLAG(std::string, batches, "1,2,4,8,16,32,64", "Images per request, one request at a time.");
ABSL_FLAG(int, max_batch, 64, "Engine slots per UNet forward.");
ABSL_FLAG(int, lanes, 0,
          "Engine lanes: sub-batches of each batch run side by side on shares of --threads "
          "(0: as gd-server, 2 on the CPU with 2 or more threads, else 1; with --profile, 1, "
          "since operators of lanes side by side would add up to more than the step).");
ABSL_FLAG(bool, grpc, true, "Also measure through gRPC on loopback (when built with it).");
ABSL_FLAG(bool, channels_last, false, "Run the networks on channels-last tensors.");
ABSL_FLAG(bool, mkldnn, true,
          "Let LibTorch use its oneDNN (MKLDNN) kernels on the CPU; false measures its native "
          "convolutions instead.");
ABSL_FLAG(std::string, profile, "",
          "Instead of the throughput scenarios: profile one request of each of these sizes (e.g. "
          "1,8,32) by operator class and engine phase, after an unprofiled request of the same "
          "size (CPU only; --markdown writes the tables).");
ABSL_FLAG(int, profile_operators, 15,
          "With --profile: also list this many operators (by name and phase) that took the most "
          "time, per step (0: none).");
ABSL_FLAG(std::string, json, "", "Write the results as JSON here.");
ABSL_FLAG(std::string, markdown, "", "Write the results as a Markdown table here.");

namespace {

using Clock = std::chrono::steady_clock;

// A comma-separated list of positive counts ("" is an empty list: skip those scenarios).
std::vector<int64_t> ParseList(const char* flag, const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v <= 0) {
      std::cerr << "gd-bench: --" << flag << " takes positive integers separated by commas, not \""
                << part << "\"\n";
      std::exit(2);
    }
    out.push_back(v);
  }
  return out;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

// GFLOP/s of a square float32 matrix product with the configured threads, best of ~1 s.
double MatmulPeak(const torch::Device& device) {
  torch::NoGradGuard no_grad;
  const int64_t n = 1024;
  const auto options = torch::TensorOptions().device(device);
  const torch::Tensor a = torch::randn({n, n}, options), b = torch::randn({n, n}, options);
  double best = 0;
  const auto end = Clock::now() + std::chrono::seconds(1);
  while (Clock::now() < end) {
    const auto start = Clock::now();
    torch::Tensor c = torch::mm(a, b);
    if (device.is_cuda()) c.cpu();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    best = std::max(best, 2.0 * n * n * n / s / 1e9);
  }
  return best;
}

struct Flops {
  double unet_per_image = 0;        // one forward
  double classifier_per_image = 0;  // forward only
};

Flops CountFlops(gd::ModelBundle& m) {
  Flops f;
  const auto options = torch::TensorOptions().device(m.device);
  const torch::Tensor x = torch::randn({1, m.channels(), m.image_size(), m.image_size()}, options);
  const torch::Tensor t = torch::full({1}, 500, options.dtype(torch::kInt64));
  const torch::Tensor y = torch::zeros({1}, options.dtype(torch::kInt64));
  {
    torch::NoGradGuard no_grad;
    gd::FlopCounter counter;
    m.unet->forward(x, t, m.class_conditional() ? y : torch::Tensor());
    f.unet_per_image = static_cast<double>(counter.flops());
  }
  if (m.has_classifier()) {
    torch::NoGradGuard no_grad;
    gd::FlopCounter counter;
    m.classifier->forward(x, t);
    f.classifier_per_image = static_cast<double>(counter.flops());
  }
  return f;
}

struct Result {
  std::string mode;      // engine | grpc
  std::string scenario;  // "concurrency" | "batch"
  int64_t n = 0;         // concurrent requests, or images per request
  int64_t requests = 0;
  int64_t images = 0;
  double seconds = 0;
  double images_per_s = 0;
  double forwards_per_s = 0;
  double mean_batch = 0;
  double gflops = 0;
  double peak_fraction = 0;
  double p50 = 0, p95 = 0, p99 = 0;
  double unet_share = 0;  // of the engine's iteration time spent in UNet forwards
  double lane_idle = 0;   // of the lanes' time in split iterations, spent waiting (EngineStats)
};

// The sampler that --sampler names (by core's own names); exits with a usage error otherwise.
gd::SamplerKind SamplerFlag() {
  const std::string name = absl::GetFlag(FLAGS_sampler);
  for (gd::SamplerKind kind :
       {gd::SamplerKind::kDdpm, gd::SamplerKind::kDdim, gd::SamplerKind::kDpmSolverPP}) {
    if (name == gd::ToString(kind)) return kind;
  }
  std::cerr << "gd-bench: --sampler is ddpm, ddim or dpm++, not \"" << name << "\"\n";
  std::exit(2);
}

gd::SkipType SkipTypeFlag() {
  auto skip = gd::ParseSkipType(absl::GetFlag(FLAGS_skip_type));
  if (!skip.ok()) {
    std::cerr << "gd-bench: --skip_type: " << skip.status().message() << "\n";
    std::exit(2);
  }
  return *skip;
}

// Sets the sampler fields of one benchmark request from the flags.
void SetSampler(gd::SampleJob& job) {
  job.sampler = SamplerFlag();
  if (job.sampler == gd::SamplerKind::kDpmSolverPP) {
    job.steps = absl::GetFlag(FLAGS_steps);
    job.solver_order = absl::GetFlag(FLAGS_solver_order);
    job.skip_type = SkipTypeFlag();
  } else {
    job.timestep_respacing = absl::GetFlag(FLAGS_timestep_respacing);
  }
}

#ifdef GD_BENCH_GRPC
// The same for a request over gRPC, through the gd CLI's own mapping of these flags.
void SetSampler(guided_diffusion::v1::SampleRequest& request) {
  gd::client::SamplerSettings settings;
  settings.sampler = gd::ToString(SamplerFlag());
  if (SamplerFlag() == gd::SamplerKind::kDpmSolverPP) {
    settings.steps = static_cast<uint32_t>(absl::GetFlag(FLAGS_steps));
    settings.solver_order = static_cast<uint32_t>(absl::GetFlag(FLAGS_solver_order));
    settings.skip_type = gd::ToString(SkipTypeFlag());
  } else {
    settings.timestep_respacing = absl::GetFlag(FLAGS_timestep_respacing);
  }
  if (absl::Status status = gd::client::ApplySamplerSettings(settings, request); !status.ok()) {
    std::cerr << "gd-bench: " << status.message() << "\n";
    std::exit(2);
  }
}
#endif

// What the requests run, as printed and recorded: "DDIM ddim10", "DPM-Solver++ 2M 15 logSNR".
std::string SamplerDescription() {
  if (SamplerFlag() != gd::SamplerKind::kDpmSolverPP) {
    return absl::StrCat(absl::AsciiStrToUpper(absl::GetFlag(FLAGS_sampler)), " ",
                        absl::GetFlag(FLAGS_timestep_respacing));
  }
  return absl::StrCat("DPM-Solver++ ", absl::GetFlag(FLAGS_solver_order), "M ",
                      absl::GetFlag(FLAGS_steps), " steps ", gd::ToString(SkipTypeFlag()));
}

// A request submitter: the latency of one request of `images` images, guided with
// --classifier_scale or unguided, or the status it failed with.
using Submitter = std::function<absl::StatusOr<double>(int64_t images, uint64_t seed, bool guided)>;

// Whether client `c` sends unguided requests under --unguided_share: the unguided
// clients are spread evenly among the guided ones (share 0.5: every second client).
bool UnguidedClient(int64_t c, double share) {
  const auto unguided_before = [&](int64_t n) {
    return static_cast<int64_t>(std::floor(static_cast<double>(n) * share + 1e-9));
  };
  return unguided_before(c + 1) > unguided_before(c);
}

// The scale of one benchmark request.
double RequestScale(const gd::ModelBundle& m, bool guided) {
  return m.has_classifier() && guided ? absl::GetFlag(FLAGS_classifier_scale) : 0;
}

class Waiter : public gd::JobObserver {
 public:
  void OnFinished(absl::StatusOr<gd::JobResult> result) override {
    done.set_value(result.status());
  }
  std::promise<absl::Status> done;
};

Submitter EngineSubmitter(gd::Engine& engine, const gd::ModelBundle& m) {
  return [&engine, &m](int64_t images, uint64_t seed, bool guided) -> absl::StatusOr<double> {
    gd::SampleJob job;
    for (int64_t i = 0; i < images; ++i) job.labels.push_back(i % std::max<int64_t>(1, m.num_classes()));
    if (m.num_classes() == 0) {
      job.labels.clear();
      job.num_samples = images;
    }
    job.classifier_scale = RequestScale(m, guided);
    SetSampler(job);
    job.seed = seed;
    auto waiter = std::make_shared<Waiter>();
    auto future = waiter->done.get_future();
    const auto start = Clock::now();
    RETURN_IF_ERROR(engine.Submit(job, waiter).status());
    RETURN_IF_ERROR(future.get());
    return std::chrono::duration<double>(Clock::now() - start).count();
  };
}

// Runs `clients` closed-loop clients of `images`-image requests for the configured duration.
Result Measure(const std::string& mode, const std::string& scenario, int64_t clients,
               int64_t images, const Submitter& submit, gd::Engine& engine, const Flops& flops,
               double peak) {
  const double duration = absl::GetFlag(FLAGS_seconds);
  const gd::EngineStats before = engine.stats();
  std::mutex mu;
  std::vector<double> latencies;
  int64_t errors = 0;
  absl::Status first_error;
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration<double>(duration);
  std::vector<std::thread> threads;
  for (int64_t c = 0; c < clients; ++c) {
    const bool guided = !UnguidedClient(c, absl::GetFlag(FLAGS_unguided_share));
    threads.emplace_back([&, c, guided] {
      uint64_t seed = static_cast<uint64_t>(c) << 32;
      do {
        const absl::StatusOr<double> latency = submit(images, seed++, guided);
        std::lock_guard<std::mutex> lock(mu);
        if (!latency.ok()) {
          if (errors++ == 0) first_error = latency.status();
          return;
        }
        latencies.push_back(*latency);
      } while (Clock::now() < end);
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const gd::EngineStats after = engine.stats();
  Result r;
  r.mode = mode;
  r.scenario = scenario;
  r.n = scenario == "batch" ? images : clients;
  r.requests = static_cast<int64_t>(latencies.size());
  r.images = r.requests * images;
  r.seconds = seconds;
  r.images_per_s = static_cast<double>(r.images) / seconds;
  const double iterations = static_cast<double>(after.iterations - before.iterations);
  const double slot_steps = static_cast<double>(after.slot_steps - before.slot_steps);
  const double guided = static_cast<double>(after.guided_slot_steps - before.guided_slot_steps);
  r.forwards_per_s = iterations / seconds;
  r.mean_batch = iterations > 0 ? slot_steps / iterations : 0;
  // The classifier's input-gradient backward costs about as much as its forward.
  r.gflops = (flops.unet_per_image * slot_steps + 2 * flops.classifier_per_image * guided) /
             seconds / 1e9;
  r.peak_fraction = peak > 0 ? r.gflops / peak : 0;
  const double step_seconds = after.step_seconds - before.step_seconds;
  r.unet_share = step_seconds > 0 ? (after.forward_seconds - before.forward_seconds) / step_seconds : 0;
  const double lane_seconds = after.lane_seconds - before.lane_seconds;
  r.lane_idle = lane_seconds > 0 ? (after.lane_idle_seconds - before.lane_idle_seconds) / lane_seconds : 0;
  r.p50 = Percentile(latencies, 0.50);
  r.p95 = Percentile(latencies, 0.95);
  r.p99 = Percentile(latencies, 0.99);
  if (errors > 0) {
    std::cerr << "gd-bench: " << errors << " request(s) failed, the first with " << first_error
              << "\n";
  }
  return r;
}

void Print(const Result& r) {
  std::printf("%-6s %-11s %4lld | %7.2f img/s | %6.2f fwd/s | batch %5.1f | %7.1f GFLOP/s (%4.1f%%) "
              "| p50 %6.2f s p95 %6.2f s p99 %6.2f s | UNet %2.0f%% of step | lanes idle %2.0f%% "
              "| %lld req\n",
              r.mode.c_str(), r.scenario.c_str(), static_cast<long long>(r.n), r.images_per_s,
              r.forwards_per_s, r.mean_batch, r.gflops, 100 * r.peak_fraction, r.p50, r.p95,
              r.p99, 100 * r.unet_share, 100 * r.lane_idle, static_cast<long long>(r.requests));
  std::fflush(stdout);
}

// --profile: one warm-up and one profiled request per size; prints (and with --markdown writes)
// the tables. Returns the exit code.
int RunProfiles(const std::vector<int64_t>& sizes, const Submitter& submit, gd::Engine& engine,
                const gd::ModelBundle& m, double peak) {
  std::string markdown;
  for (int64_t images : sizes) {
    if (images > engine.max_images_per_request()) {
      std::cerr << "gd-bench: --profile " << images << " is more than --max_batch\n";
      return 2;
    }
    if (absl::StatusOr<double> warm_up = submit(images, 1, true); !warm_up.ok()) {
      std::cerr << "gd-bench: the warm-up request of " << images << " images failed with "
                << warm_up.status() << "\n";
      return 1;
    }
    const gd::EngineStats before = engine.stats();
    absl::StatusOr<double> seconds;
    gd::OpProfile::Table table;
    std::vector<gd::OpProfile::Operator> operators;
    {
      gd::OpProfile profile;
      seconds = submit(images, 1, true);
      table = profile.table();
      operators = profile.operators();
    }
    if (!seconds.ok()) {
      std::cerr << "gd-bench: the profiled request of " << images << " images failed with "
                << seconds.status() << "\n";
      return 1;
    }
    gd::bench::ProfileRun run;
    run.title = absl::StrFormat("batch %d, %s, classifier_scale %g", images, SamplerDescription(),
                                m.has_classifier() ? absl::GetFlag(FLAGS_classifier_scale) : 0.0);
    run.steps = engine.stats().iterations - before.iterations;
    run.seconds = *seconds;
    run.peak_gflops = peak;
    const auto top = static_cast<size_t>(std::max(0, absl::GetFlag(FLAGS_profile_operators)));
    std::printf("%s\n", gd::bench::FormatProfileText(run, table).c_str());
    absl::StrAppend(&markdown, gd::bench::FormatProfileMarkdown(run, table), "\n");
    if (top > 0) {
      std::printf("%s\n", gd::bench::FormatTopOperatorsText(run, operators, top).c_str());
      absl::StrAppend(&markdown, gd::bench::FormatTopOperatorsMarkdown(run, operators, top), "\n");
    }
    std::fflush(stdout);
  }
  if (!absl::GetFlag(FLAGS_markdown).empty()) std::ofstream(absl::GetFlag(FLAGS_markdown)) << markdown;
  return 0;
}

absl::StatusOr<gd::ModelSpec> Spec() {
  if (absl::GetFlag(FLAGS_random_weights)) {
    if (absl::GetFlag(FLAGS_model_flags).empty()) {
      return absl::InvalidArgumentError("--random_weights needs --model_flags (and, for guided "
                                        "requests, --classifier_flags)");
    }
    gd::ModelSpec spec;
    spec.name = "random";
    spec.model_flags = absl::GetFlag(FLAGS_model_flags);
    spec.classifier_flags = absl::GetFlag(FLAGS_classifier_flags);
    spec.random_weights = true;
    return spec;
  }
  if (!absl::GetFlag(FLAGS_model_path).empty()) {
    gd::ModelSpec spec;
    spec.name = "model";
    spec.model_path = absl::GetFlag(FLAGS_model_path);
    spec.model_flags = absl::GetFlag(FLAGS_model_flags);
    spec.classifier_path = absl::GetFlag(FLAGS_classifier_path);
    spec.classifier_flags = absl::GetFlag(FLAGS_classifier_flags);
    return spec;
  }
  std::string dir = absl::GetFlag(FLAGS_model_dir);
  if (dir.empty()) dir = gd::FindBundledModelDir("model.json");
  if (dir.empty()) {
    return absl::NotFoundError("the bundled model was not found (see gd-server's search in "
                               "docs/flags.md); give --model_dir or --model_path");
  }
  return gd::ReadModelDir(dir);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("measures sampling throughput and latency; see docs/benchmarks.md");
  absl::ParseCommandLine(argc, argv);
  const std::string memory = gd::ConfigureAllocator();
  const std::vector<int64_t> concurrency =
      ParseList("concurrency", absl::GetFlag(FLAGS_concurrency));
  const std::vector<int64_t> batches = ParseList("batches", absl::GetFlag(FLAGS_batches));
  const double unguided_share = absl::GetFlag(FLAGS_unguided_share);
  if (!(unguided_share >= 0 && unguided_share <= 1)) {
    std::cerr << "gd-bench: --unguided_share = " << unguided_share << " is not in [0, 1]\n";
    return 2;
  }
  spdlog::set_level(spdlog::level::warn);  // no per-request log lines in the figures' way
  const int threads = absl::GetFlag(FLAGS_threads) > 0
                          ? absl::GetFlag(FLAGS_threads)
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(threads);
  at::globalContext().setUserEnabledMkldnn(absl::GetFlag(FLAGS_mkldnn));
  auto spec = Spec();
  if (!spec.ok()) {
    std::cerr << "gd-bench: " << spec.status().message() << "\n";
    return 1;
  }
  auto precision = gd::ParsePrecision(absl::GetFlag(FLAGS_dtype));
  if (!precision.ok()) {
    std::cerr << "gd-bench: " << precision.status().message() << "\n";
    return 1;
  }
  const torch::Device device(absl::GetFlag(FLAGS_device));
  auto bundle = gd::LoadModelBundle(*spec, device, *precision);
  if (!bundle.ok()) {
    std::cerr << "gd-bench: " << bundle.status().message() << "\n";
    return 1;
  }
  gd::ModelBundle& m = **bundle;
  const Flops flops = CountFlops(m);
  const double peak = MatmulPeak(device);
  std::printf("model %s: %dx%dx%d, UNet %.3f GFLOP/forward/image, classifier %.3f GFLOP "
              "forward/image (x2 with its input gradient)\n",
              m.name.c_str(), static_cast<int>(m.channels()), static_cast<int>(m.image_size()),
              static_cast<int>(m.image_size()), flops.unet_per_image / 1e9,
              flops.classifier_per_image / 1e9);
  std::printf("machine: %u cores, %d threads, %s %s, matmul peak %.1f GFLOP/s (fp32 1024^3)\n",
              std::thread::hardware_concurrency(), threads, device.str().c_str(),
              gd::ToString(*precision), peak);
  // A profile books each operator on whatever thread ran it, so lanes side by side would add up
  // to more than the step: it takes one lane unless told otherwise.
  const bool profiling = !absl::GetFlag(FLAGS_profile).empty();
  const int64_t lanes = absl::GetFlag(FLAGS_lanes) != 0 ? absl::GetFlag(FLAGS_lanes)
                        : profiling                     ? 1
                                                        : gd::DefaultLanes(device.is_cpu(), threads);
  std::printf("oneDNN %s, channels_last %s, lanes %lld, memory: %s\n",
              absl::GetFlag(FLAGS_mkldnn) ? "on" : "off",
              absl::GetFlag(FLAGS_channels_last) ? "on" : "off", static_cast<long long>(lanes),
              memory.c_str());
  std::printf("requests: %s, classifier_scale %g, unguided share of concurrent clients %g\n",
              SamplerDescription().c_str(), RequestScale(m, true), unguided_share);

  gd::EngineOptions options;
  options.max_batch = absl::GetFlag(FLAGS_max_batch);
  options.max_queue_images = 4096;
  options.max_images_per_request = options.max_batch;
  options.channels_last = absl::GetFlag(FLAGS_channels_last);
  options.lanes = lanes;
  options.threads = threads;
  auto created = gd::Engine::Create(*bundle, options);
  if (!created.ok()) {
    std::cerr << "gd-bench: " << created.status().message() << "\n";
    return 1;
  }
  std::shared_ptr<gd::Engine> engine(std::move(*created));
  std::vector<Result> results;
  const Submitter in_process = EngineSubmitter(*engine, m);
  // Warm up (allocator, oneDNN primitives); a request that fails here fails in every scenario.
  if (absl::StatusOr<double> warm_up = in_process(1, 0, true); !warm_up.ok()) {
    std::cerr << "gd-bench: the warm-up request failed with " << warm_up.status() << "\n";
    return 1;
  }
  if (!absl::GetFlag(FLAGS_profile).empty()) {
    if (!device.is_cpu()) {
      std::cerr << "gd-bench: --profile times operators on the CPU; on CUDA it would time kernel "
                   "launches (use Nsight Systems there)\n";
      return 2;
    }
    const int code = RunProfiles(ParseList("profile", absl::GetFlag(FLAGS_profile)), in_process,
                                 *engine, m, peak);
    engine->Shutdown(Clock::now() + std::chrono::seconds(30));
    return code;
  }
  // Every scenario through one way of submitting ("engine" in process, "grpc" on loopback).
  auto run_scenarios = [&](const char* mode, const Submitter& submit) {
    for (int64_t c : concurrency) {
      results.push_back(Measure(mode, "concurrency", c, 1, submit, *engine, flops, peak));
      Print(results.back());
    }
    for (int64_t b : batches) {
      if (b > options.max_batch) continue;  // would be refused: more images than slots
      results.push_back(Measure(mode, "batch", 1, b, submit, *engine, flops, peak));
      Print(results.back());
    }
  };
  run_scenarios("engine", in_process);

#ifdef GD_BENCH_GRPC
  if (absl::GetFlag(FLAGS_grpc)) {
    auto registry = std::make_shared<gd::server::ModelRegistry>();
    registry->Add(engine, true);
    gd::server::SamplerService service(registry, {});
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetMaxSendMessageSize(256 << 20);
    builder.RegisterService(&service);
    auto server = builder.BuildAndStart();
    gd::client::ClientOptions client_options;
    client_options.target = absl::StrCat("127.0.0.1:", port);
    auto client = gd::client::SamplerClient::Create(client_options);
    if (server && client.ok()) {
      const Submitter over_grpc = [&](int64_t images, uint64_t seed,
                                      bool guided) -> absl::StatusOr<double> {
        guided_diffusion::v1::SampleRequest request;
        for (int64_t i = 0; i < images; ++i) request.add_labels(i % std::max<int64_t>(1, m.num_classes()));
        if (m.num_classes() == 0) {
          request.clear_labels();
          request.set_num_samples(static_cast<uint32_t>(images));
        }
        request.set_classifier_scale(RequestScale(m, guided));
        SetSampler(request);
        request.set_seed(seed);
        const auto start = Clock::now();
        RETURN_IF_ERROR((*client)->Sample(request).status());
        return std::chrono::duration<double>(Clock::now() - start).count();
      };
      run_scenarios("grpc", over_grpc);
      server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    } else {
      std::cerr << "gd-bench: cannot start the loopback gRPC server; gRPC rows skipped\n";
    }
  }
#endif
  engine->Shutdown(Clock::now() + std::chrono::seconds(30));

  nlohmann::json json = {
      {"model", m.name},
      {"image", {m.channels(), m.image_size(), m.image_size()}},
      {"device", device.str()},
      {"dtype", gd::ToString(*precision)},
      {"threads", threads},
      {"mkldnn", absl::GetFlag(FLAGS_mkldnn)},
      {"channels_last", absl::GetFlag(FLAGS_channels_last)},
      {"lanes", options.lanes},
      {"max_batch", absl::GetFlag(FLAGS_max_batch)},
      {"cores", std::thread::hardware_concurrency()},
      {"sampler", SamplerDescription()},
      {"classifier_scale", RequestScale(m, true)},
      {"unguided_share", unguided_share},
      {"unet_gflop_per_image", flops.unet_per_image / 1e9},
      {"classifier_gflop_per_image", flops.classifier_per_image / 1e9},
      {"matmul_peak_gflops", peak},
      {"results", nlohmann::json::array()}};
  std::string md = absl::StrFormat(
      "| mode | scenario | n | images/s | UNet forwards/s | mean batch | GFLOP/s | of peak | p50 s | "
      "p95 s | p99 s | lanes idle |\n"
      "| --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |\n");
  for (const Result& r : results) {
    json["results"].push_back({{"mode", r.mode}, {"scenario", r.scenario}, {"n", r.n},
                               {"requests", r.requests}, {"images", r.images},
                               {"seconds", r.seconds}, {"images_per_s", r.images_per_s},
                               {"forwards_per_s", r.forwards_per_s}, {"mean_batch", r.mean_batch},
                               {"gflops", r.gflops}, {"peak_fraction", r.peak_fraction},
                               {"latency_p50_s", r.p50}, {"latency_p95_s", r.p95},
                               {"latency_p99_s", r.p99}, {"unet_share_of_step", r.unet_share},
                               {"lane_idle_share", r.lane_idle}});
    absl::StrAppendFormat(&md,
                          "| %s | %s | %d | %.2f | %.2f | %.1f | %.1f | %.1f%% | %.2f | %.2f | %.2f "
                          "| %.0f%% |\n",
                          r.mode, r.scenario, r.n, r.images_per_s, r.forwards_per_s, r.mean_batch,
                          r.gflops, 100 * r.peak_fraction, r.p50, r.p95, r.p99, 100 * r.lane_idle);
  }
  if (!absl::GetFlag(FLAGS_json).empty()) std::ofstream(absl::GetFlag(FLAGS_json)) << json.dump(2) << "\n";
  if (!absl::GetFlag(FLAGS_markdown).empty()) std::ofstream(absl::GetFlag(FLAGS_markdown)) << md;
  return 0;
}
