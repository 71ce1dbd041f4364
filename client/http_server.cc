#include "client/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace gd::client {
namespace {

using Clock = std::chrono::steady_clock;

// A parse failure, answered with `status` and `message` before the connection closes.
struct BadRequest {
  int status = 0;
  std::string message;
};

// Reads the request head and body from `fd` before `deadline`. Returns false with `bad` set on
// a malformed, oversized or late request; false with bad->status 0 when the peer went away.
bool ReadRequest(int fd, const HttpServerOptions& options, HttpRequest* request, BadRequest* bad) {
  const Clock::time_point deadline =
      Clock::now() + std::chrono::milliseconds(options.request_timeout_ms);
  std::string data;
  char buffer[8192];
  // Reads more into `data`; false on timeout (bad set) or end of stream.
  auto read_more = [&]() {
    const int64_t left_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    pollfd ready{fd, POLLIN, 0};
    if (left_ms <= 0 || poll(&ready, 1, static_cast<int>(left_ms)) <= 0) {
      *bad = {408, "the request did not arrive in time"};
      return false;
    }
    const ssize_t got = recv(fd, buffer, sizeof(buffer), 0);
    if (got <= 0) return false;
    data.append(buffer, static_cast<size_t>(got));
    return true;
  };

  size_t head_end;
  while ((head_end = data.find("\r\n\r\n")) == std::string::npos) {
    if (data.size() > options.max_head_bytes) {
      *bad = {431, absl::StrCat("the request head exceeds ", options.max_head_bytes, " bytes")};
      return false;
    }
    if (!read_more()) return false;
  }
  if (head_end > options.max_head_bytes) {
    *bad = {431, absl::StrCat("the request head exceeds ", options.max_head_bytes, " bytes")};
    return false;
  }
  std::vector<absl::string_view> lines =
      absl::StrSplit(absl::string_view(data).substr(0, head_end), "\r\n");
  std::vector<absl::string_view> request_line = absl::StrSplit(lines[0], ' ');
  if (request_line.size() != 3 || !absl::StartsWith(request_line[2], "HTTP/1.") ||
      request_line[1].empty() || request_line[1][0] != '/') {
    *bad = {400, "malformed request line"};
    return false;
  }
  request->method = std::string(request_line[0]);
  const absl::string_view target = request_line[1];
  const size_t question = target.find('?');
  request->path = std::string(target.substr(0, question));
  if (question != absl::string_view::npos)
    request->query = std::string(target.substr(question + 1));
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos || colon == 0) {
      *bad = {400, "malformed header line"};
      return false;
    }
    request->headers.emplace_back(
        absl::AsciiStrToLower(lines[i].substr(0, colon)),
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1))));
  }
  if (!request->Header("transfer-encoding").empty()) {
    *bad = {501, "chunked request bodies are not supported; send Content-Length"};
    return false;
  }
  size_t body_bytes = 0;
  if (const std::string length = request->Header("content-length"); !length.empty()) {
    if (!absl::SimpleAtoi(length, &body_bytes)) {
      *bad = {400, absl::StrCat("Content-Length \"", length, "\" is not a number")};
      return false;
    }
    if (body_bytes > options.max_body_bytes) {
      *bad = {413,
              absl::StrCat("the body of ", body_bytes, " bytes exceeds ", options.max_body_bytes)};
      return false;
    }
  }
  data.erase(0, head_end + 4);
  while (data.size() < body_bytes) {
    if (!read_more()) return false;
  }
  data.resize(body_bytes);
  request->body = std::move(data);
  return true;
}

}  // namespace

std::string HttpRequest::Header(absl::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (key == name) return value;
  }
  return "";
}

const char* HttpReason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 413:
      return "Payload Too Large";
    case 415:
      return "Unsupported Media Type";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Unknown";
  }
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

void HttpResponse::Send(int status, absl::string_view content_type, absl::string_view body,
                        const std::vector<std::string>& extra_headers) {
  if (started_) return;
  started_ = true;
  std::string head =
      absl::StrCat("HTTP/1.1 ", status, " ", HttpReason(status), "\r\nContent-Type: ", content_type,
                   "\r\nContent-Length: ", body.size(), "\r\n");
  for (const std::string& header : extra_headers) absl::StrAppend(&head, header, "\r\n");
  absl::StrAppend(&head, "Connection: close\r\n\r\n");
  if (SendAll(head)) SendAll(body);
}

bool HttpResponse::StartStream(int status, absl::string_view content_type) {
  if (started_) return false;
  started_ = true;
  return SendAll(absl::StrCat("HTTP/1.1 ", status, " ", HttpReason(status),
                              "\r\nContent-Type: ", content_type,
                              "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"));
}

bool HttpResponse::Write(absl::string_view bytes) { return started_ && SendAll(bytes); }

bool HttpResponse::PeerClosed() const {
  if (broken_) return true;
  pollfd ready{fd_, POLLIN | POLLRDHUP, 0};
  if (poll(&ready, 1, 0) <= 0) return false;
  if (ready.revents & (POLLHUP | POLLERR | POLLRDHUP)) return true;
  char byte;
  return recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

bool HttpResponse::SendAll(absl::string_view bytes) {
  while (!broken_ && !bytes.empty()) {
    const ssize_t sent = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) {
      broken_ = true;  // gone, or reading nothing for send_timeout_ms
      break;
    }
    bytes.remove_prefix(static_cast<size_t>(sent));
  }
  return !broken_;
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const ListenAddress& address,
                                                              HttpHandler handler,
                                                              HttpServerOptions options) {
  std::unique_ptr<HttpServer> server(new HttpServer(std::move(handler), options));
  const std::string where = absl::StrCat(address.host, ":", address.port);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(address.port));
  if (inet_pton(AF_INET, address.host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", address.host, "\" is not an IPv4 address"));
  }
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 64) != 0) {
    const int error = errno;
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", where, ": ", std::strerror(error)));
  }
  socklen_t length = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length);
  server->listen_fd_ = fd;
  server->host_ = address.host;
  server->port_ = ntohs(addr.sin_port);
  server->accept_thread_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

void HttpServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (accept_thread_.joinable()) accept_thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  listen_fd_ = -1;
  std::list<std::unique_ptr<Connection>> connections;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& connection : connections_) {
      if (connection->fd >= 0) shutdown(connection->fd, SHUT_RDWR);
    }
    connections.swap(connections_);
  }
  for (const auto& connection : connections) connection->thread.join();
}

void HttpServer::AcceptLoop() {
  while (!stopping_) {
    pollfd ready{listen_fd_, POLLIN, 0};
    const int polled = poll(&ready, 1, 200);
    Reap();
    if (polled <= 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    const timeval send_timeout{options_.send_timeout_ms / 1000,
                               static_cast<suseconds_t>(options_.send_timeout_ms % 1000 * 1000)};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<int>(connections_.size()) >= options_.max_connections) {
      HttpResponse busy(fd);
      busy.Send(503, "text/plain; charset=utf-8",
                absl::StrCat("more than ", options_.max_connections, " open connections\n"));
      close(fd);
      continue;
    }
    connections_.push_back(std::make_unique<Connection>());
    Connection* connection = connections_.back().get();
    connection->fd = fd;
    connection->thread = std::thread([this, connection] { Serve(connection); });
  }
}

void HttpServer::Serve(Connection* connection) {
  const int fd = connection->fd;  // set before this thread started; closed only below
  HttpRequest request;
  BadRequest bad;
  HttpResponse response(fd);
  if (ReadRequest(fd, options_, &request, &bad)) {
    handler_(request, response);
    if (!response.started()) response.Send(500, "text/plain; charset=utf-8", "no response\n");
  } else if (bad.status != 0) {
    response.Send(bad.status, "text/plain; charset=utf-8", bad.message + "\n");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    close(fd);
    connection->fd = -1;
  }
  connection->done = true;
}

void HttpServer::Reap() {
  std::list<std::unique_ptr<Connection>> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto next = std::next(it);
      if ((*it)->done) finished.splice(finished.end(), connections_, it);
      it = next;
    }
  }
  for (const auto& connection : finished) connection->thread.join();
}

}  // namespace gd::client
