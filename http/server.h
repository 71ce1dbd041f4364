// gd_http: the one HTTP/1.1 server of the project, used by `gd view` (its page, JSON API and
// server-sent events) and by gd-server's metrics endpoint (/metrics, /healthz, /readyz).
//
// cpp-httplib (Debian 12's libcpp-httplib, 0.11.4) parses requests and writes responses; this
// wrapper adds what that version lacks for a port anyone on the network can reach, each limit
// named in ServerOptions:
//   - a fixed pool of `threads`, so that a slow or idle client holds one thread and no more;
//     connections beyond `threads` + `max_queued_connections` are closed at once;
//   - a deadline for the whole request (line, headers and body: `request_timeout`, then 408), a
//     timeout between its bytes (`read_timeout`) and for each write (`write_timeout`);
//   - a cap on the request head (`max_head_bytes`, and 8 KiB per line, cpp-httplib's own limit:
//     431) and on the body (`max_body_bytes`: 413; a body without Content-Length: 411);
//   - Stop() that shuts every open connection down instead of waiting for its client.
// One request per connection (every response says Connection: close).
//
// Knows nothing of gRPC, LibTorch or what it serves: a Handler does.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gd::http {

// Response headers as (name, value) pairs: {{"Cache-Control", "no-store"}}.
using Headers = std::vector<std::pair<std::string, std::string>>;

struct Request {
  std::string method;  // "GET", "POST", ...
  std::string path;    // percent-decoded, without the query: "/api/runs/r1/events"
  std::vector<std::pair<std::string, std::string>> query;    // decoded parameters
  std::vector<std::pair<std::string, std::string>> headers;  // names in lower case
  std::string body;
  std::string local_address;  // the address of this machine the request arrived on
  int local_port = 0;         // and its port: the server's
  std::string remote_address;

  // The first header of that name (any case), or "".
  std::string Header(absl::string_view name) const;
  // The first query parameter of that name, or "".
  std::string Query(absl::string_view name) const;
};

// What a streaming response writes with (see Response::Stream).
class StreamWriter {
 public:
  virtual ~StreamWriter() = default;
  // False once the peer is gone or took nothing for write_timeout: stop writing.
  virtual bool Write(absl::string_view bytes) = 0;
  // True when the peer has closed the connection (a closed tab); never blocks.
  virtual bool PeerGone() const = 0;
};

// Called again and again after the handler returns, on the connection's thread, until it
// returns false (the response is complete), the peer goes away or the server stops. Each call
// should wait for something to write for a bounded time (a second, say), not spin.
using StreamProducer = std::function<bool(StreamWriter&)>;

// A handler's answer: one Send or one Stream. A handler that does neither gets a 500.
class Response {
 public:
  virtual ~Response() = default;
  virtual void Send(int status, absl::string_view content_type, absl::string_view body,
                    const Headers& headers = {}) = 0;
  // An open-ended response (text/event-stream): its body is what `producer` writes, until the
  // connection closes. `on_end` runs once when the response is over, however it ended.
  virtual void Stream(int status, absl::string_view content_type, StreamProducer producer,
                      std::function<void()> on_end = nullptr, const Headers& headers = {}) = 0;
};

using Handler = std::function<void(const Request&, Response&)>;

// An IPv4 address to listen on.
struct ListenAddress {
  std::string host;  // dotted quad
  int port = 0;      // 0: the kernel picks a free port
};

// "HOST:PORT" with HOST an IPv4 address or "localhost" (127.0.0.1) and PORT in [0, 65535].
// InvalidArgument naming the text otherwise.
absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view text);

// The limits of one server. Defaults suit a page on the loopback interface; the metrics
// endpoint's are MetricsHttpOptions() (server/metrics.h).
struct ServerOptions {
  std::string name = "http";  // in error messages: "metrics", "gd view"
  // Connections served at once, each on its own thread of a fixed pool. A streaming response
  // holds its thread for as long as it streams.
  int threads = 8;
  // Accepted connections waiting for a thread; more are closed as soon as they are accepted.
  int max_queued_connections = 64;
  // The longest wait for the next bytes of a request; an idle connection is closed after it.
  std::chrono::milliseconds read_timeout{5'000};
  // The whole request (line, headers, body) must arrive within this from when a thread takes
  // the connection up; past it the request is answered 408 (a slow-loris client is cut off).
  std::chrono::milliseconds request_timeout{10'000};
  // The longest wait for the peer to take more of the response; then the connection is dropped.
  std::chrono::milliseconds write_timeout{10'000};
  size_t max_head_bytes = 16 << 10;  // request line and headers; more: 431
  size_t max_body_bytes = 1 << 20;   // more: 413
};

class Server {
 public:
  // Binds, listens and serves `handler` on its own threads. InvalidArgument for options out of
  // range; UNAVAILABLE when the address cannot be bound (in use, not this machine's), naming it
  // and the OS's reason.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ListenAddress& address,
                                                       Handler handler,
                                                       const ServerOptions& options);
  ~Server();  // Stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Stops accepting, shuts every open connection down (reads and writes fail at once, streams
  // end after their producer's current call) and joins every thread. A handler waiting on
  // something else must be woken by its owner first. Idempotent.
  void Stop();

  const std::string& host() const { return host_; }
  int port() const { return port_; }

 private:
  class Engine;  // the cpp-httplib server underneath (server.cc)

  Server();

  std::unique_ptr<Engine> engine_;
  std::thread listener_;
  std::string host_;
  int port_ = 0;
};

}  // namespace gd::http
