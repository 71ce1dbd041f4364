// A file being written, private to gd_formats: errors name the path and the OS's reason, and a
// file not closed successfully is removed, so that a failed write leaves nothing half-written.
#pragma once

#include <cstdio>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gd::formats::internal {

class OutputFile {
 public:
  // Creates or truncates `path`.
  static absl::StatusOr<OutputFile> Create(const std::string& path);

  OutputFile(OutputFile&& other) noexcept;
  OutputFile& operator=(OutputFile&&) = delete;
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  ~OutputFile();  // removes the file unless Close() succeeded

  absl::Status Write(absl::string_view bytes);
  absl::Status Close();

 private:
  OutputFile(std::string path, std::FILE* file) : path_(std::move(path)), file_(file) {}

  std::string path_;
  std::FILE* file_ = nullptr;  // null once closed (or moved from)
  bool closed_ok_ = false;
};

}  // namespace gd::formats::internal
