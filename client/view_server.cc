#include "client/view_server.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/outputs.h"
#include "client/sampler_settings.h"
#include "core/status_macros.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

constexpr char kJson[] = "application/json";
const http::Headers& NoStore() {
  static const http::Headers headers = {{"Cache-Control", "no-store"}};
  return headers;
}
// Only what the page itself is made of: its inline script and style, images it got as data: URLs
// or from this server, requests to this server.
const http::Headers& PageHeaders() {
  static const http::Headers headers = {
      {"Cache-Control", "no-store"},
      {"Content-Security-Policy",
       "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'"}};
  return headers;
}

void SendJson(http::Response& response, int status, absl::string_view json) {
  response.Send(status, kJson, json, NoStore());
}

void SendError(http::Response& response, int status, const absl::Status& error) {
  SendJson(response, status, StatusJson(error));
}

}  // namespace

http::ServerOptions ViewHttpOptions() {
  http::ServerOptions options;
  options.name = "gd view";
  options.threads = 32;
  options.max_queued_connections = 64;
  options.read_timeout = std::chrono::milliseconds(5'000);
  options.request_timeout = std::chrono::milliseconds(10'000);
  options.write_timeout = std::chrono::milliseconds(30'000);
  options.max_head_bytes = 16 << 10;
  options.max_body_bytes = 8 << 20;
  return options;
}

absl::StatusOr<std::unique_ptr<ViewServer>> ViewServer::Start(SamplerClient& client,
                                                              ViewServerOptions options) {
  std::unique_ptr<ViewServer> server(new ViewServer(client, std::move(options)));
  ViewServer* self = server.get();
  const auto handle = [self](const http::Request& request, http::Response& response) {
    self->Handle(request, response);
  };
  ASSIGN_OR_RETURN(server->http_,
                   http::Server::Start(self->options_.listen, handle, self->options_.http));
  server->janitor_ = std::thread([self] { self->Janitor(); });
  return server;
}

ViewServer::~ViewServer() {
  std::vector<std::shared_ptr<ViewRun>> runs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    runs = runs_;
  }
  stop_.notify_all();
  for (const auto& run : runs) {
    run->Cancel("gd view is stopping");
    run->WakeWatchers();
  }
  if (http_ != nullptr) http_->Stop();  // event streams see stopping() within a second
  if (janitor_.joinable()) janitor_.join();
  runs.clear();
  std::lock_guard<std::mutex> lock(mu_);
  runs_.clear();  // joins each run's thread (already cancelled)
}

std::string ViewServer::url() const {
  return absl::StrCat("http://", http_->host(), ":", http_->port(), "/");
}

bool ViewServer::stopping() {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

// DNS rebinding: a page of another site whose name is made to resolve to this machine reaches the
// viewer from the browser as same-origin, with its own name in Host. So Host must be one of the
// viewer's own addresses (the one the request arrived on, as a browser pointed at that address
// sends it) or a loopback name. Origin then tells a page of the viewer from any other page; a
// browser sends it on every POST, so a POST without one is not the page's.
absl::Status ViewServer::CheckCaller(const http::Request& request) const {
  const int port = request.local_port;  // the viewer's
  const std::string host = absl::AsciiStrToLower(request.Header("host"));
  bool known_host = false;
  for (const std::string& own :
       {options_.listen.host, request.local_address, std::string("localhost"),
        std::string("127.0.0.1"), std::string("[::1]")}) {
    if (!own.empty() && host == absl::StrCat(own, ":", port)) known_host = true;
  }
  if (!known_host) {
    return absl::PermissionDeniedError(
        absl::StrCat("Host \"", request.Header("host"), "\" is not this viewer: open http://",
                     request.local_address, ":", port, "/ (or localhost:", port,
                     "); a page of another site cannot use it"));
  }
  const std::string origin = request.Header("origin");
  if (!origin.empty() && absl::AsciiStrToLower(origin) != absl::StrCat("http://", host)) {
    return absl::PermissionDeniedError(
        absl::StrCat("requests from ", origin, " are refused: open the page this server serves"));
  }
  if (origin.empty() && request.method != "GET" && request.method != "HEAD") {
    return absl::PermissionDeniedError(
        absl::StrCat("a ", request.method, " without an Origin header is refused: send it from ",
                     "the page this server serves (browsers add Origin)"));
  }
  return absl::OkStatus();
}

void ViewServer::Handle(const http::Request& request, http::Response& response) {
  if (absl::Status caller = CheckCaller(request); !caller.ok()) {
    return SendError(response, 403, caller);
  }
  const bool get = request.method == "GET";
  const bool post = request.method == "POST";
  const absl::string_view path = request.path;
  if (path == "/" || path == "/index.html") {
    if (!get) return SendError(response, 405, absl::InvalidArgumentError("GET the page"));
    response.Send(200, "text/html; charset=utf-8", kViewPageHtml, PageHeaders());
    return;
  }
  if (path == "/favicon.ico") return response.Send(204, "image/x-icon", "");
  if (path == "/api/models") {
    if (!get) return SendError(response, 405, absl::InvalidArgumentError("GET /api/models"));
    return ListModels(response);
  }
  if (path == "/api/sample") {
    if (!post) return SendError(response, 405, absl::InvalidArgumentError("POST /api/sample"));
    return StartRun(request, response);
  }
  // /api/runs/ID/ACTION[/NAME]
  absl::string_view rest = path;
  if (absl::ConsumePrefix(&rest, "/api/runs/")) {
    std::vector<absl::string_view> parts = absl::StrSplit(rest, '/');
    std::shared_ptr<ViewRun> run = parts.size() >= 2 ? FindRun(parts[0]) : nullptr;
    if (run == nullptr) {
      return SendError(response, 404,
                       absl::NotFoundError(absl::StrCat("no run \"", parts[0],
                                                        "\" (finished runs are kept for the ",
                                                        options_.max_kept_runs, " newest)")));
    }
    if (parts.size() == 2 && parts[1] == "events" && get) return StreamEvents(run, response);
    if (parts.size() == 2 && parts[1] == "cancel" && post) {
      const bool cancelled = run->Cancel("cancelled from the page");
      if (options_.log && cancelled) absl::FPrintF(stderr, "gd view: run %s: cancel\n", run->id());
      return SendJson(response, 200,
                      absl::StrCat("{\"run_id\":", JsonQuote(run->id()),
                                   ",\"cancelled\":", cancelled ? "true" : "false", "}"));
    }
    if (parts.size() == 2 && parts[1] == "grid.png" && get)
      return SendGrid(*run, request, response);
    if (parts.size() == 3 && parts[1] == "images" && get)
      return SendImage(*run, parts[2], response);
  }
  SendError(response, 404,
            absl::NotFoundError(absl::StrCat(request.method, " ", path, " is not served here")));
}

void ViewServer::ListModels(http::Response& response) {
  absl::StatusOr<v1::ListModelsResponse> models = client_.ListModels();
  if (!models.ok()) return SendError(response, 502, models.status());
  SendJson(response, 200, ToJson(*models));
}

void ViewServer::StartRun(const http::Request& request, http::Response& response) {
  const std::string type = absl::AsciiStrToLower(request.Header("content-type"));
  if (!absl::StartsWith(type, kJson)) {
    return SendError(response, 415,
                     absl::InvalidArgumentError(absl::StrCat(
                         "send the SampleRequest as application/json, not \"", type, "\"")));
  }
  v1::SampleRequest sample;
  google::protobuf::util::JsonParseOptions parse;
  parse.ignore_unknown_fields = false;  // a misspelt field is an error, not silently ignored
  if (const auto parsed = google::protobuf::util::JsonStringToMessage(request.body, &sample, parse);
      !parsed.ok()) {
    return SendError(
        response, 400,
        absl::InvalidArgumentError(absl::StrCat("the body is not a SampleRequest in proto3 JSON: ",
                                                std::string(parsed.message()))));
  }
  // What the page shows: both images of every (every-th) step as PNGs, and PNG results.
  v1::StreamOptions* stream = sample.mutable_stream();
  stream->set_every(std::max<uint32_t>(1, stream->every()));
  stream->set_x_t(true);
  stream->set_pred_xstart(true);
  stream->set_format(v1::StreamOptions::FORMAT_PNG);
  sample.clear_output();

  std::shared_ptr<ViewRun> run;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return SendError(response, 503, absl::UnavailableError("gd view is stopping"));
    const int active = static_cast<int>(
        std::count_if(runs_.begin(), runs_.end(), [](const auto& r) { return !r->finished(); }));
    if (active >= options_.max_active_runs) {
      return SendError(response, 429,
                       absl::ResourceExhaustedError(
                           absl::StrCat(active, " runs are active in this viewer (at most ",
                                        options_.max_active_runs, "); cancel one or wait")));
    }
    // Drop the oldest finished runs beyond the number kept.
    int kept = static_cast<int>(runs_.size());
    for (auto it = runs_.begin(); it != runs_.end() && kept >= options_.max_kept_runs;) {
      if ((*it)->finished()) {
        it = runs_.erase(it);
        --kept;
      } else {
        ++it;
      }
    }
    const bool log = options_.log;
    run = std::make_shared<ViewRun>(
        absl::StrCat("r", next_run_number_++), client_, sample,
        [log](const ViewRun& ended, const absl::Status& status, double seconds) {
          if (!log) return;
          absl::FPrintF(stderr, "gd view: run %s: %s after %.1f s%s%s\n", ended.id(),
                        absl::StatusCodeToString(status.code()), seconds, status.ok() ? "" : ": ",
                        status.message());
        });
    runs_.push_back(run);
  }
  if (options_.log) {
    absl::FPrintF(stderr, "gd view: run %s: %s\n", run->id(), DescribeRequest(sample));
  }
  SendJson(response, 200,
           absl::StrCat("{\"run_id\":", JsonQuote(run->id()), ",\"events\":",
                        JsonQuote(absl::StrCat("/api/runs/", run->id(), "/events")), "}"));
}

void ViewServer::StreamEvents(std::shared_ptr<ViewRun> run, http::Response& response) {
  run->AddWatcher();
  // What this watcher has had, and when it was last written to.
  struct Watch {
    ViewRun::Cursor cursor;
    ViewRun::Clock::time_point last_write = ViewRun::Clock::now();
  };
  // Each call waits up to a second, so that a closed tab or a stopping server is noticed soon.
  response.Stream(
      200, "text/event-stream; charset=utf-8",
      [this, run, watch = std::make_shared<Watch>()](http::StreamWriter& out) {
        if (watch->cursor.end_sent || stopping() || out.PeerGone()) return false;
        const std::string text = run->NextMessages(&watch->cursor, std::chrono::seconds(1));
        const auto now = ViewRun::Clock::now();
        if (!text.empty()) {
          if (!out.Write(text)) return false;
          watch->last_write = now;
        } else if (now - watch->last_write >= options_.heartbeat) {
          if (!out.Write(": keep-alive\n\n")) return false;
          watch->last_write = now;
        }
        return !watch->cursor.end_sent;
      },
      [run] { run->RemoveWatcher(); }, NoStore());
}

void ViewServer::SendGrid(const ViewRun& run, const http::Request& request,
                          http::Response& response) {
  const std::optional<v1::SampleResponse> result = run.result();
  if (!result.has_value()) {
    return SendError(response, 409,
                     absl::FailedPreconditionError(absl::StrCat(
                         "run ", run.id(), " has no images: it ",
                         run.finished() ? "failed or was cancelled" : "is still running")));
  }
  std::vector<formats::Image> images;
  for (int i = 0; i < result->png_size(); ++i) {
    absl::StatusOr<formats::Image> image =
        formats::DecodePng(result->png(i), absl::StrCat("run ", run.id(), " image ", i));
    if (!image.ok()) return SendError(response, 502, image.status());
    if (!images.empty() && (image->height != images[0].height || image->width != images[0].width ||
                            image->channels != images[0].channels)) {
      return SendError(response, 502, absl::InternalError("the images differ in size"));
    }
    images.push_back(*std::move(image));
  }
  if (images.empty()) return SendError(response, 502, absl::InternalError("the run has no PNGs"));
  int64_t columns = 0;
  if (const std::string text = request.Query("columns");
      !text.empty() && (!absl::SimpleAtoi(text, &columns) || columns < 1 || columns > 1000)) {
    return SendError(response, 400,
                     absl::InvalidArgumentError(
                         absl::StrCat("columns = \"", text, "\" is not a number in [1, 1000]")));
  }
  absl::StatusOr<std::string> png = formats::EncodePng(
      formats::MakeGrid(images, GridColumns(static_cast<int64_t>(images.size()), columns)));
  if (!png.ok()) return SendError(response, 500, png.status());
  response.Send(200, "image/png", *png, NoStore());
}

void ViewServer::SendImage(const ViewRun& run, absl::string_view name, http::Response& response) {
  const std::optional<v1::SampleResponse> result = run.result();
  int index = -1;
  if (!absl::ConsumeSuffix(&name, ".png") || !absl::SimpleAtoi(name, &index) || index < 0 ||
      !result.has_value() || index >= result->png_size()) {
    return SendError(response, 404,
                     absl::NotFoundError(absl::StrCat(
                         "run ", run.id(), " has ", result.has_value() ? result->png_size() : 0,
                         " final images; ask for images/K.png with K below that")));
  }
  response.Send(200, "image/png", result->png(index), NoStore());
}

std::shared_ptr<ViewRun> ViewServer::FindRun(absl::string_view id) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& run : runs_) {
    if (run->id() == id) return run;
  }
  return nullptr;
}

void ViewServer::Janitor() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_.wait_for(lock, std::chrono::milliseconds(250), [this] { return stopping_; })) {
    for (const auto& run : runs_) {
      if (!run->Abandoned(options_.abandon_after)) continue;
      const std::string reason = absl::StrFormat("no page watched the run for %.1f s",
                                                 options_.abandon_after.count() / 1000.0);
      if (run->Cancel(reason) && options_.log) {
        absl::FPrintF(stderr, "gd view: run %s: %s: cancel\n", run->id(), reason);
      }
    }
  }
}

}  // namespace gd::client
