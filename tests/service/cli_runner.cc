#include "tests/service/cli_runner.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"

extern char** environ;

namespace gd::client {

std::string ReadFileOrEmpty(const std::string& path) {
  absl::StatusOr<std::string> bytes = formats::ReadFileBytes(path);
  return bytes.ok() ? *bytes : std::string();
}

int WaitForExit(pid_t pid, int timeout_ms) {
  // Kill a hung CLI rather than hang the suite.
  for (int waited_ms = 0;; waited_ms += 10) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (done < 0) return -1;
    if (waited_ms > timeout_ms) kill(pid, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void CliTest::SetUp() {
  ClientTest::SetUp();
  std::string pattern = ::testing::TempDir() + "gd_cli_XXXXXX";
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  dir_ = pattern;
}

std::string CliTest::Path(absl::string_view name) const { return absl::StrCat(dir_, "/", name); }

pid_t CliTest::Start(std::vector<std::string> args, bool with_server, int stderr_fd) {
  if (with_server) args.insert(args.begin(), "--server=" + server_.address());
  args.insert(args.begin(), GD_CLI_PATH);
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, Path("stdout.txt").c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (stderr_fd >= 0) {
    posix_spawn_file_actions_adddup2(&actions, stderr_fd, STDERR_FILENO);
  } else {
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, Path("stderr.txt").c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
  }
  pid_t pid = -1;
  const int error = posix_spawn(&pid, GD_CLI_PATH, &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (error != 0) {
    ADD_FAILURE() << "cannot run " << GD_CLI_PATH << ": " << std::strerror(error);
    return -1;
  }
  return pid;
}

CliResult CliTest::Run(std::vector<std::string> args, bool with_server) {
  CliResult result;
  const pid_t pid = Start(std::move(args), with_server);
  if (pid < 0) return result;
  result.exit_code = WaitForExit(pid);
  result.out = ReadFileOrEmpty(Path("stdout.txt"));
  result.err = ReadFileOrEmpty(Path("stderr.txt"));
  return result;
}

void CliTest::ExpectUsageErrors(const std::vector<UsageCase>& cases) {
  const int calls_before = server_.sampler().calls();
  for (const auto& [args, message] : cases) {
    CliResult result = Run(args);
    EXPECT_EQ(result.exit_code, 2) << message;
    EXPECT_THAT(result.err, ::testing::HasSubstr(message));
  }
  EXPECT_EQ(server_.sampler().calls(), calls_before);
}

}  // namespace gd::client
