// `gd view`: a web page that watches classifier-guided sampling live, served from the gd process,
// which holds the gRPC calls (the browser speaks HTTP only). Routes:
//
//   GET  /                          the page (HTML, CSS and JS in one document, no external assets)
//   GET  /api/models                ListModels as proto3 JSON
//   POST /api/sample                a SampleRequest as proto3 JSON (application/json) -> {"run_id"}
//                                   starts StreamSample with PNG x_t and pred_xstart at every step
//   GET  /api/runs/ID/events        server-sent events: accepted, step (newest), result | failed
//   POST /api/runs/ID/cancel        cancels the gRPC call (the server drops its images at once)
//   GET  /api/runs/ID/grid.png      the final images as one PNG grid (?columns=N)
//   GET  /api/runs/ID/images/K.png  final image K
//
// gRPC failures reach the page as {"code": "UNAVAILABLE", "code_number": 14, "message": ...}.
// Against other web sites (which must not start sampling with this process's credentials): a
// request whose Host is not an address this viewer listens on (or localhost) is refused 403, so
// is one whose Origin is another site's, and a POST without an Origin. A run no page watches for
// `abandon_after` is cancelled.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "client/gd_client.h"
#include "client/view_run.h"
#include "http/server.h"

namespace gd::client {

// The page, embedded at build time from client/view_page.html.
extern const char kViewPageHtml[];

// The viewer's HTTP limits (docs/viewer.md): 32 connections served at once (each event stream
// holds one), 64 more queued, 5 s between request bytes, 10 s for a whole request, 30 s for the
// browser to take a write, 16 KiB of head (cookies of other localhost apps count), 8 MiB of body
// (a SampleRequest with its starting noise).
http::ServerOptions ViewHttpOptions();

struct ViewServerOptions {
  http::ListenAddress listen{"127.0.0.1", 8080};
  http::ServerOptions http = ViewHttpOptions();
  // A running run that no page has watched for this long is cancelled (a closed tab).
  std::chrono::milliseconds abandon_after{30'000};
  int max_active_runs = 8;  // running at once; more: 429 RESOURCE_EXHAUSTED
  int max_kept_runs = 32;   // finished runs kept for their downloads, the oldest dropped first
  // A comment line sent on an idle event stream this often, so that proxies keep it open.
  std::chrono::milliseconds heartbeat{15'000};
  bool log = true;  // one line per run on stderr
};

class ViewServer {
 public:
  // Serves on options.listen at once. `client` must outlive the server.
  static absl::StatusOr<std::unique_ptr<ViewServer>> Start(SamplerClient& client,
                                                           ViewServerOptions options);
  // Cancels every run, closes every connection and joins every thread.
  ~ViewServer();
  ViewServer(const ViewServer&) = delete;
  ViewServer& operator=(const ViewServer&) = delete;

  int port() const { return http_->port(); }
  // "http://HOST:PORT/"
  std::string url() const;

 private:
  ViewServer(SamplerClient& client, ViewServerOptions options)
      : client_(client), options_(std::move(options)) {}

  void Handle(const http::Request& request, http::Response& response);
  // OK, or why the request is refused 403: a foreign Host or Origin (see the top of this file).
  absl::Status CheckCaller(const http::Request& request) const;
  void ListModels(http::Response& response);
  void StartRun(const http::Request& request, http::Response& response);
  void StreamEvents(std::shared_ptr<ViewRun> run, http::Response& response);
  void SendGrid(const ViewRun& run, const http::Request& request, http::Response& response);
  void SendImage(const ViewRun& run, absl::string_view name, http::Response& response);
  std::shared_ptr<ViewRun> FindRun(absl::string_view id);
  // Cancels abandoned runs, until the server stops.
  void Janitor();
  bool stopping();

  SamplerClient& client_;
  const ViewServerOptions options_;
  std::mutex mu_;
  std::condition_variable stop_;
  bool stopping_ = false;                       // guarded by mu_
  std::vector<std::shared_ptr<ViewRun>> runs_;  // oldest first; guarded by mu_
  uint64_t next_run_number_ = 1;                // guarded by mu_
  std::thread janitor_;
  std::unique_ptr<http::Server> http_;
};

}  // namespace gd::client
