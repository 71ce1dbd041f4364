// The metrics endpoint (server/metrics.h) against misbehaving clients, over real sockets with its
// real limits (MetricsHttpOptions): a client that sends one header byte a second, idle
// connections and a 100 KB header must not keep /healthz, /readyz or /metrics from answering
// (issue 10, item 2). And a scrape's cost: gd_batch_size must not grow with the iterations an
// engine has run. Bounds are generous: the machine running this may be busy.
#include "server/metrics.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/http/raw_client.h"

namespace gd::server {
namespace {

using ::gd::http::testing::CloseAll;
using ::gd::http::testing::Exchange;
using ::gd::http::testing::Get;
using ::gd::http::testing::OpenIdleConnections;
using ::gd::http::testing::Reply;
using ::gd::http::testing::RequestText;
using ::gd::http::testing::SecondsSince;
using ::gd::http::testing::SlowClient;
using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

// What a probe may take while the endpoint is under attack, on a loaded 2-core machine.
constexpr double kProbeSeconds = 3.0;

class MetricsEndpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    metrics_ = std::make_shared<Metrics>(std::make_shared<ModelRegistry>());
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> http = MetricsHttpServer::Start(
        "127.0.0.1", 0, [this] { return metrics_->Render(); }, [this] { return ready_.load(); });
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = *std::move(http);
  }

  int port() const { return http_->port(); }

  // GETs `path` and checks its status and that it came within kProbeSeconds; the seconds it took.
  double Probe(const std::string& path, int status) {
    const auto asked = Clock::now();
    const Reply reply = Get(port(), path);
    const double seconds = SecondsSince(asked);
    EXPECT_EQ(reply.status, status) << path << ": " << reply.body;
    EXPECT_LT(seconds, kProbeSeconds) << path;
    return seconds;
  }

  std::shared_ptr<Metrics> metrics_;
  std::atomic<bool> ready_{true};
  std::unique_ptr<MetricsHttpServer> http_;
};

TEST_F(MetricsEndpointTest, RoutesAnswerAsProbesExpect) {
  Reply reply = Get(port(), "/metrics");
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.Header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_THAT(reply.body, HasSubstr("# TYPE gd_requests_total counter"));
  EXPECT_EQ(Get(port(), "/healthz").body, "ok\n");
  EXPECT_EQ(Get(port(), "/readyz").status, 200);
  ready_ = false;
  reply = Get(port(), "/readyz");
  EXPECT_EQ(reply.status, 503);
  EXPECT_EQ(reply.body, "not ready\n");
  EXPECT_EQ(Get(port(), "/nothing").status, 404);
  reply = Exchange(port(), RequestText("POST", "/metrics", port()));
  EXPECT_EQ(reply.status, 405);
  EXPECT_EQ(reply.Header("Allow"), "GET, HEAD");
  reply = Exchange(port(), RequestText("HEAD", "/healthz", port()));
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.body, "");
}

// One header byte a second: the request would take a minute. Probes are answered meanwhile, and
// the slow client is cut off at the request deadline.
TEST_F(MetricsEndpointTest, ASlowLorisClientDoesNotBlockProbes) {
  // The request line at once, then a minute's worth of header, a byte a second.
  const std::string trickled = "X-Slow: " + std::string(50, 's') + "\r\n\r\n";
  const auto start = Clock::now();
  SlowClient slow(port(), absl::StrCat("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:", port(), "\r\n"),
                  trickled, std::chrono::milliseconds(1'000));
  double worst = 0;
  // Probes while the slow client is connected and trickling (3 of its bytes).
  while (slow.sent() < 3 && SecondsSince(start) < 20 &&
         !slow.WaitForEnd(std::chrono::milliseconds(100))) {
    for (const char* path : {"/healthz", "/readyz", "/metrics"}) {
      worst = std::max(worst, Probe(path, 200));
    }
  }
  EXPECT_GE(slow.sent(), 3);
  ASSERT_TRUE(slow.WaitForEnd(std::chrono::seconds(30)));
  const double cut_off = SecondsSince(start);
  EXPECT_EQ(slow.reply().status, 408);
  EXPECT_THAT(slow.reply().body, HasSubstr("did not arrive within 5000 ms"));
  EXPECT_LT(slow.sent(), static_cast<int>(trickled.size()));
  std::cout << absl::StrFormat(
      "slowest probe while the slow client trickled: %.3f s; it was cut off after %.1f s, %d of "
      "%d bytes sent\n",
      worst, cut_off, slow.sent(), trickled.size());
}

// Eight threads, five connections that send nothing: a scrape does not wait for them.
TEST_F(MetricsEndpointTest, IdleConnectionsDoNotDelayAScrape) {
  const std::vector<int> idle = OpenIdleConnections(port(), 5);
  double worst = 0;
  for (const char* path : {"/metrics", "/healthz", "/readyz"}) {
    worst = std::max(worst, Probe(path, 200));
  }
  CloseAll(idle);
  std::cout << absl::StrFormat("slowest probe behind 5 idle connections: %.3f s\n", worst);
}

TEST_F(MetricsEndpointTest, AHundredKilobyteHeaderIsRefused) {
  const Reply reply = Exchange(port(), RequestText("GET", "/metrics", port(), "", "",
                                                   "X-Big: " + std::string(100'000, 'b') + "\r\n"));
  EXPECT_EQ(reply.status, 431);
  EXPECT_THAT(reply.body, Not(HasSubstr("gd_requests_total")));
  Probe("/healthz", 200);  // and the endpoint goes on serving
}

// ---- The cost of a scrape ---------------------------------------------------------------------

EngineStats StatsAfter(int64_t iterations, int max_batch) {
  EngineStats stats;
  stats.batch_size_counts.assign(static_cast<size_t>(max_batch + 1), 0);
  // A mix of batch sizes, as a busy engine has: most iterations full, some not.
  stats.batch_size_counts[static_cast<size_t>(max_batch)] = iterations - iterations / 4;
  stats.batch_size_counts[3] = iterations / 4;
  stats.iterations = iterations;
  return stats;
}

// The fastest of `repeats` renders of gd_batch_size, in seconds.
double FastestRender(const EngineStats& stats, int repeats) {
  double fastest = 1e9;
  for (int i = 0; i < repeats; ++i) {
    const auto start = Clock::now();
    std::string out;
    BatchSizeHistogram(stats).Render("gd_batch_size", "model=\"m\"", &out);
    fastest = std::min(fastest, SecondsSince(start));
  }
  return fastest;
}

TEST(MetricsScrapeTest, BatchSizeHistogramCountsAndSums) {
  std::string out;
  BatchSizeHistogram(StatsAfter(1'000'000, 32)).Render("gd_batch_size", "model=\"m\"", &out);
  for (const std::string line :
       {"gd_batch_size_bucket{model=\"m\",le=\"2\"} 0",
        "gd_batch_size_bucket{model=\"m\",le=\"4\"} 250000",
        "gd_batch_size_bucket{model=\"m\",le=\"16\"} 250000",
        "gd_batch_size_bucket{model=\"m\",le=\"32\"} 1000000",
        "gd_batch_size_bucket{model=\"m\",le=\"+Inf\"} 1000000",
        "gd_batch_size_sum{model=\"m\"} 24750000", "gd_batch_size_count{model=\"m\"} 1000000"}) {
    EXPECT_THAT(out, HasSubstr(line + "\n")) << out;
  }
}

// A scrape after a million iterations costs what one after ten does (it used to observe every
// past iteration once, under the engine's lock).
TEST(MetricsScrapeTest, BatchSizeHistogramDoesNotGrowWithIterations) {
  const double after_ten = FastestRender(StatsAfter(10, 32), 50);
  const double after_a_million = FastestRender(StatsAfter(1'000'000, 32), 50);
  std::cout << absl::StrFormat(
      "gd_batch_size render: %.2f us after 10 iterations, %.2f us after "
      "1,000,000\n",
      after_ten * 1e6, after_a_million * 1e6);
  EXPECT_LE(after_a_million, 20 * after_ten + 200e-6);
}

TEST(MetricsScrapeTest, StepSecondsHistogramFromTheEnginesBuckets) {
  const std::vector<double> bounds = {0.1, 1};
  std::string out;
  Histogram::FromBucketCounts(bounds, {2, 0, 1}, 7.5)
      .Render("gd_unet_step_seconds", "model=\"m\"", &out);
  EXPECT_EQ(out,
            "gd_unet_step_seconds_bucket{model=\"m\",le=\"0.10000000000000001\"} 2\n"
            "gd_unet_step_seconds_bucket{model=\"m\",le=\"1\"} 2\n"
            "gd_unet_step_seconds_bucket{model=\"m\",le=\"+Inf\"} 3\n"
            "gd_unet_step_seconds_sum{model=\"m\"} 7.5\n"
            "gd_unet_step_seconds_count{model=\"m\"} 3\n");
  EXPECT_EQ(Histogram::BucketOf(bounds, 0.1), 0u);  // upper bounds are inclusive
  EXPECT_EQ(Histogram::BucketOf(bounds, 0.5), 1u);
  EXPECT_EQ(Histogram::BucketOf(bounds, 2), 2u);
}

}  // namespace
}  // namespace gd::server
