// A raw-socket HTTP/1.1 client for tests of gd_http's servers (`gd view`, the metrics endpoint,
// gd_http itself): whole exchanges with exact bytes, and the pieces of clients that send a byte
// at a time or nothing at all. Raw sockets on purpose: a well-behaved client library cannot
// misbehave the way these tests need.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/string_view.h"

namespace gd::http::testing {

// A TCP connection to 127.0.0.1:port; -1 when it cannot connect.
int ConnectTo(int port);
bool SendAll(int fd, absl::string_view bytes);
// Appends what arrives within timeout_ms; false at the end of the stream or on timeout.
bool ReadSome(int fd, std::string* data, int timeout_ms);

// A request with "Host: 127.0.0.1:PORT" and, for a body or a POST, Content-Length.
// `extra_headers` are whole lines, each ending in CRLF.
std::string RequestText(absl::string_view method, absl::string_view path, int port,
                        absl::string_view body = "", absl::string_view content_type = "",
                        absl::string_view extra_headers = "");

struct Reply {
  int status = 0;  // 0: the connection closed without an answer
  std::string head;
  std::string body;
  std::string Header(absl::string_view name) const;
};

// Sends `raw` and reads until the server closes the connection, or until nothing has come for
// timeout_ms.
Reply Exchange(int port, absl::string_view raw, int timeout_ms = 10'000);
Reply Get(int port, absl::string_view path);

// Seconds since `start`.
double SecondsSince(std::chrono::steady_clock::time_point start);

// A slow-loris client: sends `at_once` (say the request line), then, on a thread of its own,
// `trickled` one byte every `interval` until all of it is sent, the server closes the
// connection, or the client is destroyed; then reads whatever answer the server gave.
class SlowClient {
 public:
  SlowClient(int port, absl::string_view at_once, std::string trickled,
             std::chrono::milliseconds interval);
  ~SlowClient();
  SlowClient(const SlowClient&) = delete;
  SlowClient& operator=(const SlowClient&) = delete;

  // Waits up to `timeout` for the exchange to end (the server closed the connection, or all was
  // sent and answered); false when it is still going.
  bool WaitForEnd(std::chrono::milliseconds timeout);
  // Bytes of `trickled` sent so far.
  int sent() const;
  // The answer, once WaitForEnd has returned true.
  Reply reply() const;

 private:
  void Run(int fd);

  const std::string trickled_;
  const std::chrono::milliseconds interval_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  bool stop_ = false;   // guarded by mu_
  bool ended_ = false;  // guarded by mu_
  int sent_ = 0;        // guarded by mu_
  Reply reply_;         // guarded by mu_
  std::thread thread_;
};

// `count` connections that send nothing; closing them is the caller's (CloseAll).
std::vector<int> OpenIdleConnections(int port, int count);
void CloseAll(const std::vector<int>& fds);

}  // namespace gd::http::testing
