// Tests of `gd view`'s bridge (client/view_server.h, view_run.h) against the fake Sampler: the
// page, /api/models, runs started by POST /api/sample and followed as server-sent events,
// cancellation (from the page, and of runs nobody watches), downloads, refusals (other sites:
// foreign Host or Origin, POSTs without Origin), and the `gd view` command itself as a
// subprocess. The HTTP server underneath is tests/http/'s; the browser side is tests/viewer/.
#include "client/view_server.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/server.h"
#include "tests/http/raw_client.h"
#include "tests/service/cli_runner.h"
#include "tests/service/fake_sampler.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;
using ::gd::http::testing::ConnectTo;
using ::gd::http::testing::Exchange;
using ::gd::http::testing::ReadSome;
using ::gd::http::testing::Reply;
using ::gd::http::testing::RequestText;
using ::gd::http::testing::SendAll;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

// ---- Server-sent events -------------------------------------------------------------------------

struct Event {
  std::string name;
  std::string data;
};

// One GET of an event stream, read event by event.
class EventStream {
 public:
  EventStream(int port, absl::string_view path) : fd_(ConnectTo(port)) {
    if (fd_ >= 0) SendAll(fd_, RequestText("GET", path, port));
  }
  ~EventStream() { Close(); }

  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  // The next event; nullopt when the stream ends or nothing comes within timeout_ms.
  std::optional<Event> Next(int timeout_ms = 10'000) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      if (!head_read_) {
        const size_t end = buffer_.find("\r\n\r\n");
        if (end != std::string::npos) {
          head_ = buffer_.substr(0, end);
          buffer_.erase(0, end + 4);
          head_read_ = true;
        }
      }
      if (head_read_) {
        const size_t end = buffer_.find("\n\n");
        if (end != std::string::npos) {
          const std::string block = buffer_.substr(0, end);
          buffer_.erase(0, end + 2);
          Event event;
          for (absl::string_view line : absl::StrSplit(block, '\n')) {
            if (absl::ConsumePrefix(&line, "event: ")) event.name = std::string(line);
            if (absl::ConsumePrefix(&line, "data: ")) event.data = std::string(line);
          }
          if (!event.name.empty()) return event;
          continue;  // a comment (keep-alive)
        }
      }
      const int left_ms = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
      if (fd_ < 0 || left_ms <= 0 || !ReadSome(fd_, &buffer_, left_ms)) return std::nullopt;
    }
  }

  // Events up to and including `result` or `failed`.
  std::vector<Event> ToTheEnd() {
    std::vector<Event> events;
    while (std::optional<Event> event = Next()) {
      events.push_back(*event);
      if (event->name == "result" || event->name == "failed") break;
    }
    return events;
  }

  const std::string& head() const { return head_; }

 private:
  int fd_;
  bool head_read_ = false;
  std::string head_;
  std::string buffer_;
};

template <typename Message>
Message FromJson(const std::string& json) {
  Message message;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &message);
  EXPECT_TRUE(status.ok()) << status.message() << " in " << json;
  return message;
}

std::string Field(const std::string& json, const std::string& name) {
  const auto fields = FromJson<google::protobuf::Struct>(json).fields();
  const auto it = fields.find(name);
  if (it == fields.end()) return "";
  if (it->second.has_string_value()) return it->second.string_value();
  if (it->second.has_number_value()) return absl::StrCat(it->second.number_value());
  if (it->second.has_bool_value()) return it->second.bool_value() ? "true" : "false";
  return "?";
}

std::vector<std::string> Names(const std::vector<Event>& events) {
  std::vector<std::string> names;
  for (const Event& event : events) names.push_back(event.name);
  return names;
}

// ---- The fixture --------------------------------------------------------------------------------

class ViewServerTest : public ClientTest {
 protected:
  void SetUp() override {
    ClientTest::SetUp();
    client_ = Connect();
    options_.listen = {"127.0.0.1", 0};
    options_.log = false;
  }

  void StartView() {
    absl::StatusOr<std::unique_ptr<ViewServer>> view = ViewServer::Start(*client_, options_);
    ASSERT_TRUE(view.ok()) << view.status();
    view_ = *std::move(view);
  }

  Reply Get(absl::string_view path) {
    return Exchange(view_->port(), RequestText("GET", path, view_->port()));
  }
  // A POST as the page sends it: with the page's Origin, unless `origin_header` says otherwise
  // (a whole line with its CRLF, or "" for none).
  Reply Post(absl::string_view path, absl::string_view body = "",
             absl::string_view content_type = "application/json",
             std::optional<std::string> origin_header = std::nullopt) {
    const int port = view_->port();
    const std::string origin =
        origin_header.value_or(absl::StrCat("Origin: http://127.0.0.1:", port, "\r\n"));
    return Exchange(port, RequestText("POST", path, port, body, content_type, origin));
  }
  // A request with `headers` (whole lines, CRLF each) in place of the usual Host line.
  Reply Raw(absl::string_view method, absl::string_view path, absl::string_view headers,
            absl::string_view body = "") {
    return Exchange(
        view_->port(),
        absl::StrCat(method, " ", path, " HTTP/1.1\r\n", headers,
                     method == "POST" ? absl::StrCat("Content-Type: application/json",
                                                     "\r\nContent-Length: ", body.size(), "\r\n")
                                      : "",
                     "\r\n", body));
  }
  // POST /api/sample; the run id, or "" after a test failure.
  std::string StartRun(absl::string_view request_json) {
    const Reply reply = Post("/api/sample", request_json);
    EXPECT_EQ(reply.status, 200) << reply.body;
    return reply.status == 200 ? Field(reply.body, "run_id") : "";
  }
  std::unique_ptr<EventStream> Follow(absl::string_view run_id) {
    return std::make_unique<EventStream>(view_->port(),
                                         absl::StrCat("/api/runs/", run_id, "/events"));
  }

  std::unique_ptr<SamplerClient> client_;
  ViewServerOptions options_;
  std::unique_ptr<ViewServer> view_;
};

// ---- The page and the models --------------------------------------------------------------------

TEST_F(ViewServerTest, ServesOneSelfContainedPage) {
  StartView();
  const Reply page = Get("/");
  ASSERT_EQ(page.status, 200);
  EXPECT_EQ(page.Header("content-type"), "text/html; charset=utf-8");
  EXPECT_EQ(page.body, kViewPageHtml);
  EXPECT_THAT(page.Header("content-security-policy"), HasSubstr("default-src 'none'"));
  EXPECT_THAT(page.Header("content-security-policy"), HasSubstr("connect-src 'self'"));
  // Works offline: nothing is fetched from anywhere else.
  EXPECT_FALSE(std::regex_search(page.body, std::regex(R"((src|href)\s*=\s*["']?(https?:)?//)")));
  EXPECT_FALSE(std::regex_search(page.body, std::regex(R"(@import|url\(\s*["']?(https?:)?//)")));
  EXPECT_THAT(page.body, Not(HasSubstr("http://")));
  EXPECT_THAT(page.body, Not(HasSubstr("https://")));
  // The controls the issue asks for (and the end-to-end test drives).
  for (const char* id :
       {"model", "class", "count", "scale", "sampler", "eta", "steps", "seed", "compare", "scales",
        "sample", "cancel", "runs", "banner", "dpm-steps", "order"}) {
    EXPECT_THAT(page.body, HasSubstr(absl::StrCat("id=\"", id, "\""))) << id;
  }
  EXPECT_THAT(page.body, HasSubstr("value=\"x_t\""));
  EXPECT_THAT(page.body, HasSubstr("value=\"SAMPLER_KIND_DPM_SOLVER_PP\""));
  EXPECT_EQ(Get("/index.html").body, kViewPageHtml);
}

TEST_F(ViewServerTest, ModelsAreTheServersAsProto3Json) {
  StartView();
  const Reply reply = Get("/api/models");
  ASSERT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(reply.Header("content-type"), "application/json");
  EXPECT_THAT(reply.body, HasSubstr("\"class_names\":[\"T-shirt/top\",\"Trouser\""));
  EXPECT_THAT(reply.body, HasSubstr("\"has_classifier\":false"));  // defaults are spelt out
  const auto models = FromJson<v1::ListModelsResponse>(reply.body);
  ASSERT_EQ(models.models_size(), 2);
  EXPECT_EQ(models.default_model(), "tiny");
  EXPECT_EQ(models.models(0).class_names(9), "Ankle boot");
  EXPECT_THAT(models.models(0).samplers(),
              ElementsAre(v1::SAMPLER_KIND_DDPM, v1::SAMPLER_KIND_DDIM));
  EXPECT_EQ(models.models(1).image_size(), 256u);
}

TEST_F(ViewServerTest, UnreachableServerIsAGatewayErrorWithTheGrpcCode) {
  ClientOptions nowhere;
  nowhere.target = "127.0.0.1:1";
  client_ = *SamplerClient::Create(nowhere);
  StartView();
  const Reply reply = Get("/api/models");
  EXPECT_EQ(reply.status, 502);
  EXPECT_EQ(Field(reply.body, "code"), "UNAVAILABLE");
  EXPECT_EQ(Field(reply.body, "code_number"), "14");
  EXPECT_THAT(Field(reply.body, "message"), Not(IsEmpty()));
}

// ---- Runs ---------------------------------------------------------------------------------------

TEST_F(ViewServerTest, SampleStreamsPngStepsAndTheResult) {
  StartView();
  const std::string run =
      StartRun(R"({"labels":[1,2],"classifier_scale":2.5,"sampler":"SAMPLER_KIND_DDIM","eta":0.5,)"
               R"("timestep_respacing":"5","seed":"7","stream":{"every":2}})");
  ASSERT_EQ(run, "r1");
  std::unique_ptr<EventStream> stream = Follow(run);
  const std::vector<Event> events = stream->ToTheEnd();
  EXPECT_THAT(stream->head(), HasSubstr("Content-Type: text/event-stream"));

  // What reached the server: the page's fields, with the stream the page needs.
  const v1::SampleRequest seen = server_.sampler().last_request();
  EXPECT_EQ(server_.sampler().last_method(), "StreamSample");
  EXPECT_THAT(seen.labels(), ElementsAre(1, 2));
  EXPECT_EQ(seen.classifier_scale(), 2.5);
  EXPECT_EQ(seen.sampler(), v1::SAMPLER_KIND_DDIM);
  EXPECT_EQ(seen.eta(), 0.5);
  EXPECT_EQ(seen.timestep_respacing(), "5");
  EXPECT_EQ(seen.seed(), 7u);
  EXPECT_EQ(seen.stream().every(), 2u);
  EXPECT_TRUE(seen.stream().x_t());
  EXPECT_TRUE(seen.stream().pred_xstart());
  EXPECT_EQ(seen.stream().format(), v1::StreamOptions::FORMAT_PNG);
  EXPECT_FALSE(seen.output().skip_png());

  ASSERT_GE(events.size(), 3u) << events.size();
  EXPECT_EQ(events.front().name, "accepted");
  const auto accepted = FromJson<v1::Accepted>(events.front().data);
  EXPECT_EQ(accepted.total_steps(), 5u);
  EXPECT_EQ(accepted.num_images(), 2u);
  // Steps in order (a slow watcher may skip some), the last one always.
  int64_t previous = -1;
  for (size_t i = 1; i + 1 < events.size(); ++i) {
    ASSERT_EQ(events[i].name, "step");
    const auto step = FromJson<v1::StepEvent>(events[i].data);
    EXPECT_GT(static_cast<int64_t>(step.step()), previous);
    previous = step.step();
    EXPECT_EQ(step.images_per_second(), 1.5);
    ASSERT_EQ(step.pred_xstart_png_size(), 2);
    ASSERT_EQ(step.x_t_png_size(), 2);
    EXPECT_FALSE(step.has_x_t());  // no empty tensors on the wire to the page
    EXPECT_EQ(step.pred_xstart_png(1), SamplesToPngs(CannedPredXstart(2, step.step()))[1]);
    EXPECT_EQ(step.x_t_png(0), SamplesToPngs(CannedXt(2, step.step()))[0]);
  }
  EXPECT_EQ(previous, 4);
  EXPECT_EQ(events.back().name, "result");
  const auto result = FromJson<v1::SampleResponse>(events.back().data);
  EXPECT_THAT(result.labels(), ElementsAre(1, 2));
  ASSERT_EQ(result.png_size(), 2);
  EXPECT_EQ(result.png(0), SamplesToPngs(CannedSamples(2))[0]);
  EXPECT_FALSE(stream->Next(1000).has_value());  // the stream ends after the result
}

// The page's DPM-Solver++ choice reaches the server as it was sent: sampler, steps, order.
TEST_F(ViewServerTest, DpmSolverFieldsArePassedThrough) {
  StartView();
  const std::string run = StartRun(
      R"({"labels":[4],"sampler":"SAMPLER_KIND_DPM_SOLVER_PP","steps":15,"solver_order":2,)"
      R"("classifier_scale":3,"seed":"9"})");
  ASSERT_FALSE(run.empty());
  Follow(run)->ToTheEnd();
  const v1::SampleRequest seen = server_.sampler().last_request();
  EXPECT_EQ(seen.sampler(), v1::SAMPLER_KIND_DPM_SOLVER_PP);
  EXPECT_EQ(seen.steps(), 15u);
  EXPECT_EQ(seen.solver_order(), 2u);
  EXPECT_EQ(seen.eta(), 0.0);
  EXPECT_EQ(seen.timestep_respacing(), "");
}

// Whoever comes late gets the Accepted event, the newest step only, and the end.
TEST_F(ViewServerTest, LateWatcherGetsAcceptedTheNewestStepAndTheEnd) {
  StartView();
  const std::string run = StartRun(R"({"labels":[3],"timestep_respacing":"6"})");
  for (int i = 0; i < 500 && Get(absl::StrCat("/api/runs/", run, "/grid.png")).status != 200; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const std::vector<Event> events = Follow(run)->ToTheEnd();
  EXPECT_THAT(Names(events), ElementsAre("accepted", "step", "result"));
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(FromJson<v1::StepEvent>(events[1].data).step(), 5u);
  // Two watchers of one run see the same end.
  EXPECT_THAT(Names(Follow(run)->ToTheEnd()), ElementsAre("accepted", "step", "result"));
}

TEST_F(ViewServerTest, FinalImagesDownloadAsPngs) {
  StartView();
  const std::string run = StartRun(R"({"labels":[0,1,2]})");
  ASSERT_EQ(Follow(run)->ToTheEnd().back().name, "result");

  Reply grid = Get(absl::StrCat("/api/runs/", run, "/grid.png"));
  ASSERT_EQ(grid.status, 200) << grid.body;
  EXPECT_EQ(grid.Header("content-type"), "image/png");
  absl::StatusOr<formats::Image> image = formats::DecodePng(grid.body, "grid");
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->width, 3 * (kImageSize + 2) + 2);
  EXPECT_EQ(image->height, kImageSize + 4);

  grid = Get(absl::StrCat("/api/runs/", run, "/grid.png?columns=1"));
  image = formats::DecodePng(grid.body, "grid");
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->width, kImageSize + 4);
  EXPECT_EQ(image->height, 3 * (kImageSize + 2) + 2);
  EXPECT_EQ(Get(absl::StrCat("/api/runs/", run, "/grid.png?columns=0")).status, 400);

  const Reply second = Get(absl::StrCat("/api/runs/", run, "/images/1.png"));
  ASSERT_EQ(second.status, 200);
  EXPECT_EQ(second.body, SamplesToPngs(CannedSamples(3))[1]);
  const Reply missing = Get(absl::StrCat("/api/runs/", run, "/images/3.png"));
  EXPECT_EQ(missing.status, 404);
  EXPECT_THAT(Field(missing.body, "message"), HasSubstr("has 3 final images"));
}

TEST_F(ViewServerTest, CancelStopsTheServersWork) {
  StartView();
  const std::string run = StartRun(R"({"model":"endless","labels":[1]})");
  std::unique_ptr<EventStream> stream = Follow(run);
  ASSERT_EQ(stream->Next()->name, "accepted");
  ASSERT_EQ(stream->Next()->name, "step");
  const Reply grid = Get(absl::StrCat("/api/runs/", run, "/grid.png"));
  EXPECT_EQ(grid.status, 409);
  EXPECT_THAT(Field(grid.body, "message"), HasSubstr("is still running"));

  const Reply cancel = Post(absl::StrCat("/api/runs/", run, "/cancel"));
  ASSERT_EQ(cancel.status, 200) << cancel.body;
  EXPECT_EQ(Field(cancel.body, "cancelled"), "true");
  std::vector<Event> rest = stream->ToTheEnd();
  ASSERT_FALSE(rest.empty());
  EXPECT_EQ(rest.back().name, "failed");
  EXPECT_EQ(Field(rest.back().data, "code"), "CANCELLED");
  EXPECT_EQ(Field(rest.back().data, "message"), "cancelled from the page");
  EXPECT_TRUE(server_.sampler().WaitForCancellation(absl::Seconds(10)));
  // Once ended, cancelling again changes nothing.
  EXPECT_EQ(Field(Post(absl::StrCat("/api/runs/", run, "/cancel")).body, "cancelled"), "false");
}

TEST_F(ViewServerTest, ServerErrorsArriveAsFailedEventsWithCodeAndMessage) {
  StartView();
  std::vector<Event> events = Follow(StartRun(R"({"labels":[1,11]})"))->ToTheEnd();
  ASSERT_THAT(Names(events), ElementsAre("failed"));
  EXPECT_EQ(Field(events[0].data, "code"), "INVALID_ARGUMENT");
  EXPECT_EQ(Field(events[0].data, "message"),
            "labels[1] = 11 is outside [0, 10) for model \"tiny\"");

  events = Follow(StartRun(R"({"model":"status:8","labels":[1]})"))->ToTheEnd();
  ASSERT_THAT(Names(events), ElementsAre("failed"));
  EXPECT_EQ(Field(events[0].data, "code"), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(Field(events[0].data, "code_number"), "8");
}

// Side by side: the same seed at several scales, streamed concurrently.
TEST_F(ViewServerTest, ConcurrentRunsStreamSideBySide) {
  StartView();
  std::vector<std::string> runs;
  for (const char* scale : {"0", "1", "4"}) {
    runs.push_back(StartRun(absl::StrCat(R"({"labels":[2,2],"seed":"5","timestep_respacing":"8",)",
                                         R"("classifier_scale":)", scale, "}")));
  }
  std::vector<std::vector<Event>> events(runs.size());
  std::vector<std::thread> watchers;
  for (size_t i = 0; i < runs.size(); ++i) {
    watchers.emplace_back([&, i] { events[i] = Follow(runs[i])->ToTheEnd(); });
  }
  for (std::thread& watcher : watchers) watcher.join();
  for (size_t i = 0; i < runs.size(); ++i) {
    ASSERT_FALSE(events[i].empty()) << runs[i];
    EXPECT_EQ(events[i].back().name, "result") << runs[i];
  }
  EXPECT_EQ(server_.sampler().stream_calls(), 3);
}

// ---- Lifecycle ----------------------------------------------------------------------------------

TEST_F(ViewServerTest, RunsNobodyWatchesAreCancelled) {
  options_.abandon_after = std::chrono::milliseconds(300);
  StartView();
  // Watched: kept running while the page is open...
  const std::string watched = StartRun(R"({"model":"endless","labels":[1]})");
  std::unique_ptr<EventStream> stream = Follow(watched);
  ASSERT_EQ(stream->Next()->name, "accepted");
  const auto until = Clock::now() + std::chrono::milliseconds(1200);
  while (Clock::now() < until) ASSERT_TRUE(stream->Next().has_value());
  EXPECT_EQ(server_.sampler().cancellations(), 0);
  // ...and cancelled once its tab is closed.
  stream->Close();
  EXPECT_TRUE(server_.sampler().WaitForCancellation(absl::Seconds(10)));

  // Never watched at all: cancelled too.
  StartRun(R"({"model":"endless","labels":[1]})");
  for (int i = 0; i < 1000 && server_.sampler().cancellations() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server_.sampler().cancellations(), 2);
}

TEST_F(ViewServerTest, ActiveRunsAreBounded) {
  options_.max_active_runs = 2;
  StartView();
  StartRun(R"({"model":"endless","labels":[1]})");
  StartRun(R"({"model":"endless","labels":[1]})");
  const Reply third = Post("/api/sample", R"({"model":"endless","labels":[1]})");
  EXPECT_EQ(third.status, 429);
  EXPECT_EQ(Field(third.body, "code"), "RESOURCE_EXHAUSTED");
  EXPECT_THAT(Field(third.body, "message"), HasSubstr("at most 2"));
}

TEST_F(ViewServerTest, StoppingCancelsRunsAndClosesStreamsPromptly) {
  StartView();
  const std::string run = StartRun(R"({"model":"endless","labels":[1]})");
  std::unique_ptr<EventStream> stream = Follow(run);
  ASSERT_EQ(stream->Next()->name, "accepted");
  const auto start = Clock::now();
  view_.reset();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
  EXPECT_TRUE(server_.sampler().WaitForCancellation(absl::Seconds(10)));
  // The watcher saw the end: either the `failed` event or the closed connection.
  std::vector<Event> rest = stream->ToTheEnd();
  if (!rest.empty() && rest.back().name == "failed") {
    EXPECT_EQ(Field(rest.back().data, "message"), "gd view is stopping");
  }
}

// ---- Refusals -----------------------------------------------------------------------------------

TEST_F(ViewServerTest, BadRequestsAreRefusedBeforeAnyCall) {
  StartView();
  const int calls_before = server_.sampler().calls();
  struct Case {
    Reply reply;
    int status;
    std::string message;
  };
  const std::vector<Case> cases = {
      {Post("/api/sample", R"({"labels":[1]})", "text/plain"), 415, "application/json"},
      {Post("/api/sample", "{"), 400, "not a SampleRequest in proto3 JSON"},
      {Post("/api/sample", R"({"labelz":[1]})"), 400, "labelz"},
      {Get("/api/sample"), 405, "POST /api/sample"},
      {Post("/api/models"), 405, "GET /api/models"},
      {Get("/nope"), 404, "GET /nope is not served here"},
      {Get("/api/runs/r99/events"), 404, "no run \\\"r99\\\""},  // JSON-escaped quotes
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.reply.status, c.status) << c.message << ": " << c.reply.body;
    EXPECT_THAT(c.reply.body, HasSubstr(c.message));
  }
  EXPECT_EQ(server_.sampler().calls(), calls_before);
}

// DNS rebinding and cross-site requests: only the viewer's own addresses, and only its own page
// for anything that changes state.
TEST_F(ViewServerTest, OtherSitesAreRefused) {
  StartView();
  const int port = view_->port();
  const std::string sample = R"({"labels":[1]})";
  struct Case {
    std::string what;
    Reply reply;
    std::string message;
  };
  const std::vector<Case> refused = {
      {"a rebound name in Host",
       Raw("GET", "/api/models", absl::StrCat("Host: evil.example:", port, "\r\n")),
       absl::StrCat("Host \\\"evil.example:", port, "\\\" is not this viewer")},
      {"the page under a rebound name",
       Raw("GET", "/", absl::StrCat("Host: evil.example:", port, "\r\n")), "is not this viewer"},
      {"another port in Host", Raw("GET", "/api/models", "Host: 127.0.0.1:1\r\n"),
       "is not this viewer"},
      {"no Host", Raw("GET", "/api/models", ""), "Host \\\"\\\" is not this viewer"},
      {"a POST from a rebound page",
       Raw("POST", "/api/sample",
           absl::StrCat("Host: evil.example:", port, "\r\nOrigin: http://evil.example:", port,
                        "\r\n"),
           sample),
       "is not this viewer"},
      {"a foreign Origin",
       Post("/api/sample", sample, "application/json", "Origin: http://elsewhere.example\r\n"),
       "requests from http://elsewhere.example are refused"},
      {"a foreign Origin on a GET",
       Raw("GET", "/api/models",
           absl::StrCat("Host: 127.0.0.1:", port, "\r\nOrigin: http://elsewhere.example\r\n")),
       "requests from http://elsewhere.example are refused"},
      {"an opaque Origin", Post("/api/sample", sample, "application/json", "Origin: null\r\n"),
       "requests from null are refused"},
      {"a POST without Origin", Post("/api/sample", sample, "application/json", ""),
       "a POST without an Origin header is refused"},
  };
  for (const Case& c : refused) {
    EXPECT_EQ(c.reply.status, 403) << c.what << ": " << c.reply.body;
    EXPECT_EQ(Field(c.reply.body, "code"), "PERMISSION_DENIED") << c.what;
    EXPECT_THAT(c.reply.body, HasSubstr(c.message)) << c.what;
  }
  EXPECT_EQ(server_.sampler().calls(), 0);

  // The viewer's own names and page.
  for (const std::string host : {absl::StrCat("127.0.0.1:", port), absl::StrCat("localhost:", port),
                                 absl::StrCat("LocalHost:", port), absl::StrCat("[::1]:", port)}) {
    EXPECT_EQ(Raw("GET", "/api/models", absl::StrCat("Host: ", host, "\r\n")).status, 200) << host;
  }
  const Reply from_localhost =
      Raw("POST", "/api/sample",
          absl::StrCat("Host: localhost:", port, "\r\nOrigin: http://localhost:", port, "\r\n"),
          sample);
  EXPECT_EQ(from_localhost.status, 200) << from_localhost.body;
  const std::string run = StartRun(sample);  // Origin http://127.0.0.1:PORT
  ASSERT_FALSE(run.empty());
  // Cancelling changes state too: not without the page's Origin.
  const Reply cancel = Post(absl::StrCat("/api/runs/", run, "/cancel"), "", "application/json", "");
  EXPECT_EQ(cancel.status, 403);
  for (int i = 0; i < 500 && server_.sampler().stream_calls() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // runs start on their threads
  }
  EXPECT_EQ(server_.sampler().stream_calls(), 2);
  EXPECT_EQ(server_.sampler().cancellations(), 0);
}

// A viewer on every interface answers to the address a request arrived on.
TEST_F(ViewServerTest, OnEveryInterfaceTheArrivalAddressIsTheViewers) {
  options_.listen = {"0.0.0.0", 0};
  StartView();
  const int port = view_->port();
  EXPECT_EQ(Raw("GET", "/api/models", absl::StrCat("Host: 127.0.0.1:", port, "\r\n")).status, 200);
  EXPECT_EQ(Raw("GET", "/api/models", absl::StrCat("Host: 10.1.2.3:", port, "\r\n")).status, 403);
}

// ---- gd view ------------------------------------------------------------------------------------

TEST_F(CliTest, ViewServesUntilSigterm) {
  const pid_t pid = Start({"view", "--listen", "127.0.0.1:0"}, /*with_server=*/true);
  ASSERT_GT(pid, 0);
  std::smatch url;
  std::string out;
  const std::regex pattern(R"(http://127\.0\.0\.1:(\d+)/)");
  for (int i = 0; i < 1000 && !std::regex_search(out, url, pattern); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    out = ReadFileOrEmpty(Path("stdout.txt"));
  }
  ASSERT_FALSE(url.empty()) << out;
  EXPECT_THAT(out, HasSubstr(absl::StrCat("(Sampler at ", server_.address(), ")")));
  const int port = std::stoi(url[1]);
  const Reply models = Exchange(port, RequestText("GET", "/api/models", port));
  EXPECT_EQ(models.status, 200);
  EXPECT_THAT(models.body, HasSubstr("\"tiny\""));
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  EXPECT_EQ(WaitForExit(pid, 20'000), 0);
  EXPECT_THAT(ReadFileOrEmpty(Path("stderr.txt")), HasSubstr("stopping"));
}

TEST_F(CliTest, ViewFlagsAreChecked) {
  CliResult result = Run({"view", "--listen", "nowhere"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.err, HasSubstr("--listen: \"nowhere\" is not HOST:PORT"));
  result = Run({"view", "--labels", "1"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.err, HasSubstr("--labels does not apply to `gd view`"));
  result = Run({"sample", "--labels", "1", "--listen", "127.0.0.1:0"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.err, HasSubstr("--listen does not apply to `gd sample`"));
}

TEST_F(CliTest, ViewReportsAnAddressInUse) {
  absl::StatusOr<std::unique_ptr<http::Server>> taken = http::Server::Start(
      {"127.0.0.1", 0},
      [](const http::Request&, http::Response& response) { response.Send(200, "text/plain", ""); },
      http::ServerOptions{});
  ASSERT_TRUE(taken.ok()) << taken.status();
  CliResult result = Run({"view", "--listen", absl::StrCat("127.0.0.1:", (*taken)->port())});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("gd: UNAVAILABLE: cannot listen on 127.0.0.1:"));
}

}  // namespace
}  // namespace gd::client
