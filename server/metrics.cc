#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

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
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(
      static_cast<c10::DeviceIndex>(index));
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

void Histogram::Observe(double value) {
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

void Histogram::Render(const std::string& name, const std::string& labels,
                       std::string* out) const {
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
  absl::StrAppend(out, name, "_count", labels.empty() ? "" : "{" + labels + "}", " ", count_,
                  "\n");
}

Metrics::Metrics(std::shared_ptr<ModelRegistry> registry) : registry_(std::move(registry)) {
  start_time_ = std::chrono::duration<double>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
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
    const EngineStats s = e->stats();
    Histogram h({1, 2, 4, 8, 16, 32, 64, 128, 256});
    for (size_t b = 1; b < s.batch_size_counts.size(); ++b) {
      for (int64_t k = 0; k < s.batch_size_counts[b]; ++k) h.Observe(static_cast<double>(b));
    }
    h.Render("gd_batch_size", absl::StrCat("model=\"", Escape(e->bundle().name), "\""), &out);
  }
  Header(&out, "gd_unet_step_seconds", "histogram",
         "Duration of one engine iteration (UNet forward, guidance and update).");
  for (const auto& e : engines) {
    const EngineStats s = e->stats();
    const auto& bounds = EngineStats::StepSecondsBounds();
    const std::string labels = absl::StrCat("model=\"", Escape(e->bundle().name), "\"");
    int64_t cumulative = 0;
    for (size_t i = 0; i < bounds.size(); ++i) {
      cumulative += s.step_seconds_buckets[i];
      absl::StrAppend(&out, "gd_unet_step_seconds_bucket{", labels, ",le=\"", Number(bounds[i]),
                      "\"} ", cumulative, "\n");
    }
    cumulative += s.step_seconds_buckets.back();
    absl::StrAppend(&out, "gd_unet_step_seconds_bucket{", labels, ",le=\"+Inf\"} ", cumulative,
                    "\n", "gd_unet_step_seconds_sum{", labels, "} ", Number(s.step_seconds), "\n",
                    "gd_unet_step_seconds_count{", labels, "} ", s.iterations, "\n");
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

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& host, int port, std::function<std::string()> metrics,
    std::function<bool()> ready) {
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  server->metrics_ = std::move(metrics);
  server->ready_ = std::move(ready);
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("metrics: cannot create a socket");
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat("metrics: \"", host, "\" is not an IPv4 address"));
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 16) != 0) {
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot listen on ", host, ":", port, ": ", std::strerror(errno)));
  }
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  server->listen_fd_ = fd;
  server->port_ = ntohs(addr.sin_port);
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
}

void MetricsHttpServer::Serve() {
  while (!stopping_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    const int conn = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    // Read the request head (bounded; 2 s to arrive).
    std::string head;
    char buffer[2048];
    while (head.find("\r\n\r\n") == std::string::npos && head.size() < 16384) {
      pollfd c{conn, POLLIN, 0};
      if (poll(&c, 1, 2000) <= 0) break;
      const ssize_t n = read(conn, buffer, sizeof(buffer));
      if (n <= 0) break;
      head.append(buffer, static_cast<size_t>(n));
    }
    std::string path = "/";
    const size_t sp1 = head.find(' ');
    const size_t sp2 = sp1 == std::string::npos ? sp1 : head.find(' ', sp1 + 1);
    const bool get = head.rfind("GET ", 0) == 0;
    if (sp2 != std::string::npos) path = head.substr(sp1 + 1, sp2 - sp1 - 1);
    if (const size_t q = path.find('?'); q != std::string::npos) path.resize(q);
    int code = 200;
    std::string body, type = "text/plain; charset=utf-8";
    if (!get) {
      code = 405;
      body = "only GET\n";
    } else if (path == "/metrics") {
      body = metrics_();
      type = "text/plain; version=0.0.4; charset=utf-8";
    } else if (path == "/healthz") {
      body = "ok\n";
    } else if (path == "/readyz") {
      const bool ready = ready_();
      code = ready ? 200 : 503;
      body = ready ? "ready\n" : "not ready\n";
    } else {
      code = 404;
      body = "not found: /metrics, /healthz, /readyz\n";
    }
    const char* reason = code == 200 ? "OK" : code == 503 ? "Service Unavailable"
                                          : code == 404 ? "Not Found" : "Method Not Allowed";
    const std::string response =
        absl::StrCat("HTTP/1.1 ", code, " ", reason, "\r\nContent-Type: ", type,
                     "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
    size_t sent = 0;
    while (sent < response.size()) {
      const ssize_t n = send(conn, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    close(conn);
  }
}

}  // namespace gd::server
