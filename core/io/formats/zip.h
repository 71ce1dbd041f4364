// The zip container under .npz, private to gd_formats: a reader (stored and deflated members,
// ZIP64) that validates every offset and size against the archive, and a writer of stored members
// in np.savez's exact layout. Knows nothing of .npy: members are bytes.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gd::formats::internal {

uint32_t Crc32(absl::string_view bytes);

struct ZipMember {
  std::string name;
  uint16_t method = 0;  // 0 stored, 8 deflated (the only two accepted)
  uint32_t crc = 0;
  uint64_t compressed_size = 0;
  uint64_t size = 0;
  uint64_t local_header_offset = 0;
};

struct ZipDirectory {
  std::vector<ZipMember> members;         // in archive order
  uint64_t central_directory_offset = 0;  // member data must end before it
};

// Reads the central directory. Errors say "<what>: not a valid zip archive: <why>".
absl::StatusOr<ZipDirectory> ReadZipDirectory(absl::string_view archive, absl::string_view what);

// The bytes of `member` of `archive`: a view into `archive` if stored, else inflated into
// `*inflated` (sized from the directory, refused if deflate cannot expand that much); its CRC-32
// checked. Errors are prefixed with `what`, which should name the member.
absl::StatusOr<absl::string_view> ReadZipMember(absl::string_view archive,
                                                const ZipDirectory& directory,
                                                const ZipMember& member, absl::string_view what,
                                                std::string* inflated);

// Builds a stored (uncompressed) archive in np.savez's layout (Python's zipfile with
// force_zip64=True): members dated 1980-01-01, a ZIP64 extra in each local header, plain central
// directory entries made by Unix with mode 0600. The caller writes, in order, each member's
// LocalHeader() then its data, and finally Finish(). ZIP64 archives are not written: a member or
// archive reaching 4 GiB, or 65535 members, is an error naming `what` (the archive).
class StoredZipWriter {
 public:
  explicit StoredZipWriter(std::string what) : what_(std::move(what)) {}

  absl::StatusOr<std::string> LocalHeader(absl::string_view name, absl::string_view data);
  // The central directory and end record.
  absl::StatusOr<std::string> Finish() const;

 private:
  std::string what_;
  std::string central_;
  uint64_t offset_ = 0;  // where the next local header goes
  uint64_t members_ = 0;
};

}  // namespace gd::formats::internal
