// The zip container under .npz, private to gd_formats. Knows nothing of .npy: members are bytes.
//
// Reading is libzip's (an archive held in memory, stored and deflated members, ZIP64, CRC-32s
// checked), behind the limits below, which are ours: .npz files come from outside (training data,
// noise inputs). Writing is a stored-member writer of a few lines in np.savez's exact layout, which
// streams member by member to a file; libzip's writer assembles archives in its own layout.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct zip;

namespace gd::formats::internal {

// Limits of the reader. A member is refused, before anything is allocated for it, when its
// directory entry claims an uncompressed size above kMaxDeflateRatio times its compressed size
// plus kDeflateSlackBytes: deflate cannot expand more than ~1032:1, so only a forged entry (a zip
// bomb's) claims more. What a member really inflates to is read up to its claimed size and no
// further. Only stored (0) and deflated (8) members are read: other methods and encryption are
// refused by name, so that no other decompressor ever sees outside bytes.
inline constexpr uint64_t kMaxDeflateRatio = 1100;
inline constexpr uint64_t kDeflateSlackBytes = 1024;
// The largest member read, whatever the ratio: a real deflate stream of zeros reaches ~1032:1, so a
// 100 MB archive could ask for 100 GB. 16 GiB holds the reference's largest sample dumps (50,000
// images of 256 x 256 x 3 bytes, 9.8 GB). Memory grows as data arrives, not by the claim.
inline constexpr uint64_t kMaxMemberBytes = uint64_t{16} << 30;

uint32_t Crc32(absl::string_view bytes);

struct ZipMember {
  std::string name;
  uint16_t method = 0;  // 0 stored, 8 deflated (the only two accepted)
  uint64_t compressed_size = 0;
  uint64_t size = 0;
};

// An archive over borrowed bytes, which must outlive it. Move-only.
class ZipReader {
 public:
  // Reads the central directory: its members, in archive order. Errors say
  // "<what>: not a valid zip archive: <why>", or name the member that breaks a limit above.
  static absl::StatusOr<ZipReader> Open(absl::string_view archive, absl::string_view what);

  const std::vector<ZipMember>& members() const { return members_; }

  // The bytes of members()[index], inflated if deflated, their CRC-32 checked. Errors are prefixed
  // with `what`, which should name the member.
  absl::StatusOr<std::string> Read(size_t index, absl::string_view what) const;

 private:
  struct Discard {
    void operator()(zip* archive) const;
  };
  ZipReader(std::unique_ptr<zip, Discard> archive, std::vector<ZipMember> members)
      : archive_(std::move(archive)), members_(std::move(members)) {}

  std::unique_ptr<zip, Discard> archive_;
  std::vector<ZipMember> members_;
};

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
