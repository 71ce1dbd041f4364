// Helpers shared by the libFuzzer targets of fuzz/: checks of what a parser promises beyond not
// crashing, and an in-memory file for the readers that take a path.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

// A broken promise of the code under test: prints it and aborts, which libFuzzer records as a
// crash with its input.
#define GD_FUZZ_CHECK(condition, message)                                               \
  do {                                                                                  \
    if (!(condition)) {                                                                 \
      std::fprintf(stderr, "%s:%d: GD_FUZZ_CHECK(%s) failed: %s\n", __FILE__, __LINE__, \
                   #condition, std::string(message).c_str());                           \
      std::abort();                                                                     \
    }                                                                                   \
  } while (false)

namespace gd::fuzz {

// One memfd per process, rewritten for every input and named by its /proc/self/fd path: the
// checkpoint readers open files by path, and fuzzing should touch no disk.
class InputFile {
 public:
  InputFile() : fd_(memfd_create("gd-fuzz-input", 0)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile() { close(fd_); }

  // Makes `size` bytes of `data` the file's whole content; returns its path.
  const std::string& Write(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0) {
      std::perror("ftruncate");
      std::abort();
    }
    for (size_t done = 0; done < size;) {
      const ssize_t n = pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n <= 0) {
        std::perror("pwrite");
        std::abort();
      }
      done += static_cast<size_t>(n);
    }
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

}  // namespace gd::fuzz
