// One accepted connection of gd::http::Server, as the byte stream cpp-httplib parses the request
// from and writes the response to (it replaces cpp-httplib's own socket stream). cpp-httplib
// parses; this enforces the limits its 0.11.4 stream lacks: a deadline for the whole request, a
// cap on the request head and on each of its lines, a cap on the body, and a socket that another
// thread can shut down when the server stops. Internal to gd_http.
#pragma once

#include <httplib.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>

namespace gd::http::internal {

// cpp-httplib's CPPHTTPLIB_HEADER_MAX_LENGTH, compiled into Debian's library: it answers a longer
// header line 400. Refusing such a line here first makes it a 431 like any other oversized head.
inline constexpr size_t kMaxLineBytes = 8192;

struct ConnectionLimits {
  std::chrono::milliseconds read_timeout;
  std::chrono::milliseconds request_timeout;
  std::chrono::milliseconds write_timeout;
  size_t max_head_bytes;
  size_t max_body_bytes;
};

// Why a connection stopped reading, and what the peer is answered.
struct Refusal {
  int status = 0;  // 408, 411, 413, 414, 431, ...
  std::string message;
};

class Connection final : public httplib::Stream {
 public:
  // Takes `fd` over; the request deadline starts now.
  Connection(int fd, const ConnectionLimits& limits);
  ~Connection() override;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // httplib::Stream. read() and write() return -1 on a refusal, a timeout or a broken peer.
  bool is_readable() const override;
  bool is_writable() const override;
  ssize_t read(char* ptr, size_t size) override;
  ssize_t write(const char* ptr, size_t size) override;
  void get_remote_ip_and_port(std::string& ip, int& port) const override;
  void get_local_ip_and_port(std::string& ip, int& port) const override;
  socket_t socket() const override { return fd_; }

  // The request head is parsed: what is read from now on is the body.
  void EndHead() { in_head_ = false; }
  // Stops reading: every later read fails. The first refusal is kept.
  void Refuse(int status, std::string message);
  const std::optional<Refusal>& refusal() const { return refusal_; }
  // True when the peer has closed its end; never blocks.
  bool PeerGone() const;
  // Any thread: makes blocked and later reads and writes fail at once (the server stops).
  void Abort();
  // True once any byte of a response has been written.
  bool answered() const { return written_bytes_ > 0; }
  // After a refusal, reads and drops what the peer still sends (for at most a second) so that
  // closing does not reset the connection before the peer has read the answer.
  void DrainAfterRefusal();

 private:
  // Waits up to the next deadline for bytes and reads them into buffer_; false on a timeout (then
  // refused 408), the end of the stream or an error.
  bool Fill();
  // Counts `size` bytes handed to the parser against the head or body limits; false (refused)
  // when they exceed one.
  bool Account(const char* bytes, size_t size);

  const int fd_;
  const ConnectionLimits limits_;
  const std::chrono::steady_clock::time_point request_deadline_;
  char buffer_[4096];
  size_t buffer_begin_ = 0;
  size_t buffer_end_ = 0;
  bool in_head_ = true;
  size_t head_bytes_ = 0;
  size_t line_bytes_ = 0;  // of the head line being read
  bool first_line_ = true;
  size_t body_bytes_ = 0;
  size_t written_bytes_ = 0;
  std::optional<Refusal> refusal_;
};

}  // namespace gd::http::internal
