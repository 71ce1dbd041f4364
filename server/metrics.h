// Prometheus metrics of the service, in the text exposition format (version 0.0.4), and the
// HTTP endpoint (gd_http) that serves them with /healthz and /readyz. Request counters and
// latency histograms are fed by the service; engine figures (queue depth, active slots, batch
// sizes, step latency) are read from the engines at scrape time, in time that does not grow with
// the engines' iteration counts.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "http/server.h"
#include "server/model_registry.h"
#include "server/sampler_service.h"

namespace gd::server {

// Cumulative histogram with fixed upper bounds.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  // A histogram someone else counted: `counts` per bucket of `bounds` (not cumulative), +Inf
  // last, as EngineStats::step_seconds_buckets. Their sizes must agree.
  static Histogram FromBucketCounts(std::vector<double> bounds, std::vector<int64_t> counts,
                                    double sum);
  // `times` observations of `value` at once.
  void Observe(double value, int64_t times = 1);
  // Appends `name_bucket{labels,le="..."}`, `name_sum`, `name_count` lines.
  void Render(const std::string& name, const std::string& labels, std::string* out) const;

  // The bucket of `value`: the first upper bound >= value, bounds.size() for +Inf.
  static size_t BucketOf(const std::vector<double>& bounds, double value);

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bucket, not cumulative; last = +Inf
  double sum_ = 0;
  int64_t count_ = 0;
};

// gd_batch_size of one engine, from its iterations per batch size: O(max batch), whatever the
// number of iterations.
Histogram BatchSizeHistogram(const EngineStats& stats);

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

// The metrics endpoint's HTTP limits (docs/deploy.md): 8 connections served at once and 32
// queued, 2 s between request bytes, 5 s for a whole request, 5 s for a scraper to take a write,
// 8 KiB of request head, 4 KiB of body. A client that trickles its request holds one of the 8
// threads for at most 5 s; an idle connection for at most 2 s.
http::ServerOptions MetricsHttpOptions();

// Scrapes and probes: GET (or HEAD) /metrics, /healthz (alive), /readyz (200 when `ready()` says
// so, else 503), on gd_http's threads.
class MetricsHttpServer {
 public:
  // UNAVAILABLE when host:port cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& host, int port, std::function<std::string()> metrics,
      std::function<bool()> ready, http::ServerOptions options = MetricsHttpOptions());
  int port() const { return http_->port(); }

 private:
  MetricsHttpServer(std::function<std::string()> metrics, std::function<bool()> ready)
      : metrics_(std::move(metrics)), ready_(std::move(ready)) {}
  void Handle(const http::Request& request, http::Response& response) const;

  const std::function<std::string()> metrics_;
  const std::function<bool()> ready_;
  std::unique_ptr<http::Server> http_;  // last: stops (joining its threads) before the above go
};

}  // namespace gd::server
