// Runs the real gd binary (GD_CLI_PATH) as a subprocess against the fake server, for the CLI tests
// of client_test.cc, trajectory_test.cc and view_server_test.cc.
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "tests/service/fake_sampler.h"

namespace gd::client {

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// The file's bytes, or "" when it cannot be read.
std::string ReadFileOrEmpty(const std::string& path);

// The exit status of `pid` (128 + signal when killed); kills it after `timeout_ms`.
int WaitForExit(pid_t pid, int timeout_ms = 60'000);

// ClientTest with a fresh temporary directory and the gd binary to run in it.
class CliTest : public ClientTest {
 protected:
  void SetUp() override;

  std::string Path(absl::string_view name) const;

  // Starts `gd args...`, with --server of the fake unless with_server is false. stdout goes to
  // stdout.txt; stderr to stderr.txt, or to `stderr_fd` when that is >= 0. Returns the pid, or
  // -1 after a test failure.
  pid_t Start(std::vector<std::string> args, bool with_server, int stderr_fd = -1);

  // Runs `gd args...` with stdout and stderr captured in files (so neither is a terminal).
  CliResult Run(std::vector<std::string> args, bool with_server = true);

  // Runs each command line, expecting a usage error (exit status 2) whose message contains the
  // text given with it, and no call to the server from any of them.
  using UsageCase = std::pair<std::vector<std::string>, std::string>;
  void ExpectUsageErrors(const std::vector<UsageCase>& cases);

  std::string dir_;
};

}  // namespace gd::client
