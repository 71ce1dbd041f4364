#include "http/connection.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace gd::http::internal {
namespace {

using Clock = std::chrono::steady_clock;

// After a refusal the peer may still be sending (the rest of a 100 KB header): reading it for a
// while keeps the kernel from answering it with a reset that could destroy the refusal in flight.
constexpr std::chrono::milliseconds kDrainTime{1'000};
constexpr size_t kMaxDrainBytes = 1 << 20;

// Milliseconds until `deadline` for poll(): at least 0, rounded up so that a wait does not end
// just short of the deadline and spin.
int PollMillis(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
}

// poll() for `events` until `deadline`, retrying when interrupted: true when ready.
bool WaitFor(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd ready{fd, events, 0};
    const int polled = poll(&ready, 1, PollMillis(deadline));
    if (polled < 0 && errno == EINTR) continue;
    return polled > 0;
  }
}

void Address(const sockaddr_storage& address, std::string& ip, int& port) {
  char text[INET6_ADDRSTRLEN] = "";
  if (address.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(address);
    inet_ntop(AF_INET, &v4.sin_addr, text, sizeof(text));
    port = ntohs(v4.sin_port);
  } else if (address.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(address);
    inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof(text));
    port = ntohs(v6.sin6_port);
  }
  ip = text;
}

}  // namespace

Connection::Connection(int fd, const ConnectionLimits& limits)
    : fd_(fd), limits_(limits), request_deadline_(Clock::now() + limits.request_timeout) {}

Connection::~Connection() { close(fd_); }

bool Connection::is_readable() const {
  if (buffer_begin_ < buffer_end_) return true;
  if (refusal_.has_value()) return false;
  return WaitFor(fd_, POLLIN, std::min(request_deadline_, Clock::now() + limits_.read_timeout));
}

bool Connection::is_writable() const {
  return WaitFor(fd_, POLLOUT, Clock::now() + limits_.write_timeout) && !PeerGone();
}

ssize_t Connection::read(char* ptr, size_t size) {
  if (refusal_.has_value()) return -1;
  if (buffer_begin_ == buffer_end_) {
    if (!Fill()) return refusal_.has_value() ? -1 : 0;
  }
  const size_t count = std::min(size, buffer_end_ - buffer_begin_);
  const char* bytes = buffer_ + buffer_begin_;
  if (!Account(bytes, count)) return -1;
  std::memcpy(ptr, bytes, count);
  buffer_begin_ += count;
  return static_cast<ssize_t>(count);
}

bool Connection::Fill() {
  for (;;) {
    const Clock::time_point now = Clock::now();
    if (now >= request_deadline_) {
      Refuse(408, absl::StrCat("the request did not arrive within ",
                               limits_.request_timeout.count(), " ms"));
      return false;
    }
    const Clock::time_point idle_deadline = now + limits_.read_timeout;
    if (!WaitFor(fd_, POLLIN, std::min(request_deadline_, idle_deadline))) {
      if (Clock::now() >= request_deadline_) continue;  // refused above, with that reason
      Refuse(408, absl::StrCat("no bytes of the request came for ", limits_.read_timeout.count(),
                               " ms"));
      return false;
    }
    const ssize_t got = recv(fd_, buffer_, sizeof(buffer_), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;  // the peer closed its end, or the connection broke
    buffer_begin_ = 0;
    buffer_end_ = static_cast<size_t>(got);
    return true;
  }
}

bool Connection::Account(const char* bytes, size_t size) {
  if (!in_head_) {
    body_bytes_ += size;
    if (body_bytes_ > limits_.max_body_bytes) {
      Refuse(413, absl::StrCat("the request body exceeds ", limits_.max_body_bytes, " bytes"));
      return false;
    }
    return true;
  }
  head_bytes_ += size;
  if (head_bytes_ > limits_.max_head_bytes) {
    Refuse(431,
           absl::StrCat("the request line and headers exceed ", limits_.max_head_bytes, " bytes"));
    return false;
  }
  for (size_t i = 0; i < size; ++i) {
    if (bytes[i] == '\n') {
      line_bytes_ = 0;
      first_line_ = false;
    } else if (++line_bytes_ >= kMaxLineBytes) {  // the line and its '\n' exceed the limit
      if (first_line_) {
        Refuse(414, absl::StrCat("the request line exceeds ", kMaxLineBytes, " bytes"));
      } else {
        Refuse(431, absl::StrCat("a header line exceeds ", kMaxLineBytes, " bytes"));
      }
      return false;
    }
  }
  return true;
}

ssize_t Connection::write(const char* ptr, size_t size) {
  const Clock::time_point deadline = Clock::now() + limits_.write_timeout;
  for (;;) {
    if (!WaitFor(fd_, POLLOUT, deadline)) return -1;  // the peer takes nothing: drop it
    const ssize_t sent = send(fd_, ptr, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (sent < 0) return -1;
    written_bytes_ += static_cast<size_t>(sent);
    return sent;
  }
}

void Connection::get_remote_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (getpeername(fd_, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
    Address(address, ip, port);
  }
}

void Connection::get_local_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
    Address(address, ip, port);
  }
}

void Connection::Refuse(int status, std::string message) {
  if (!refusal_.has_value()) refusal_ = Refusal{status, std::move(message)};
}

bool Connection::PeerGone() const {
  pollfd ready{fd_, POLLIN | POLLRDHUP, 0};
  if (poll(&ready, 1, 0) <= 0) return false;
  if (ready.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLNVAL)) return true;
  char byte;
  return recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

void Connection::Abort() { shutdown(fd_, SHUT_RDWR); }

void Connection::DrainAfterRefusal() {
  shutdown(fd_, SHUT_WR);  // the answer is complete: the peer sees its end
  const Clock::time_point deadline = Clock::now() + kDrainTime;
  char sink[4096];
  size_t drained = 0;
  while (drained < kMaxDrainBytes && WaitFor(fd_, POLLIN, deadline)) {
    const ssize_t got = recv(fd_, sink, sizeof(sink), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    drained += static_cast<size_t>(got);
  }
}

}  // namespace gd::http::internal
