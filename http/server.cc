#include "http/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <httplib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "http/connection.h"
#include "http/worker_pool.h"
#include "core/status_macros.h"

namespace gd::http {
namespace {

using internal::Connection;
using internal::Refusal;

constexpr char kText[] = "text/plain; charset=utf-8";

// Every path, for cpp-httplib's router (which matches a std::regex against the decoded path; the
// 8 KiB line limit keeps libstdc++'s recursive matcher far from the end of a thread's stack).
constexpr char kAnyPath[] = R"([\s\S]*)";

// The connection the current thread serves: cpp-httplib calls the pre-routing, error and route
// handlers on the thread that runs Engine::process_and_close_socket, with the request only.
thread_local Connection* t_connection = nullptr;

// cpp-httplib adds these to the request's headers; they are Request's fields here.
bool IsAddedByHttplib(const std::string& name) {
  return name == "REMOTE_ADDR" || name == "REMOTE_PORT" || name == "LOCAL_ADDR" ||
         name == "LOCAL_PORT";
}

// Why a request head is refused before its body is read, or nullopt to go on.
std::optional<Refusal> CheckBodyFraming(const httplib::Request& request, size_t max_body_bytes) {
  const std::string& method = request.method;
  const bool has_body =
      method == "POST" || method == "PUT" || method == "PATCH" || method == "DELETE";
  if (!has_body && method != "GET" && method != "HEAD" && method != "OPTIONS") {
    return Refusal{405, absl::StrCat(method, " requests are not served here")};
  }
  if (!has_body) return std::nullopt;
  if (request.has_header("Transfer-Encoding")) {
    const std::string coding = request.get_header_value("Transfer-Encoding");
    if (!absl::EqualsIgnoreCase(coding, "chunked")) {
      return Refusal{501, absl::StrCat("Transfer-Encoding \"", coding,
                                       "\" is not supported: send chunked or Content-Length")};
    }
    return std::nullopt;  // chunks count against max_body_bytes as they are read
  }
  if (!request.has_header("Content-Length")) {
    return Refusal{411,
                   absl::StrCat("a ", method, " needs Content-Length (0 when there is no body)")};
  }
  const std::string length_text = request.get_header_value("Content-Length");
  size_t length = 0;
  if (!absl::SimpleAtoi(length_text, &length)) {
    return Refusal{400, absl::StrCat("Content-Length \"", length_text, "\" is not a number")};
  }
  if (length > max_body_bytes) {
    return Refusal{
        413, absl::StrCat("a body of ", length, " bytes exceeds the limit of ", max_body_bytes)};
  }
  return std::nullopt;
}

Request ToRequest(const httplib::Request& from) {
  Request request;
  request.method = from.method;
  request.path = from.path;
  request.query.assign(from.params.begin(), from.params.end());
  for (const auto& [name, value] : from.headers) {
    if (!IsAddedByHttplib(name)) request.headers.emplace_back(absl::AsciiStrToLower(name), value);
  }
  request.body = from.body;
  request.local_address = from.local_addr;
  request.local_port = from.local_port;
  request.remote_address = from.remote_addr;
  return request;
}

class SinkWriter final : public StreamWriter {
 public:
  SinkWriter(httplib::DataSink& sink, const Connection& connection)
      : sink_(sink), connection_(connection) {}
  bool Write(absl::string_view bytes) override {
    if (!broken_ && !sink_.write(bytes.data(), bytes.size())) broken_ = true;
    return !broken_;
  }
  bool PeerGone() const override { return connection_.PeerGone(); }
  bool broken() const { return broken_; }

 private:
  httplib::DataSink& sink_;
  const Connection& connection_;
  bool broken_ = false;
};

class HttplibResponse final : public Response {
 public:
  HttplibResponse(httplib::Response& response, const Connection& connection)
      : response_(response), connection_(connection) {}

  void Send(int status, absl::string_view content_type, absl::string_view body,
            const Headers& headers) override {
    if (!Answer(status, headers)) return;
    response_.set_content(std::string(body), std::string(content_type));
  }

  void Stream(int status, absl::string_view content_type, StreamProducer producer,
              std::function<void()> on_end, const Headers& headers) override {
    if (!Answer(status, headers)) return;
    // Without a length: the body is raw bytes up to the end of the connection, never compressed
    // or chunked, so that each event reaches the peer as it is written.
    response_.set_content_provider(
        std::string(content_type),
        [connection = &connection_, producer = std::move(producer)](size_t /*offset*/,
                                                                    httplib::DataSink& sink) {
          SinkWriter writer(sink, *connection);
          if (!producer(writer)) sink.done();
          return !writer.broken();
        },
        [on_end = std::move(on_end)](bool /*success*/) {
          if (on_end) on_end();
        });
  }

  bool answered() const { return answered_; }

 private:
  bool Answer(int status, const Headers& headers) {
    if (answered_) return false;
    answered_ = true;
    response_.status = status;
    for (const auto& [name, value] : headers) response_.set_header(name, value);
    return true;
  }

  httplib::Response& response_;
  const Connection& connection_;
  bool answered_ = false;
};

absl::Status CheckOptions(const ServerOptions& options) {
  const auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(options.name, ": ", what));
  };
  if (options.threads < 1 || options.threads > 1024) {
    return bad(absl::StrCat("threads = ", options.threads, " is outside [1, 1024]"));
  }
  if (options.max_queued_connections < 0) {
    return bad(
        absl::StrCat("max_queued_connections = ", options.max_queued_connections, " is negative"));
  }
  for (const auto& [name, value] : {std::pair{"read_timeout", options.read_timeout},
                                    std::pair{"request_timeout", options.request_timeout},
                                    std::pair{"write_timeout", options.write_timeout}}) {
    if (value.count() <= 0) return bad(absl::StrCat(name, " = ", value.count(), " ms is not > 0"));
  }
  if (options.max_head_bytes < 64) {
    return bad(absl::StrCat("max_head_bytes = ", options.max_head_bytes, " is below 64"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string Request::Header(absl::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, name)) return value;
  }
  return "";
}

std::string Request::Query(absl::string_view name) const {
  for (const auto& [key, value] : query) {
    if (key == name) return value;
  }
  return "";
}

absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view text) {
  const size_t colon = text.rfind(':');
  ListenAddress address;
  in_addr parsed;
  if (colon != absl::string_view::npos) {
    address.host = std::string(text.substr(0, colon));
    if (address.host == "localhost") address.host = "127.0.0.1";
  }
  if (colon == absl::string_view::npos || inet_pton(AF_INET, address.host.c_str(), &parsed) != 1 ||
      !absl::SimpleAtoi(text.substr(colon + 1), &address.port) || address.port < 0 ||
      address.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" is not HOST:PORT with an IPv4 HOST (or localhost) and ",
                     "PORT in [0, 65535], e.g. 127.0.0.1:8080"));
  }
  return address;
}

// cpp-httplib's server with its connection handling replaced (process_and_close_socket is the
// virtual its TLS server overrides too): each connection is a Connection, one request long.
class Server::Engine final : public httplib::Server {
 public:
  Engine(http::Handler handler, const ServerOptions& options)
      : handler_(std::move(handler)),
        options_(options),
        limits_{options.read_timeout, options.request_timeout, options.write_timeout,
                options.max_head_bytes, options.max_body_bytes} {
    new_task_queue = [this] {
      return new internal::WorkerPool(options_.threads,
                                      static_cast<size_t>(options_.max_queued_connections));
    };
    // Not cpp-httplib's default SO_REUSEPORT, which would let a second server share the port.
    set_socket_options([](socket_t fd) {
      const int one = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    });
    set_payload_max_length(options.max_body_bytes);
    set_pre_routing_handler([this](const httplib::Request& request, httplib::Response& response) {
      return CheckHead(request, response);
    });
    set_error_handler(HandlerWithResponse([](const httplib::Request&, httplib::Response& response) {
      return ExplainError(response);
    }));
    set_exception_handler(
        [](const httplib::Request&, httplib::Response& response, const std::exception_ptr& error) {
          response.status = 500;
          response.set_content(absl::StrCat("internal error: ", Describe(error), "\n"), kText);
        });
    const auto route = [this](const httplib::Request& request, httplib::Response& response) {
      Route(request, response);
    };
    Get(kAnyPath, route);  // and HEAD
    Post(kAnyPath, route);
    Put(kAnyPath, route);
    Patch(kAnyPath, route);
    Delete(kAnyPath, route);
    Options(kAnyPath, route);
  }

  // Refuses connections from now on, shuts the open ones down and closes the listening socket
  // (cpp-httplib's stop() does nothing before its accept loop has started).
  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      for (Connection* connection : open_) connection->Abort();
    }
    const socket_t listening = svr_sock_.exchange(INVALID_SOCKET);
    if (listening != INVALID_SOCKET) {
      shutdown(listening, SHUT_RDWR);  // wakes the blocked accept()
      close(listening);
    }
  }

 private:
  bool process_and_close_socket(socket_t fd) override {
    fcntl(fd, F_SETFD, FD_CLOEXEC);      // cpp-httplib's accept() does not set it
    Connection connection(fd, limits_);  // closes fd when it goes
    if (internal::ConnectionIsShed() || !Track(&connection)) return false;
    t_connection = &connection;
    bool closed_by_peer = false;
    const bool served =
        process_request(connection, /*close_connection=*/true, closed_by_peer, nullptr);
    t_connection = nullptr;
    // A refusal answered while the peer may still be sending: keep its answer from a reset.
    if (connection.refusal().has_value() && connection.answered()) connection.DrainAfterRefusal();
    std::lock_guard<std::mutex> lock(mu_);
    open_.erase(&connection);
    return served;
  }

  bool Track(Connection* connection) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    open_.insert(connection);
    return true;
  }

  // Pre-routing: the head has been read, the body not yet.
  HandlerResponse CheckHead(const httplib::Request& request, httplib::Response& response) {
    t_connection->EndHead();
    const std::optional<Refusal> refusal = CheckBodyFraming(request, options_.max_body_bytes);
    if (!refusal.has_value()) return HandlerResponse::Unhandled;
    t_connection->Refuse(refusal->status, refusal->message);
    response.status = refusal->status;
    response.set_content(refusal->message + "\n", kText);
    return HandlerResponse::Handled;
  }

  void Route(const httplib::Request& request, httplib::Response& response) {
    HttplibResponse answer(response, *t_connection);
    handler_(ToRequest(request), answer);
    if (!answer.answered()) answer.Send(500, kText, "the handler sent no response\n", {});
  }

  // Error handler: every answer of status >= 400 passes here before it is written. Those of the
  // parser itself have no body yet: say why.
  static HandlerResponse ExplainError(httplib::Response& response) {
    if (!response.body.empty() || response.content_provider_) return HandlerResponse::Unhandled;
    const Connection* connection = t_connection;
    if (response.status == 400 && connection != nullptr && connection->refusal().has_value()) {
      // The parser's 400 after a read this connection refused (a limit, the deadline).
      const Refusal& refusal = *connection->refusal();
      response.status = refusal.status;
      response.set_content(refusal.message + "\n", kText);
    } else if (response.status == 400) {
      response.set_content("the request is not HTTP/1.1 as this server reads it\n", kText);
    } else {
      response.set_content(absl::StrCat("HTTP status ", response.status, "\n"), kText);
    }
    return HandlerResponse::Handled;
  }

  static std::string Describe(const std::exception_ptr& error) {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      return e.what();
    } catch (...) {
      return "an exception that is not a std::exception";
    }
  }

  const http::Handler handler_;  // ours, not httplib::Server::Handler
  const ServerOptions options_;
  const internal::ConnectionLimits limits_;
  std::mutex mu_;
  std::set<Connection*> open_;  // guarded by mu_
  bool stopping_ = false;       // guarded by mu_
};

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ListenAddress& address, Handler handler,
                                                      const ServerOptions& options) {
  RETURN_IF_ERROR(CheckOptions(options));
  std::unique_ptr<Server> server(new Server());
  server->engine_ = std::make_unique<Engine>(std::move(handler), options);
  errno = 0;
  const int port =
      address.port == 0
          ? server->engine_->bind_to_any_port(address.host)
          : (server->engine_->bind_to_port(address.host, address.port) ? address.port : -1);
  if (port < 0) {
    const int error = errno;
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address.host, ":", address.port, " (", options.name,
                     "): ", error != 0 ? std::strerror(error) : "not an address of this machine"));
  }
  server->host_ = address.host;
  server->port_ = port;
  server->listener_ =
      std::thread([engine = server->engine_.get()] { engine->listen_after_bind(); });
  return server;
}

Server::Server() = default;

Server::~Server() { Stop(); }

void Server::Stop() {
  if (engine_ == nullptr) return;
  engine_->Shutdown();
  if (listener_.joinable()) listener_.join();
}

}  // namespace gd::http
