// Prometheus metrics of the service, in the text exposition format (version 0.0.4), and the
// small HTTP endpoint that serves them with /healthz and /readyz. Request counters and latency
// histograms are fed by the service; engine figures (queue depth, active slots, batch sizes,
// step latency) are read from the engines at scrape time.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model_registry.h"
#include "server/sampler_service.h"

namespace gd::server {

// Cumulative histogram with fixed upper bounds.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  // Appends `name_bucket{labels,le="..."}`, `name_sum`, `name_count` lines.
  void Render(const std::string& name, const std::string& labels, std::string* out) const;

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bucket, not cumulative; last = +Inf
  double sum_ = 0;
  int64_t count_ = 0;
};

class Metrics {
 public:
  explicit Metrics(std::shared_ptr<ModelRegistry> registry);

  void RequestFinished(const RequestRecord& record);
  // The whole exposition text.
  std::string Render() const;

 private:
  std::shared_ptr<ModelRegistry> registry_;
  mutable std::mutex mu_;
  // (model, method, sampler, code) -> count
  std::map<std::tuple<std::string, std::string, std::string, std::string>, int64_t> requests_;
  std::map<std::string, Histogram> request_seconds_;
  std::map<std::string, Histogram> queue_seconds_;
  double start_time_ = 0;
};

// A minimal HTTP/1.1 server for scrapes and probes: GET /metrics, /healthz (alive), /readyz
// (200 when `ready()` says so, else 503). One short-lived connection at a time is plenty for a
// scraper and a kubelet.
class MetricsHttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& host, int port, std::function<std::string()> metrics,
      std::function<bool()> ready);
  ~MetricsHttpServer();
  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  void Serve();

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::function<std::string()> metrics_;
  std::function<bool()> ready_;
  std::thread thread_;
};

}  // namespace gd::server
