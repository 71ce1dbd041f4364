// A small HTTP/1.1 server on POSIX sockets, for `gd view`'s page and its JSON/SSE bridge: one
// thread per connection, one request per connection (Connection: close), request bodies by
// Content-Length only, and open-ended responses for server-sent events. Enough for a few browser
// tabs on the loopback interface; not a general web server (no keep-alive, no chunked requests,
// no TLS). Knows nothing of gRPC or of what it serves: a handler does.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gd::client {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // without the query: "/api/runs/r1/events"
  std::string query;   // what followed '?', undecoded
  std::vector<std::pair<std::string, std::string>> headers;  // names in lower case
  std::string body;

  // The first header of that (lower-case) name, or "".
  std::string Header(absl::string_view name) const;
};

// A handler's answer: either one Send, or StartStream followed by any number of Writes (the
// response ends when the handler returns). A handler that does neither gets a 500 sent for it.
class HttpResponse {
 public:
  HttpResponse(const HttpResponse&) = delete;
  HttpResponse& operator=(const HttpResponse&) = delete;

  // A complete response. `extra_headers` are whole lines without CRLF ("Cache-Control: no-store").
  void Send(int status, absl::string_view content_type, absl::string_view body,
            const std::vector<std::string>& extra_headers = {});
  // The head of an open-ended response (text/event-stream). False when the peer is gone.
  bool StartStream(int status, absl::string_view content_type);
  // Part of an open-ended response. False once the peer is gone (then stop writing).
  bool Write(absl::string_view bytes);
  // True when the peer has closed the connection (a closed tab), checked without blocking.
  bool PeerClosed() const;

  bool started() const { return started_; }

 private:
  friend class HttpServer;
  explicit HttpResponse(int fd) : fd_(fd) {}
  bool SendAll(absl::string_view bytes);

  int fd_;
  bool started_ = false;
  bool broken_ = false;
};

using HttpHandler = std::function<void(const HttpRequest&, HttpResponse&)>;

// The standard reason phrase of a status code ("Not Found"); "Unknown" for codes not used here.
const char* HttpReason(int status);

// An IPv4 address to listen on.
struct ListenAddress {
  std::string host;  // dotted quad
  int port = 0;      // 0: the kernel picks a free port
};

// "HOST:PORT" with HOST an IPv4 address or "localhost" (127.0.0.1) and PORT in [0, 65535].
// InvalidArgument naming the text otherwise.
absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view text);

struct HttpServerOptions {
  int max_connections = 64;             // open at once; more are answered 503 and closed
  size_t max_head_bytes = 16 << 10;     // request line and headers; more: 431
  size_t max_body_bytes = 8 << 20;      // more: 413
  int64_t request_timeout_ms = 10'000;  // for the whole request to arrive; then 408
  int64_t send_timeout_ms = 30'000;     // a peer that reads nothing this long is dropped
};

class HttpServer {
 public:
  // Binds, listens and starts serving `handler` on its own threads. UNAVAILABLE when the address
  // cannot be bound (in use, not local), naming it and the OS's reason.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const ListenAddress& address,
                                                           HttpHandler handler,
                                                           HttpServerOptions options = {});
  ~HttpServer() { Stop(); }
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Stops accepting, shuts the open connections down (their Writes fail, PeerClosed turns true)
  // and joins every thread. A handler waiting on something else must be woken by its owner
  // first. Idempotent.
  void Stop();

  const std::string& host() const { return host_; }
  int port() const { return port_; }

 private:
  struct Connection {
    int fd = -1;  // -1 once closed; guarded by HttpServer::mu_
    std::thread thread;
    std::atomic<bool> done{false};
  };

  HttpServer(HttpHandler handler, HttpServerOptions options)
      : handler_(std::move(handler)), options_(options) {}
  void AcceptLoop();
  void Serve(Connection* connection);
  // Joins the threads of finished connections.
  void Reap();

  HttpHandler handler_;
  HttpServerOptions options_;
  std::string host_;
  int port_ = 0;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread accept_thread_;
  std::mutex mu_;
  std::list<std::unique_ptr<Connection>> connections_;  // guarded by mu_
};

}  // namespace gd::client
