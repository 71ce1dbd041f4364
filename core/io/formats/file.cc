// Whole-file reads and writes (formats.h), and the OutputFile they and WriteNpz write through.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/io/formats/formats.h"
#include "core/io/formats/output_file.h"
#include "core/status_macros.h"

namespace gd::formats {
namespace internal {
namespace {

std::string ErrnoText() { return std::strerror(errno); }

}  // namespace

absl::StatusOr<OutputFile> OutputFile::Create(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat(path, ": cannot open for writing: ", ErrnoText()));
  }
  return OutputFile(path, file);
}

OutputFile::OutputFile(OutputFile&& other) noexcept
    : path_(std::move(other.path_)),
      file_(std::exchange(other.file_, nullptr)),
      closed_ok_(std::exchange(other.closed_ok_, true)) {}

OutputFile::~OutputFile() {
  if (file_ != nullptr) std::fclose(file_);
  if (!closed_ok_) std::remove(path_.c_str());
}

absl::Status OutputFile::Write(absl::string_view bytes) {
  if (file_ == nullptr) return absl::FailedPreconditionError(absl::StrCat(path_, ": closed"));
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size()) {
    return absl::InternalError(absl::StrCat(path_, ": write failed: ", ErrnoText()));
  }
  return absl::OkStatus();
}

absl::Status OutputFile::Close() {
  if (file_ == nullptr) return absl::FailedPreconditionError(absl::StrCat(path_, ": closed"));
  const int result = std::fclose(std::exchange(file_, nullptr));
  if (result != 0) return absl::InternalError(absl::StrCat(path_, ": write failed: ", ErrnoText()));
  closed_ok_ = true;
  return absl::OkStatus();
}

}  // namespace internal

absl::StatusOr<std::string> ReadFileBytes(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    const std::string message = absl::StrCat(path, ": cannot open: ", std::strerror(error));
    if (error == ENOENT || error == ENOTDIR) return absl::NotFoundError(message);
    if (error == EACCES || error == EPERM) return absl::PermissionDeniedError(message);
    return absl::InternalError(message);
  }
  struct stat info {};
  std::string bytes;
  absl::Status status;
  if (::fstat(fd, &info) != 0) {
    status = absl::InternalError(absl::StrCat(path, ": cannot stat: ", internal::ErrnoText()));
  } else if (S_ISDIR(info.st_mode)) {
    status = absl::InvalidArgumentError(absl::StrCat(path, ": is a directory, not a file"));
  } else {
    try {
      if (S_ISREG(info.st_mode)) bytes.reserve(static_cast<size_t>(info.st_size));
      char buffer[1 << 16];
      while (true) {
        const ssize_t n = ::read(fd, buffer, sizeof(buffer));
        if (n == 0) break;
        if (n < 0) {
          if (errno == EINTR) continue;
          status =
              absl::InternalError(absl::StrCat(path, ": read failed: ", internal::ErrnoText()));
          break;
        }
        bytes.append(buffer, static_cast<size_t>(n));
      }
    } catch (const std::bad_alloc&) {
      status = absl::ResourceExhaustedError(absl::StrCat(path, ": too large to read into memory"));
    }
  }
  ::close(fd);
  if (!status.ok()) return status;
  return bytes;
}

absl::Status WriteFileBytes(const std::string& path, absl::string_view bytes) {
  ASSIGN_OR_RETURN(auto file, internal::OutputFile::Create(path));
  absl::Status status = file.Write(bytes);
  if (status.ok()) status = file.Close();
  return status;
}

}  // namespace gd::formats
