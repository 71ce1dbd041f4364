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

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

constexpr char kJson[] = "application/json";
constexpr char kNoStore[] = "Cache-Control: no-store";
// Only what the page itself is made of: its inline script and style, images it got as data: URLs
// or from this server, requests to this server.
constexpr char kPagePolicy[] =
    "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'";

void SendJson(HttpResponse& response, int status, absl::string_view json) {
  response.Send(status, kJson, json, {kNoStore});
}

void SendError(HttpResponse& response, int status, const absl::Status& error) {
  SendJson(response, status, StatusJson(error));
}

// The query parameter `name`'s value, or "" (values here are plain numbers: no decoding).
std::string QueryValue(absl::string_view query, absl::string_view name) {
  for (absl::string_view pair : absl::StrSplit(query, '&')) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(pair, absl::MaxSplits('=', 1));
    if (kv.first == name) return std::string(kv.second);
  }
  return "";
}

// A request in one line for the log: model "m", 2 images, ddim, steps "ddim25", scale 3, seed 7.
std::string Describe(const v1::SampleRequest& request) {
  const int images =
      request.labels_size() > 0 ? request.labels_size() : static_cast<int>(request.num_samples());
  return absl::StrFormat("model \"%s\", %d image%s, %s, steps \"%s\", scale %g, seed %d",
                         request.model().empty() ? "(default)" : request.model(), images,
                         images == 1 ? "" : "s",
                         request.sampler() == v1::SAMPLER_KIND_DDIM ? "ddim" : "ddpm",
                         request.timestep_respacing(), request.classifier_scale(), request.seed());
}

}  // namespace

absl::StatusOr<std::unique_ptr<ViewServer>> ViewServer::Start(SamplerClient& client,
                                                              ViewServerOptions options) {
  std::unique_ptr<ViewServer> server(new ViewServer(client, std::move(options)));
  ViewServer* self = server.get();
  absl::StatusOr<std::unique_ptr<HttpServer>> http = HttpServer::Start(
      self->options_.listen, [self](const HttpRequest& request, HttpResponse& response) {
        self->Handle(request, response);
      });
  if (!http.ok()) return http.status();
  server->http_ = *std::move(http);
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

void ViewServer::Handle(const HttpRequest& request, HttpResponse& response) {
  const bool get = request.method == "GET";
  const bool post = request.method == "POST";
  if (post) {
    // A browser names the page that sends a POST; one from elsewhere must not start work here.
    const std::string origin = request.Header("origin");
    if (!origin.empty() && origin != absl::StrCat("http://", request.Header("host"))) {
      SendError(response, 403,
                absl::PermissionDeniedError(absl::StrCat(
                    "requests from ", origin, " are refused: open the page this server serves")));
      return;
    }
  }
  const absl::string_view path = request.path;
  if (path == "/" || path == "/index.html") {
    if (!get) return SendError(response, 405, absl::InvalidArgumentError("GET the page"));
    response.Send(200, "text/html; charset=utf-8", kViewPageHtml, {kNoStore, kPagePolicy});
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
    if (parts.size() == 2 && parts[1] == "events" && get) return StreamEvents(*run, response);
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

void ViewServer::ListModels(HttpResponse& response) {
  absl::StatusOr<v1::ListModelsResponse> models = client_.ListModels();
  if (!models.ok()) return SendError(response, 502, models.status());
  SendJson(response, 200, ToJson(*models));
}

void ViewServer::StartRun(const HttpRequest& request, HttpResponse& response) {
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
  if (options_.log) absl::FPrintF(stderr, "gd view: run %s: %s\n", run->id(), Describe(sample));
  SendJson(response, 200,
           absl::StrCat("{\"run_id\":", JsonQuote(run->id()), ",\"events\":",
                        JsonQuote(absl::StrCat("/api/runs/", run->id(), "/events")), "}"));
}

void ViewServer::StreamEvents(ViewRun& run, HttpResponse& response) {
  if (!response.StartStream(200, "text/event-stream; charset=utf-8")) return;
  run.AddWatcher();
  ViewRun::Cursor cursor;
  auto last_write = ViewRun::Clock::now();
  // Waits in slices of a second, so that a closed tab or a stopping server is noticed soon.
  while (!cursor.end_sent && !stopping() && !response.PeerClosed()) {
    const std::string text = run.NextMessages(&cursor, std::chrono::seconds(1));
    const auto now = ViewRun::Clock::now();
    if (!text.empty()) {
      if (!response.Write(text)) break;
      last_write = now;
    } else if (now - last_write >= options_.heartbeat) {
      if (!response.Write(": keep-alive\n\n")) break;
      last_write = now;
    }
  }
  run.RemoveWatcher();
}

void ViewServer::SendGrid(const ViewRun& run, const HttpRequest& request, HttpResponse& response) {
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
  if (const std::string text = QueryValue(request.query, "columns");
      !text.empty() && (!absl::SimpleAtoi(text, &columns) || columns < 1 || columns > 1000)) {
    return SendError(response, 400,
                     absl::InvalidArgumentError(
                         absl::StrCat("columns = \"", text, "\" is not a number in [1, 1000]")));
  }
  absl::StatusOr<std::string> png = formats::EncodePng(
      formats::MakeGrid(images, GridColumns(static_cast<int64_t>(images.size()), columns)));
  if (!png.ok()) return SendError(response, 500, png.status());
  response.Send(200, "image/png", *png, {kNoStore});
}

void ViewServer::SendImage(const ViewRun& run, absl::string_view name, HttpResponse& response) {
  const std::optional<v1::SampleResponse> result = run.result();
  int index = -1;
  if (!absl::ConsumeSuffix(&name, ".png") || !absl::SimpleAtoi(name, &index) || index < 0 ||
      !result.has_value() || index >= result->png_size()) {
    return SendError(response, 404,
                     absl::NotFoundError(absl::StrCat(
                         "run ", run.id(), " has ", result.has_value() ? result->png_size() : 0,
                         " final images; ask for images/K.png with K below that")));
  }
  response.Send(200, "image/png", result->png(index), {kNoStore});
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
