// Tests of gd_http (http/server.h) over real sockets: what handlers see and send, streams, and
// every limit: the request deadline against a slow-loris client, idle connections, head, line
// and body sizes, the thread pool and its queue, and a Stop that does not wait for clients.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/server.h"
#include "tests/http/raw_client.h"

namespace gd::http {
namespace {

using ::gd::http::testing::CloseAll;
using ::gd::http::testing::ConnectTo;
using ::gd::http::testing::Exchange;
using ::gd::http::testing::Get;
using ::gd::http::testing::OpenIdleConnections;
using ::gd::http::testing::ReadSome;
using ::gd::http::testing::Reply;
using ::gd::http::testing::RequestText;
using ::gd::http::testing::SecondsSince;
using ::gd::http::testing::SendAll;
using ::gd::http::testing::SlowClient;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Answers "METHOD PATH q=QUERY x=HEADER BODY" to everything; /wait/ blocks until released.
class EchoServer {
 public:
  explicit EchoServer(ServerOptions options = {}) {
    options.name = "test";
    absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(
        {"127.0.0.1", 0},
        [this](const Request& request, Response& response) {
          while (request.path == "/wait/" && !release_) {
            std::this_thread::sleep_for(milliseconds(5));
          }
          response.Send(200, "text/plain",
                        absl::StrCat(request.method, " ", request.path, " q=", request.Query("q"),
                                     " x=", request.Header("X-Test"), " ", request.body),
                        {{"X-Served-By", "echo"}});
        },
        options);
    EXPECT_TRUE(server.ok()) << server.status();
    if (server.ok()) server_ = *std::move(server);
  }
  ~EchoServer() { release_ = true; }

  int port() const { return server_->port(); }
  Server& server() { return *server_; }
  void Release() { release_ = true; }

 private:
  std::atomic<bool> release_{false};
  std::unique_ptr<Server> server_;
};

// ---- What handlers see and send -----------------------------------------------------------------

TEST(HttpServerTest, HandlersSeeTheRequestAndTheirAnswerIsSent) {
  EchoServer echo;
  const int port = echo.port();
  Reply reply =
      Exchange(port, RequestText("GET", "/a%20b?q=1%2B2&r=3", port, "", "", "X-Test: hello\r\n"));
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.body, "GET /a b q=1+2 x=hello ");
  EXPECT_EQ(reply.Header("X-Served-By"), "echo");
  EXPECT_EQ(reply.Header("Content-Type"), "text/plain");
  EXPECT_EQ(reply.Header("Connection"), "close");

  reply = Exchange(port, RequestText("POST", "/p", port, "{\"k\":1}", "application/json"));
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.body, "POST /p q= x= {\"k\":1}");
  // A chunked body is read too.
  reply = Exchange(port, absl::StrCat("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
                                      "\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"));
  EXPECT_EQ(reply.body, "POST /c q= x= abcde");

  reply = Exchange(port, RequestText("HEAD", "/h", port));
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.body, "");
}

TEST(HttpServerTest, StreamsRunUntilTheProducerEndsAndSayWhenTheyAreOver) {
  std::atomic<int> ended{0};
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(
      {"127.0.0.1", 0},
      [&](const Request&, Response& response) {
        auto count = std::make_shared<int>(0);
        response.Stream(
            200, "text/event-stream",
            [count](StreamWriter& out) {
              EXPECT_FALSE(out.PeerGone());
              EXPECT_TRUE(out.Write(absl::StrCat("data: ", ++*count, "\n\n")));
              return *count < 3;
            },
            [&] { ++ended; }, {{"Cache-Control", "no-store"}});
      },
      ServerOptions{});
  ASSERT_TRUE(server.ok()) << server.status();
  const Reply reply = Get((*server)->port(), "/events");
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.Header("Content-Type"), "text/event-stream");
  EXPECT_EQ(reply.Header("Cache-Control"), "no-store");
  EXPECT_EQ(reply.Header("Content-Length"), "");  // open-ended: the end of the connection ends it
  EXPECT_EQ(reply.body, "data: 1\n\ndata: 2\n\ndata: 3\n\n");
  (*server)->Stop();
  EXPECT_EQ(ended, 1);
}

TEST(HttpServerTest, AStreamNoticesThatThePeerHasGone) {
  std::atomic<bool> peer_gone{false};
  std::atomic<bool> ended{false};
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(
      {"127.0.0.1", 0},
      [&](const Request&, Response& response) {
        response.Stream(
            200, "text/event-stream",
            [&](StreamWriter& out) {
              std::this_thread::sleep_for(milliseconds(20));
              if (out.PeerGone()) {
                peer_gone = true;
                return false;
              }
              return out.Write(": keep-alive\n\n");
            },
            [&] { ended = true; });
      },
      ServerOptions{});
  ASSERT_TRUE(server.ok()) << server.status();
  const int fd = ConnectTo((*server)->port());
  ASSERT_TRUE(SendAll(fd, RequestText("GET", "/events", (*server)->port())));
  std::string data;
  ASSERT_TRUE(ReadSome(fd, &data, 10'000));
  close(fd);  // a closed tab
  for (int i = 0; i < 500 && !ended; ++i) std::this_thread::sleep_for(milliseconds(10));
  EXPECT_TRUE(ended);
  EXPECT_TRUE(peer_gone);
}

TEST(HttpServerTest, AHandlerThatAnswersNothingGives500) {
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(
      {"127.0.0.1", 0}, [](const Request&, Response&) {}, ServerOptions{});
  ASSERT_TRUE(server.ok()) << server.status();
  const Reply reply = Get((*server)->port(), "/");
  EXPECT_EQ(reply.status, 500);
  EXPECT_THAT(reply.body, HasSubstr("no response"));
}

// ---- Limits: time -------------------------------------------------------------------------------

// A client that sends its head a byte at a time holds one thread until the request deadline,
// and the others are served meanwhile.
TEST(HttpServerTest, ASlowLorisClientIsCutOffAndDoesNotBlockOthers) {
  ServerOptions options;
  options.request_timeout = milliseconds(2'000);
  options.read_timeout = milliseconds(1'500);
  EchoServer echo(options);
  const int port = echo.port();
  const auto start = Clock::now();
  // The request line at once, then 60 s worth of header bytes at 20 per second.
  const std::string trickled = "X-Slow: " + std::string(1200, 'x') + "\r\n\r\n";
  SlowClient slow(port, absl::StrCat("GET /slow HTTP/1.1\r\nHost: 127.0.0.1:", port, "\r\n"),
                  trickled, milliseconds(50));
  for (int i = 0; i < 3; ++i) {
    const auto asked = Clock::now();
    EXPECT_EQ(Get(port, "/other").status, 200);
    EXPECT_LT(SecondsSince(asked), 3.0);
  }
  ASSERT_TRUE(slow.WaitForEnd(std::chrono::seconds(30)));
  EXPECT_EQ(slow.reply().status, 408);
  EXPECT_THAT(slow.reply().body, HasSubstr("did not arrive within 2000 ms"));
  EXPECT_LT(slow.sent(), static_cast<int>(trickled.size()));
  EXPECT_LT(SecondsSince(start), 30.0);
}

// The same from the first byte: the request line itself trickles. cpp-httplib answers nothing
// before it has a request line, so the connection is closed unanswered at the deadline.
TEST(HttpServerTest, ASlowRequestLineIsClosedAtTheDeadline) {
  ServerOptions options;
  options.request_timeout = milliseconds(1'000);
  EchoServer echo(options);
  const auto start = Clock::now();
  SlowClient slow(echo.port(), "", std::string(1200, 'G'), milliseconds(50));
  ASSERT_TRUE(slow.WaitForEnd(std::chrono::seconds(30)));
  EXPECT_EQ(slow.reply().status, 0);
  EXPECT_LT(slow.sent(), 1200);
  EXPECT_LT(SecondsSince(start), 30.0);
}

TEST(HttpServerTest, ARequestThatStopsComingIsAnswered408) {
  ServerOptions options;
  options.read_timeout = milliseconds(300);
  EchoServer echo(options);
  const Reply reply = Exchange(echo.port(), "GET /stalled HTTP/1.1\r\nHost: x\r\n");  // no end
  EXPECT_EQ(reply.status, 408);
  EXPECT_THAT(reply.body, HasSubstr("no bytes of the request came for 300 ms"));
}

TEST(HttpServerTest, IdleConnectionsDoNotDelayOthers) {
  ServerOptions options;
  options.threads = 8;
  options.read_timeout = milliseconds(60'000);
  options.request_timeout = milliseconds(60'000);
  EchoServer echo(options);
  const std::vector<int> idle = OpenIdleConnections(echo.port(), 5);
  const auto asked = Clock::now();
  EXPECT_EQ(Get(echo.port(), "/scrape").status, 200);
  EXPECT_LT(SecondsSince(asked), 3.0);
  CloseAll(idle);
}

TEST(HttpServerTest, StopDoesNotWaitForSlowClients) {
  ServerOptions options;
  options.read_timeout = milliseconds(60'000);
  options.request_timeout = milliseconds(60'000);
  EchoServer echo(options);
  const int port = echo.port();
  SlowClient slow(port, "GET /slow HTTP/1.1\r\n", std::string(1200, 'x'), milliseconds(50));
  const std::vector<int> idle = OpenIdleConnections(port, 3);
  while (slow.sent() < 5) std::this_thread::sleep_for(milliseconds(10));
  const auto stopping = Clock::now();
  echo.server().Stop();
  EXPECT_LT(SecondsSince(stopping), 5.0);
  EXPECT_TRUE(slow.WaitForEnd(std::chrono::seconds(10)));
  EXPECT_LT(ConnectTo(port), 0);  // nothing listens any more
  CloseAll(idle);
}

// ---- Limits: sizes ------------------------------------------------------------------------------

TEST(HttpServerTest, OversizedHeadsAreRefused) {
  ServerOptions options;
  options.max_head_bytes = 16 << 10;
  EchoServer echo(options);
  const int port = echo.port();
  // One 100 KB header.
  Reply reply =
      Exchange(port, RequestText("GET", "/", port, "", "",
                                 absl::StrCat("X-Big: ", std::string(100'000, 'a'), "\r\n")));
  EXPECT_EQ(reply.status, 431);
  EXPECT_THAT(reply.body, HasSubstr("a header line exceeds 8192 bytes"));
  // Many header lines, each short, 100 KB together.
  std::string many;
  for (int i = 0; i < 1000; ++i)
    absl::StrAppend(&many, "X-H", i, ": ", std::string(90, 'b'), "\r\n");
  reply = Exchange(port, RequestText("GET", "/", port, "", "", many));
  EXPECT_EQ(reply.status, 431);
  EXPECT_THAT(reply.body, HasSubstr("request line and headers exceed 16384 bytes"));
  // A request line past 8 KiB: refused without an answer (cpp-httplib answers nothing there).
  reply = Exchange(port, RequestText("GET", absl::StrCat("/", std::string(10'000, 'p')), port));
  EXPECT_EQ(reply.status, 0);
  // Just under the limits: served.
  reply = Exchange(port, RequestText("GET", "/", port, "", "",
                                     absl::StrCat("X-Test: ", std::string(8000, 'c'), "\r\n")));
  EXPECT_EQ(reply.status, 200);
}

TEST(HttpServerTest, BodiesAreBoundedAndNeedALength) {
  ServerOptions options;
  options.max_body_bytes = 1000;
  EchoServer echo(options);
  const int port = echo.port();
  struct Case {
    std::string request;
    int status;
    std::string message;
  };
  const std::vector<Case> cases = {
      // Announced too long: refused at once, before a byte of the body.
      {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n", 413,
       "a body of 100000000 bytes exceeds the limit of 1000"},
      // Chunked past the limit: refused as it arrives.
      {absl::StrCat("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n",
                    std::string(2000, 'z'), "\r\n0\r\n\r\n"),
       413, "the request body exceeds 1000 bytes"},
      {"POST / HTTP/1.1\r\nHost: x\r\n\r\n", 411, "needs Content-Length"},
      {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n", 400,
       "Content-Length \"ten\" is not a number"},
      {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
       "Transfer-Encoding \"gzip\" is not supported"},
      {"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405, "TRACE requests are not served here"},
      {"BROKEN\r\n\r\n", 400, "not HTTP/1.1"},
  };
  for (const Case& c : cases) {
    const auto asked = Clock::now();
    const Reply reply = Exchange(port, c.request);
    EXPECT_EQ(reply.status, c.status) << c.message;
    EXPECT_THAT(reply.body, HasSubstr(c.message));
    EXPECT_LT(SecondsSince(asked), 3.0) << c.message;
  }
}

// ---- Limits: connections ------------------------------------------------------------------------

TEST(HttpServerTest, ConnectionsBeyondThreadsAndQueueAreClosedAtOnce) {
  ServerOptions options;
  options.threads = 1;
  options.max_queued_connections = 1;
  EchoServer echo(options);
  const int port = echo.port();
  std::thread busy([&] { EXPECT_EQ(Get(port, "/wait/").status, 200); });
  std::this_thread::sleep_for(milliseconds(300));  // the one thread is taken
  const int queued = ConnectTo(port);
  ASSERT_GE(queued, 0);
  ASSERT_TRUE(SendAll(queued, RequestText("GET", "/queued", port)));
  std::this_thread::sleep_for(milliseconds(300));  // accepted and queued
  const auto asked = Clock::now();
  EXPECT_EQ(Get(port, "/shed").status, 0);  // closed unanswered
  EXPECT_LT(SecondsSince(asked), 3.0);
  echo.Release();
  busy.join();
  std::string queued_reply;
  while (ReadSome(queued, &queued_reply, 10'000)) {
  }
  close(queued);
  EXPECT_THAT(queued_reply, HasSubstr("GET /queued"));  // served once the thread was free
}

// ---- Starting -----------------------------------------------------------------------------------

TEST(HttpServerTest, ParseListenAddress) {
  absl::StatusOr<ListenAddress> address = ParseListenAddress("127.0.0.1:8080");
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(address->host, "127.0.0.1");
  EXPECT_EQ(address->port, 8080);
  address = ParseListenAddress("localhost:0");
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(address->host, "127.0.0.1");
  EXPECT_EQ(address->port, 0);
  EXPECT_TRUE(ParseListenAddress("0.0.0.0:80").ok());
  for (const char* bad : {"8080", "example.com:80", "127.0.0.1:70000", ":80", "127.0.0.1:-1",
                          "127.0.0.1:", "[::1]:80"}) {
    const absl::Status status = ParseListenAddress(bad).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("\"", bad, "\""))) << bad;
  }
}

TEST(HttpServerTest, StartReportsAnAddressInUseAndBadOptions) {
  EchoServer first;
  const auto handler = [](const Request&, Response& response) {
    response.Send(200, "text/plain", "");
  };
  ServerOptions options;
  options.name = "second";
  absl::StatusOr<std::unique_ptr<Server>> second =
      Server::Start({"127.0.0.1", first.port()}, handler, options);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(),
              HasSubstr(absl::StrCat("cannot listen on 127.0.0.1:", first.port(),
                                     " (second): Address already in use")));
  options.threads = 0;
  EXPECT_THAT(Server::Start({"127.0.0.1", 0}, handler, options).status().message(),
              HasSubstr("second: threads = 0 is outside [1, 1024]"));
  options = ServerOptions{};
  options.request_timeout = milliseconds(0);
  EXPECT_THAT(Server::Start({"127.0.0.1", 0}, handler, options).status().message(),
              HasSubstr("request_timeout = 0 ms is not > 0"));
}

}  // namespace
}  // namespace gd::http
