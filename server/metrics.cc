#include "server/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status_macros.h"

#if GD_CUDA_MEMORY_STATS
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace gd::server {
namespace {

const std::vector<double>& LatencyBounds() {
  static const std::vector<double> bounds = {0.05, 0.1, 0.25, 0.5, 1,   2.5, 5,
                                             10,   30,  60,   120, 300, 600};
  return bounds;
}

const std::vector<double>& BatchSizeBounds() {
  static const std::vector<double> bounds = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  return bounds;
}

constexpr char kText[] = "text/plain; charset=utf-8";

std::string Escape(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string Number(double v) { return absl::StrFormat("%.17g", v); }

void Header(std::string* out, const std::string& name, const char* type, const char* help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t pages_total = 0, pages_resident = 0;
  statm >> pages_total >> pages_resident;
  return pages_resident * sysconf(_SC_PAGESIZE);
}

struct DeviceMemory {
  int64_t allocated = 0;  // bytes in live tensors
  int64_t reserved = 0;   // bytes the caching allocator holds from the driver
};

// The CUDA caching allocator's counters for one device; nullopt where LibTorch has no CUDA.
std::optional<DeviceMemory> CudaMemory(int index) {
#if GD_CUDA_MEMORY_STATS
  // Index 0 of each StatArray is the aggregate over pool types, in every LibTorch version.
  const auto stats =
      c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
  return DeviceMemory{static_cast<int64_t>(stats.allocated_bytes[0].current),
                      static_cast<int64_t>(stats.reserved_bytes[0].current)};
#else
  (void)index;
  return std::nullopt;
#endif
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

Histogram Histogram::FromBucketCounts(std::vector<double> bounds, std::vector<int64_t> counts,
                                      double sum) {
  Histogram histogram(std::move(bounds));
  for (size_t i = 0; i < counts.size() && i < histogram.counts_.size(); ++i) {
    histogram.counts_[i] = counts[i];
    histogram.count_ += counts[i];
  }
  histogram.sum_ = sum;
  return histogram;
}

size_t Histogram::BucketOf(const std::vector<double>& bounds, double value) {
  return static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), value) -
                             bounds.begin());
}

void Histogram::Observe(double value, int64_t times) {
  counts_[BucketOf(bounds_, value)] += times;
  sum_ += value * static_cast<double>(times);
  count_ += times;
}

void Histogram::Render(const std::string& name, const std::string& labels, std::string* out) const {
  const std::string sep = labels.empty() ? "" : ",";
  int64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    absl::StrAppend(out, name, "_bucket{", labels, sep, "le=\"", Number(bounds_[i]), "\"} ",
                    cumulative, "\n");
  }
  cumulative += counts_.back();
  absl::StrAppend(out, name, "_bucket{", labels, sep, "le=\"+Inf\"} ", cumulative, "\n");
  absl::StrAppend(out, name, "_sum", labels.empty() ? "" : "{" + labels + "}", " ", Number(sum_),
                  "\n");
  absl::StrAppend(out, name, "_count", labels.empty() ? "" : "{" + labels + "}", " ", count_, "\n");
}

Histogram BatchSizeHistogram(const EngineStats& stats) {
  Histogram histogram(BatchSizeBounds());
  for (size_t batch = 1; batch < stats.batch_size_counts.size(); ++batch) {
    if (stats.batch_size_counts[batch] > 0) {
      histogram.Observe(static_cast<double>(batch), stats.batch_size_counts[batch]);
    }
  }
  return histogram;
}

Metrics::Metrics(std::shared_ptr<ModelRegistry> registry) : registry_(std::move(registry)) {
  start_time_ =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void Metrics::RequestFinished(const RequestRecord& r) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string model = r.model.empty() ? "unknown" : r.model;
  ++requests_[{model, r.method, r.sampler.empty() ? "unknown" : r.sampler,
               absl::StatusCodeToString(r.code)}];
  auto [it, unused] = request_seconds_.try_emplace(model, LatencyBounds());
  it->second.Observe(r.seconds);
  if (r.code == absl::StatusCode::kOk) {
    auto [q, unused2] = queue_seconds_.try_emplace(model, LatencyBounds());
    q->second.Observe(r.queue_seconds);
  }
}

std::string Metrics::Render() const {
  std::string out;
  const auto engines = registry_->All();
  std::lock_guard<std::mutex> lock(mu_);

  Header(&out, "gd_requests_total", "counter",
         "Finished sampling requests by model, method, sampler and gRPC status code.");
  for (const auto& [key, count] : requests_) {
    const auto& [model, method, sampler, code] = key;
    absl::StrAppend(&out, "gd_requests_total{model=\"", Escape(model), "\",method=\"", method,
                    "\",sampler=\"", sampler, "\",code=\"", code, "\"} ", count, "\n");
  }
  Header(&out, "gd_images_generated_total", "counter", "Images sampled to completion.");
  for (const auto& e : engines) {
    absl::StrAppend(&out, "gd_images_generated_total{model=\"", Escape(e->bundle().name), "\"} ",
                    e->stats().images_completed, "\n");
  }
  Header(&out, "gd_queue_images", "gauge",
         "Images waiting for a place in the batch (the autoscaling signal).");
  for (const auto& e : engines) {
    absl::StrAppend(&out, "gd_queue_images{model=\"", Escape(e->bundle().name), "\"} ",
                    e->stats().queued_images, "\n");
  }
  Header(&out, "gd_active_slots", "gauge", "Images being denoised in the running batch.");
  for (const auto& e : engines) {
    absl::StrAppend(&out, "gd_active_slots{model=\"", Escape(e->bundle().name), "\"} ",
                    e->stats().active_slots, "\n");
  }
  Header(&out, "gd_max_batch", "gauge", "Configured slots per UNet forward.");
  for (const auto& e : engines) {
    absl::StrAppend(&out, "gd_max_batch{model=\"", Escape(e->bundle().name), "\"} ",
                    e->options().max_batch, "\n");
  }
  Header(&out, "gd_batch_size", "histogram", "Images per UNet forward.");
  for (const auto& e : engines) {
    BatchSizeHistogram(e->stats())
        .Render("gd_batch_size", absl::StrCat("model=\"", Escape(e->bundle().name), "\""), &out);
  }
  Header(&out, "gd_unet_step_seconds", "histogram",
         "Duration of one engine iteration (UNet forward, guidance and update).");
  for (const auto& e : engines) {
    const EngineStats s = e->stats();
    Histogram::FromBucketCounts(EngineStats::StepSecondsBounds(), s.step_seconds_buckets,
                                s.step_seconds)
        .Render("gd_unet_step_seconds", absl::StrCat("model=\"", Escape(e->bundle().name), "\""),
                &out);
  }
  Header(&out, "gd_request_duration_seconds", "histogram",
         "Time from a request's arrival to its completion.");
  for (const auto& [model, h] : request_seconds_) {
    h.Render("gd_request_duration_seconds", absl::StrCat("model=\"", Escape(model), "\""), &out);
  }
  Header(&out, "gd_queue_wait_seconds", "histogram",
         "Time a successful request waited for a place in the batch.");
  for (const auto& [model, h] : queue_seconds_) {
    h.Render("gd_queue_wait_seconds", absl::StrCat("model=\"", Escape(model), "\""), &out);
  }
  Header(&out, "gd_model_info", "gauge", "Loaded models (value 1) with their device and dtype.");
  for (const auto& e : engines) {
    const ModelBundle& m = e->bundle();
    absl::StrAppend(&out, "gd_model_info{model=\"", Escape(m.name), "\",device=\"", m.device.str(),
                    "\",dtype=\"", ToString(m.precision), "\",classifier=\"",
                    m.has_classifier() ? "true" : "false", "\"} 1\n");
  }
  Header(&out, "gd_process_resident_memory_bytes", "gauge", "Resident memory of the process.");
  absl::StrAppend(&out, "gd_process_resident_memory_bytes ", ResidentBytes(), "\n");
  std::set<int> cuda_devices;
  for (const auto& e : engines) {
    const torch::Device device = e->bundle().device;
    if (device.is_cuda()) cuda_devices.insert(device.has_index() ? device.index() : 0);
  }
  Header(&out, "gd_device_memory_allocated_bytes", "gauge",
         "Accelerator memory in live tensors, per CUDA device a model runs on.");
  Header(&out, "gd_device_memory_reserved_bytes", "gauge",
         "Accelerator memory held by the caching allocator, per CUDA device a model runs on.");
  for (int index : cuda_devices) {
    const auto memory = CudaMemory(index);
    if (!memory.has_value()) continue;
    const std::string label = absl::StrCat("{device=\"cuda:", index, "\"} ");
    absl::StrAppend(&out, "gd_device_memory_allocated_bytes", label, memory->allocated, "\n");
    absl::StrAppend(&out, "gd_device_memory_reserved_bytes", label, memory->reserved, "\n");
  }
  Header(&out, "gd_process_start_time_seconds", "gauge", "Unix time the process started.");
  absl::StrAppend(&out, "gd_process_start_time_seconds ", Number(start_time_), "\n");
  return out;
}

http::ServerOptions MetricsHttpOptions() {
  http::ServerOptions options;
  options.name = "metrics";
  options.threads = 8;
  options.max_queued_connections = 32;
  options.read_timeout = std::chrono::milliseconds(2'000);
  options.request_timeout = std::chrono::milliseconds(5'000);
  options.write_timeout = std::chrono::milliseconds(5'000);
  options.max_head_bytes = 8 << 10;
  options.max_body_bytes = 4 << 10;
  return options;
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& host, int port, std::function<std::string()> metrics,
    std::function<bool()> ready, http::ServerOptions options) {
  std::unique_ptr<MetricsHttpServer> server(
      new MetricsHttpServer(std::move(metrics), std::move(ready)));
  const MetricsHttpServer* self = server.get();
  const auto handle = [self](const http::Request& request, http::Response& response) {
    self->Handle(request, response);
  };
  ASSIGN_OR_RETURN(server->http_, http::Server::Start({host, port}, handle, options));
  return server;
}

void MetricsHttpServer::Handle(const http::Request& request, http::Response& response) const {
  if (request.method != "GET" && request.method != "HEAD") {
    return response.Send(405, kText, "only GET and HEAD\n", {{"Allow", "GET, HEAD"}});
  }
  if (request.path == "/metrics") {
    return response.Send(200, "text/plain; version=0.0.4; charset=utf-8", metrics_());
  }
  if (request.path == "/healthz") return response.Send(200, kText, "ok\n");
  if (request.path == "/readyz") {
    const bool ready = ready_();
    return response.Send(ready ? 200 : 503, kText, ready ? "ready\n" : "not ready\n");
  }
  response.Send(404, kText, "not found: /metrics, /healthz, /readyz\n");
}

}  // namespace gd::server
