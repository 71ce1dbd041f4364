#include "tests/http/raw_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"

namespace gd::http::testing {
namespace {

using Clock = std::chrono::steady_clock;

// Splits what a server sent into status, head and body.
Reply ParseReply(const std::string& data) {
  Reply reply;
  const size_t end = data.find("\r\n\r\n");
  if (end == std::string::npos) return reply;
  reply.head = data.substr(0, end);
  reply.body = data.substr(end + 4);
  std::vector<std::string> status_line = absl::StrSplit(reply.head, ' ');
  if (status_line.size() >= 2) (void)absl::SimpleAtoi(status_line[1], &reply.status);
  return reply;
}

// Reads until the end of the stream or until nothing comes for timeout_ms.
std::string ReadToEnd(int fd, int timeout_ms) {
  std::string data;
  while (ReadSome(fd, &data, timeout_ms)) {
  }
  return data;
}

}  // namespace

int ConnectTo(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t sent = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (sent <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(sent));
  }
  return true;
}

bool ReadSome(int fd, std::string* data, int timeout_ms) {
  pollfd ready{fd, POLLIN, 0};
  if (poll(&ready, 1, timeout_ms) <= 0) return false;
  char buffer[65536];
  const ssize_t got = recv(fd, buffer, sizeof(buffer), 0);
  if (got <= 0) return false;
  data->append(buffer, static_cast<size_t>(got));
  return true;
}

std::string RequestText(absl::string_view method, absl::string_view path, int port,
                        absl::string_view body, absl::string_view content_type,
                        absl::string_view extra_headers) {
  std::string text = absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1:", port, "\r\n");
  if (!content_type.empty()) absl::StrAppend(&text, "Content-Type: ", content_type, "\r\n");
  if (!body.empty() || method == "POST") {
    absl::StrAppend(&text, "Content-Length: ", body.size(), "\r\n");
  }
  absl::StrAppend(&text, extra_headers, "\r\n", body);
  return text;
}

std::string Reply::Header(absl::string_view name) const {
  for (absl::string_view line : absl::StrSplit(head, "\r\n")) {
    const size_t colon = line.find(':');
    if (colon != absl::string_view::npos &&
        absl::AsciiStrToLower(line.substr(0, colon)) == absl::AsciiStrToLower(name)) {
      return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
  }
  return "";
}

Reply Exchange(int port, absl::string_view raw, int timeout_ms) {
  const int fd = ConnectTo(port);
  if (fd < 0) {
    ADD_FAILURE() << "cannot connect to port " << port;
    return Reply{};
  }
  // A server may answer and close before all of `raw` is sent (a refused head): read anyway.
  (void)SendAll(fd, raw);
  const std::string data = ReadToEnd(fd, timeout_ms);
  close(fd);
  return ParseReply(data);
}

Reply Get(int port, absl::string_view path) {
  return Exchange(port, RequestText("GET", path, port));
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

SlowClient::SlowClient(int port, absl::string_view at_once, std::string trickled,
                       std::chrono::milliseconds interval)
    : trickled_(std::move(trickled)), interval_(interval) {
  const int fd = ConnectTo(port);
  if (fd < 0 || !SendAll(fd, at_once)) {
    ADD_FAILURE() << "cannot connect and send to port " << port;
    if (fd >= 0) close(fd);
    ended_ = true;
    return;
  }
  thread_ = std::thread([this, fd] { Run(fd); });
}

SlowClient::~SlowClient() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void SlowClient::Run(int fd) {
  std::string received;
  bool closed_by_server = false;
  for (size_t i = 0; i < trickled_.size() && !closed_by_server; ++i) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (changed_.wait_for(lock, interval_, [this] { return stop_; })) break;
    }
    // An answer (or the end of the stream) before the request is complete: the server gave up.
    pollfd ready{fd, POLLIN, 0};
    if (poll(&ready, 1, 0) > 0 && !ReadSome(fd, &received, 0)) closed_by_server = true;
    if (!received.empty() || closed_by_server) break;
    if (!SendAll(fd, absl::string_view(trickled_).substr(i, 1))) break;
    std::lock_guard<std::mutex> lock(mu_);
    ++sent_;
  }
  received += ReadToEnd(fd, 10'000);
  close(fd);
  std::lock_guard<std::mutex> lock(mu_);
  reply_ = ParseReply(received);
  ended_ = true;
  changed_.notify_all();
}

bool SlowClient::WaitForEnd(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return changed_.wait_for(lock, timeout, [this] { return ended_; });
}

int SlowClient::sent() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sent_;
}

Reply SlowClient::reply() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reply_;
}

std::vector<int> OpenIdleConnections(int port, int count) {
  std::vector<int> fds;
  for (int i = 0; i < count; ++i) {
    const int fd = ConnectTo(port);
    EXPECT_GE(fd, 0) << "idle connection " << i;
    if (fd >= 0) fds.push_back(fd);
  }
  return fds;
}

void CloseAll(const std::vector<int>& fds) {
  for (const int fd : fds) close(fd);
}

}  // namespace gd::http::testing
