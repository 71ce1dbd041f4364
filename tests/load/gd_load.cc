// gd-load: a bounded load run against a running gd-server, as many misbehaving callers would
// make it. `--callers` threads share `--requests` requests: Sample and StreamSample, every sampler
// the model offers, classifier scales 0 to --max_scale, 1 to --max_images images; a fraction
// cancel mid-stream and a fraction carry deadlines too short to finish. Every answer is checked
// (image count, labels echoed, finite values in [-1, 1], and the same request twice gives the same
// images within the documented 5e-3), every status counted (anything but OK, CANCELLED,
// DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED fails the run; a full queue is retried with backoff), the server's RSS sampled every second
// from its metrics endpoint, and after the run its queue and batch must be empty. `--runs 2`
// repeats the identical workload and fails when RSS after the second run is more than
// --rss_growth above RSS after the first. Exit 0 when every check holds; see docs/reliability.md.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/gd_client.h"
#include "client/sampler_settings.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "gd-server's gRPC address.");
ABSL_FLAG(std::string, metrics, "",
          "gd-server's metrics address HOST:PORT (RSS samples and the after-run checks); "
          "\"\" skips them.");
ABSL_FLAG(std::string, model, "", "Model to sample (\"\": the server's default).");
ABSL_FLAG(int, callers, 32, "Concurrent callers.");
ABSL_FLAG(int, requests, 150, "Requests per run, shared by the callers.");
ABSL_FLAG(int, min_steps, 5, "Fewest steps of a request (DDIM ddimK, DDPM K, DPM-Solver++ K).");
ABSL_FLAG(int, max_steps, 10, "Most steps of a request.");
ABSL_FLAG(int, max_images, 8, "Most images of a request (at least 1).");
ABSL_FLAG(double, max_scale, 10, "Largest classifier scale (models with a classifier).");
ABSL_FLAG(double, cancel_fraction, 0.2, "Fraction of requests cancelled after their first step.");
ABSL_FLAG(double, deadline_fraction, 0.05, "Fraction of requests with a deadline too short.");
ABSL_FLAG(int, deadline_ms, 30, "The too-short deadline.");
ABSL_FLAG(int, max_retries, 30,
          "Retries of a request refused RESOURCE_EXHAUSTED (queue full), with backoff, as the "
          "gd CLI does; 0 = none.");
ABSL_FLAG(int, runs, 1, "Identical runs, one after another (RSS is compared between them).");
ABSL_FLAG(double, rss_growth, 0.10, "Largest RSS growth from the first run's end to the last's.");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the workload (the same seed gives the same requests).");
ABSL_FLAG(std::string, json, "", "Write the figures as JSON here.");

namespace {

namespace v1 = ::guided_diffusion::v1;
using Clock = std::chrono::steady_clock;

// Same request twice, same images: the service's documented batch-composition tolerance.
constexpr double kReproducibility = 5e-3;

struct Planned {
  int spec = 0;  // requests with the same spec are identical and must give the same images
  v1::SampleRequest request;
  bool stream = false;
  bool cancel = false;
  bool deadline = false;
};

// Request `index` of the workload. Specs repeat (about two requests each) so that
// reproducibility is checked under load; what a caller does with it (stream, cancel, deadline)
// is drawn per request.
Planned Plan(int index, const v1::ModelInfo& model) {
  Planned p;
  const int specs = std::max(1, absl::GetFlag(FLAGS_requests) / 2);
  p.spec = index % specs;
  std::mt19937_64 spec_rng(absl::GetFlag(FLAGS_seed) * 1000003 + p.spec);
  auto uniform = [](std::mt19937_64& rng, int lo, int hi) {
    return std::uniform_int_distribution<int>(lo, hi)(rng);
  };
  v1::SampleRequest& r = p.request;
  r.set_model(absl::GetFlag(FLAGS_model));
  const int max_images = std::min<int>(absl::GetFlag(FLAGS_max_images),
                                       static_cast<int>(model.max_images_per_request()));
  const int images = uniform(spec_rng, 1, std::max(1, max_images));
  if (model.num_classes() > 0) {
    for (int i = 0; i < images; ++i) {
      r.add_labels(uniform(spec_rng, 0, static_cast<int>(model.num_classes()) - 1));
    }
  } else {
    r.set_num_samples(images);
  }
  if (model.has_classifier()) {
    r.set_classifier_scale(std::uniform_real_distribution<double>(0, absl::GetFlag(FLAGS_max_scale))(spec_rng));
  }
  const v1::SamplerKind sampler = model.samplers(uniform(spec_rng, 0, model.samplers_size() - 1));
  const int steps = uniform(spec_rng, absl::GetFlag(FLAGS_min_steps), absl::GetFlag(FLAGS_max_steps));
  r.set_sampler(sampler);
  if (sampler == v1::SAMPLER_KIND_DPM_SOLVER_PP) {
    r.set_steps(steps);
    r.set_solver_order(uniform(spec_rng, 1, 3));
  } else if (sampler == v1::SAMPLER_KIND_DDIM) {
    r.set_timestep_respacing(absl::StrCat("ddim", steps));
  } else {
    r.set_timestep_respacing(absl::StrCat(steps));
  }
  r.set_seed(spec_rng());
  r.mutable_output()->set_float32(true);
  r.mutable_output()->set_skip_png(true);
  std::mt19937_64 call_rng(absl::GetFlag(FLAGS_seed) * 7919 + index);
  std::uniform_real_distribution<double> unit(0, 1);
  const double fate = unit(call_rng);
  p.cancel = fate < absl::GetFlag(FLAGS_cancel_fraction);
  p.deadline = !p.cancel &&
               fate < absl::GetFlag(FLAGS_cancel_fraction) + absl::GetFlag(FLAGS_deadline_fraction);
  p.stream = p.cancel || unit(call_rng) < 0.5;
  return p;
}

// The checks of one successful answer; "" when it holds.
std::string CheckAnswer(const v1::SampleRequest& request, const v1::SampleResponse& response,
                        const v1::ModelInfo& model, std::vector<float>* values) {
  const int64_t images = request.labels_size() > 0 ? request.labels_size() : request.num_samples();
  if (response.labels_size() != images) {
    return absl::StrCat(response.labels_size(), " labels for ", images, " images");
  }
  for (int i = 0; i < request.labels_size(); ++i) {
    if (response.labels(i) != request.labels(i)) return absl::StrCat("label ", i, " not echoed");
  }
  auto array = gd::client::TensorToArray(response.samples(), "samples");
  if (!array.ok()) return std::string(array.status().message());
  const std::vector<int64_t> shape = {images, model.channels(), model.image_size(), model.image_size()};
  if (array->shape != shape || array->dtype != gd::formats::DType::kFloat32) {
    return "samples have the wrong shape or dtype";
  }
  values->resize(static_cast<size_t>(array->numel()));
  std::memcpy(values->data(), array->data.data(), array->data.size());
  for (float v : *values) {
    if (!std::isfinite(v) || v < -1 || v > 1) return absl::StrCat("sample value ", v, " outside [-1, 1]");
  }
  return "";
}

// Sums of the samples of each metric in a Prometheus text page ("name{labels} value" lines).
std::map<std::string, double> ParseMetrics(const std::string& page) {
  std::map<std::string, double> sums;
  for (absl::string_view line : absl::StrSplit(page, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    double value = 0;
    if (!absl::SimpleAtod(line.substr(space + 1), &value)) continue;
    const absl::string_view name = line.substr(0, std::min(line.find('{'), space));
    sums[std::string(name)] += value;
  }
  return sums;
}

std::optional<std::map<std::string, double>> Scrape() {
  const std::string address = absl::GetFlag(FLAGS_metrics);
  if (address.empty()) return std::nullopt;
  httplib::Client http("http://" + address);
  http.set_connection_timeout(2);
  http.set_read_timeout(5);
  auto response = http.Get("/metrics");
  if (!response || response->status != 200) return std::nullopt;
  return ParseMetrics(response->body);
}

// Samples gd_process_resident_memory_bytes every second while it lives.
class RssSampler {
 public:
  RssSampler() : thread_([this] { Loop(); }) {}
  ~RssSampler() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  double max() const {
    std::lock_guard<std::mutex> lock(mu_);
    return max_;
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      lock.unlock();
      auto metrics = Scrape();
      lock.lock();
      if (metrics) max_ = std::max(max_, (*metrics)["gd_process_resident_memory_bytes"]);
      cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; });
    }
  }
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  double max_ = 0;
  std::thread thread_;
};

struct RunFigures {
  std::map<std::string, int> statuses;  // by status code name
  std::vector<std::string> failures;    // broken checks, one line each
  std::vector<double> latencies;        // of OK requests, seconds
  int64_t images = 0;                   // of OK requests
  int refusals = 0;                     // RESOURCE_EXHAUSTED answers that were retried
  int compared = 0;                     // answers compared with an earlier one of the same spec
  double max_difference = 0;
  std::string max_difference_request;  // what the request with the largest difference asked
  double seconds = 0;
  double rss_max = 0, rss_after = 0;
};

// One request as its caller makes it: the final status and, when OK, the answer.
absl::StatusOr<v1::SampleResponse> Call(gd::client::SamplerClient& client,
                                        gd::client::SamplerClient& hasty, const Planned& p) {
  if (p.deadline) return p.stream ? hasty.StreamSample(p.request, [](const v1::SampleEvent&) { return true; })
                                  : hasty.Sample(p.request);
  if (!p.stream) return client.Sample(p.request);
  auto stream = client.OpenStream(p.request);
  v1::SampleEvent event;
  std::optional<v1::SampleResponse> result;
  while (stream->Next(&event)) {
    if (event.has_result()) result = event.result();
    if (p.cancel && event.has_step()) {
      stream->Cancel();
      break;
    }
  }
  absl::Status status = stream->Finish();
  if (!status.ok()) return status;
  if (!result) return absl::InternalError("the stream ended without a result");
  return *result;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

// Call, retrying a full queue with jittered exponential backoff (50-100 ms doubling to 1-2 s):
// the server asks callers to come back later. Counts the retries in `refusals`.
absl::StatusOr<v1::SampleResponse> CallWithRetries(gd::client::SamplerClient& client,
                                                   gd::client::SamplerClient& hasty,
                                                   const Planned& p, int index,
                                                   std::atomic<int>& refusals) {
  auto answer = Call(client, hasty, p);
  std::mt19937_64 jitter(index);
  for (int retry = 0; retry < absl::GetFlag(FLAGS_max_retries) &&
                      answer.status().code() == absl::StatusCode::kResourceExhausted;
       ++retry) {
    const int cap_ms = std::min(2000, 100 << std::min(retry, 5));
    std::this_thread::sleep_for(std::chrono::milliseconds(
        std::uniform_int_distribution<int>(cap_ms / 2, cap_ms)(jitter)));
    ++refusals;
    answer = Call(client, hasty, p);
  }
  return answer;
}

// The run's record of answers, shared by the callers.
class Recorder {
 public:
  explicit Recorder(const v1::ModelInfo& model) : model_(model) {}

  // Counts request `index`'s final status and checks its answer: the allowed statuses, the
  // answer's content, and the same images as an earlier answer to the same spec.
  void Add(int index, const Planned& p, const absl::StatusOr<v1::SampleResponse>& answer,
           double seconds) {
    std::vector<float> values;
    std::string broken;
    if (answer.ok()) broken = CheckAnswer(p.request, *answer, model_, &values);
    std::lock_guard<std::mutex> lock(mu_);
    const absl::StatusCode code = answer.status().code();
    ++f_.statuses[absl::StatusCodeToString(code)];
    if (!answer.ok()) {
      if (code != absl::StatusCode::kCancelled && code != absl::StatusCode::kDeadlineExceeded &&
          code != absl::StatusCode::kResourceExhausted) {
        f_.failures.push_back(absl::StrCat("request ", index, ": ", answer.status().ToString()));
      }
      return;
    }
    if (!broken.empty()) return f_.failures.push_back(absl::StrCat("request ", index, ": ", broken));
    f_.latencies.push_back(seconds);
    f_.images += static_cast<int64_t>(answer->labels_size());
    auto [first, fresh] = first_answer_.try_emplace(p.spec, values);
    if (!fresh) Compare(index, p, values, first->second);
  }

  RunFigures Take() { return std::move(f_); }

 private:
  void Compare(int index, const Planned& p, const std::vector<float>& values,
               const std::vector<float>& first) {
    double difference = 0;
    for (size_t k = 0; k < values.size(); ++k) {
      difference = std::max<double>(difference, std::abs(values[k] - first[k]));
    }
    ++f_.compared;
    if (difference > f_.max_difference) {
      f_.max_difference = difference;
      f_.max_difference_request = gd::client::DescribeRequest(p.request);
    }
    if (difference > kReproducibility) {
      f_.failures.push_back(absl::StrCat("request ", index, " differs from the same request by ",
                                         difference, " > ", kReproducibility));
    }
  }

  const v1::ModelInfo& model_;
  std::mutex mu_;
  RunFigures f_;
  std::map<int, std::vector<float>> first_answer_;  // by spec
};

RunFigures RunOnce(gd::client::SamplerClient& client, gd::client::SamplerClient& hasty,
                   const v1::ModelInfo& model) {
  Recorder recorder(model);
  std::atomic<int> next{0}, refusals{0};
  const int total = absl::GetFlag(FLAGS_requests);
  RssSampler rss;
  const auto start = Clock::now();
  std::vector<std::thread> callers;
  for (int c = 0; c < absl::GetFlag(FLAGS_callers); ++c) {
    callers.emplace_back([&] {
      for (int i = next++; i < total; i = next++) {
        const Planned p = Plan(i, model);
        const auto began = Clock::now();
        auto answer = CallWithRetries(client, hasty, p, i, refusals);
        recorder.Add(i, p, answer, std::chrono::duration<double>(Clock::now() - began).count());
      }
    });
  }
  for (auto& t : callers) t.join();
  RunFigures f = recorder.Take();
  f.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  f.rss_max = rss.max();
  f.refusals = refusals;
  return f;
}

// After a run nothing may stay queued or in the batch: polls the metrics for up to 10 s.
void CheckDrained(RunFigures& f) {
  std::optional<std::map<std::string, double>> m;
  for (int i = 0; i < 100; ++i) {
    m = Scrape();
    if (m && (*m)["gd_queue_images"] == 0 && (*m)["gd_active_slots"] == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!m) {
    f.failures.push_back("cannot read the metrics endpoint " + absl::GetFlag(FLAGS_metrics));
    return;
  }
  f.rss_after = (*m)["gd_process_resident_memory_bytes"];
  if ((*m)["gd_queue_images"] != 0 || (*m)["gd_active_slots"] != 0) {
    f.failures.push_back(absl::StrCat("after the run: gd_queue_images ", (*m)["gd_queue_images"],
                                      ", gd_active_slots ", (*m)["gd_active_slots"]));
  }
}

nlohmann::json Report(int run, const RunFigures& f) {
  const double mib = 1.0 / (1 << 20);
  std::printf("run %d: %zu OK of %d requests in %.1f s, %.2f images/s; latency p50 %.2f s p95 %.2f s "
              "p99 %.2f s; %d repeats compared, max difference %.2g (%s); RSS max %.0f MiB, after %.0f MiB\n",
              run, f.latencies.size(), absl::GetFlag(FLAGS_requests), f.seconds,
              static_cast<double>(f.images) / f.seconds, Percentile(f.latencies, 0.5),
              Percentile(f.latencies, 0.95), Percentile(f.latencies, 0.99), f.compared,
              f.max_difference, f.max_difference_request.c_str(), f.rss_max * mib,
              f.rss_after * mib);
  std::printf("run %d final statuses:", run);
  for (const auto& [code, n] : f.statuses) std::printf(" %s %d", code.c_str(), n);
  std::printf("; %d queue-full refusals retried\n", f.refusals);
  for (const std::string& failure : f.failures) std::printf("run %d FAILED: %s\n", run, failure.c_str());
  std::fflush(stdout);
  return {{"run", run},
          {"statuses", f.statuses},
          {"queue_full_retries", f.refusals},
          {"ok_requests", f.latencies.size()},
          {"images", f.images},
          {"seconds", f.seconds},
          {"images_per_s", static_cast<double>(f.images) / f.seconds},
          {"latency_p50_s", Percentile(f.latencies, 0.5)},
          {"latency_p95_s", Percentile(f.latencies, 0.95)},
          {"latency_p99_s", Percentile(f.latencies, 0.99)},
          {"repeats_compared", f.compared},
          {"max_repeat_difference", f.max_difference},
          {"max_repeat_difference_request", f.max_difference_request},
          {"rss_max_bytes", f.rss_max},
          {"rss_after_bytes", f.rss_after},
          {"failures", f.failures}};
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("a bounded load run against gd-server; see docs/reliability.md");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_callers) < 1 || absl::GetFlag(FLAGS_requests) < 1 ||
      absl::GetFlag(FLAGS_min_steps) < 1 || absl::GetFlag(FLAGS_max_steps) < absl::GetFlag(FLAGS_min_steps) ||
      absl::GetFlag(FLAGS_max_images) < 1 || absl::GetFlag(FLAGS_runs) < 1) {
    std::cerr << "gd-load: --callers, --requests, --min_steps, --max_images and --runs must be >= 1 "
                 "and --max_steps >= --min_steps\n";
    return 2;
  }
  gd::client::ClientOptions options;
  options.target = absl::GetFlag(FLAGS_server);
  auto client = gd::client::SamplerClient::Create(options);
  options.timeout_ms = absl::GetFlag(FLAGS_deadline_ms);
  auto hasty = gd::client::SamplerClient::Create(options);
  if (!client.ok() || !hasty.ok()) {
    std::cerr << "gd-load: " << (client.ok() ? hasty.status() : client.status()) << "\n";
    return 2;
  }
  auto model = (*client)->GetModel(absl::GetFlag(FLAGS_model));
  if (!model.ok()) {
    std::cerr << "gd-load: GetModel: " << model.status() << "\n";
    return 1;
  }
  std::printf("gd-load: %d callers, %d requests per run, %d run(s), model %s (%u classes, %s), "
              "steps %d-%d, 1-%d images, %.0f%% cancelled, %.0f%% with a %d ms deadline\n",
              absl::GetFlag(FLAGS_callers), absl::GetFlag(FLAGS_requests), absl::GetFlag(FLAGS_runs),
              model->name().c_str(), model->num_classes(),
              model->has_classifier() ? "guided" : "unguided", absl::GetFlag(FLAGS_min_steps),
              absl::GetFlag(FLAGS_max_steps), absl::GetFlag(FLAGS_max_images),
              100 * absl::GetFlag(FLAGS_cancel_fraction), 100 * absl::GetFlag(FLAGS_deadline_fraction),
              absl::GetFlag(FLAGS_deadline_ms));
  nlohmann::json json = {{"callers", absl::GetFlag(FLAGS_callers)},
                         {"requests", absl::GetFlag(FLAGS_requests)},
                         {"model", model->name()},
                         {"runs", nlohmann::json::array()}};
  bool failed = false;
  double first_rss = 0;
  for (int run = 1; run <= absl::GetFlag(FLAGS_runs); ++run) {
    RunFigures f = RunOnce(**client, **hasty, *model);
    if (!absl::GetFlag(FLAGS_metrics).empty()) CheckDrained(f);
    if (run == 1) first_rss = f.rss_after;
    if (run > 1 && first_rss > 0 && f.rss_after > first_rss * (1 + absl::GetFlag(FLAGS_rss_growth))) {
      f.failures.push_back(absl::StrCat("RSS grew from ", first_rss, " to ", f.rss_after,
                                        " bytes (more than --rss_growth)"));
    }
    failed |= !f.failures.empty();
    json["runs"].push_back(Report(run, f));
  }
  if (!absl::GetFlag(FLAGS_json).empty()) std::ofstream(absl::GetFlag(FLAGS_json)) << json.dump(2) << "\n";
  std::printf("gd-load: %s\n", failed ? "FAILED" : "every check held");
  return failed ? 1 : 0;
}
