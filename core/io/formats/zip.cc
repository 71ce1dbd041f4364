#include "core/io/formats/zip.h"

#include <zip.h>
#include <zlib.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/io/formats/internal.h"
#include "core/status_macros.h"

namespace gd::formats::internal {
namespace {

constexpr uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr uint32_t kCentralHeaderSignature = 0x02014b50;
constexpr uint32_t kEndSignature = 0x06054b50;
constexpr uint16_t kZip64ExtraId = 0x0001;
// Members are read in pieces of this size, so that memory follows the data actually inflated.
constexpr uint64_t kReadChunkBytes = uint64_t{1} << 20;

struct CloseFile {
  void operator()(zip_file_t* file) const { zip_fclose(file); }
};

// What `error` means for an archive from outside, with libzip's own words (1.7 gives no detail).
std::string Describe(zip_error_t* error) {
  const char* meaning = nullptr;
  switch (zip_error_code_zip(error)) {
    case ZIP_ER_NOZIP:
      meaning = "no end-of-central-directory record, or an entry points at no local header";
      break;
    case ZIP_ER_INCONS:
      meaning = "the central directory disagrees with the file or with a local header";
      break;
    case ZIP_ER_EXISTS:
      meaning = "two members have the same name";
      break;
    case ZIP_ER_MULTIDISK:
      meaning = "multi-disk archives are not supported";
      break;
    case ZIP_ER_CRC:
      meaning = "CRC-32 mismatch, or the data is cut short";
      break;
    case ZIP_ER_COMPRESSED_DATA:
    case ZIP_ER_ZLIB:
      meaning = "corrupt deflate stream";
      break;
    case ZIP_ER_EOF:
    case ZIP_ER_READ:
      meaning = "truncated";
      break;
    default:
      break;
  }
  const std::string libzip = zip_error_strerror(error);
  return meaning == nullptr ? libzip : absl::StrCat(meaning, " (libzip: ", libzip, ")");
}

constexpr zip_uint64_t kNeededStats = ZIP_STAT_NAME | ZIP_STAT_SIZE | ZIP_STAT_COMP_SIZE |
                                      ZIP_STAT_COMP_METHOD | ZIP_STAT_ENCRYPTION_METHOD;

// A member's directory entry against the reader's limits (zip.h). Errors are prefixed with
// "<what>:<member name>".
absl::Status CheckMember(const zip_stat_t& stat, absl::string_view what) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(what, ":", stat.name, ": ", why));
  };
  if (stat.encryption_method != ZIP_EM_NONE) {
    return bad("is encrypted (encrypted members are not supported)");
  }
  if (stat.comp_method != ZIP_CM_STORE && stat.comp_method != ZIP_CM_DEFLATE) {
    return bad(absl::StrCat("uses compression method ", stat.comp_method,
                            " (only 0, stored, and 8, deflate, are supported)"));
  }
  if (stat.comp_method == ZIP_CM_STORE && stat.size != stat.comp_size) {
    return bad(absl::StrCat("stored member with size ", stat.size, " != compressed size ",
                            stat.comp_size));
  }
  if (stat.size > kMaxMemberBytes) {
    return bad(absl::StrCat("claims ", stat.size, " bytes, over the limit of ", kMaxMemberBytes,
                            " bytes per member"));
  }
  // size <= kMaxMemberBytes here; capping comp_size there too keeps the product from wrapping.
  if (stat.size >
      kMaxDeflateRatio * std::min<uint64_t>(stat.comp_size, kMaxMemberBytes) + kDeflateSlackBytes) {
    return bad(absl::StrCat("claims to inflate ", stat.comp_size, " bytes to ", stat.size,
                            ", more than deflate can (at most ", kMaxDeflateRatio, ":1)"));
  }
  return absl::OkStatus();
}

}  // namespace

uint32_t Crc32(absl::string_view bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  while (!bytes.empty()) {
    const size_t chunk = std::min<size_t>(bytes.size(), 1u << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(chunk));
    bytes.remove_prefix(chunk);
  }
  return static_cast<uint32_t>(crc);
}

void ZipReader::Discard::operator()(zip* archive) const { zip_discard(archive); }

absl::StatusOr<ZipReader> ZipReader::Open(absl::string_view archive, absl::string_view what) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a valid zip archive: ", why));
  };
  // libzip opens an empty source as a new, empty archive.
  if (archive.empty()) return bad("the file is empty");
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* source =
      zip_source_buffer_create(archive.data(), archive.size(), /*freep=*/0, &error);
  if (source == nullptr) {
    const std::string why = Describe(&error);
    zip_error_fini(&error);
    return absl::ResourceExhaustedError(absl::StrCat(what, ": cannot read it from memory: ", why));
  }
  // ZIP_CHECKCONS: every local header must agree with its directory entry.
  std::unique_ptr<zip, Discard> handle(
      zip_open_from_source(source, ZIP_RDONLY | ZIP_CHECKCONS, &error));
  if (handle == nullptr) {
    zip_source_free(source);  // the archive owns it only once opened
    const std::string why = Describe(&error);
    zip_error_fini(&error);
    return bad(why);
  }
  zip_error_fini(&error);

  const zip_int64_t count = zip_get_num_entries(handle.get(), /*flags=*/0);
  std::vector<ZipMember> members;
  members.reserve(static_cast<size_t>(std::max<zip_int64_t>(count, 0)));
  for (zip_int64_t i = 0; i < count; ++i) {
    zip_stat_t stat;
    zip_stat_init(&stat);
    if (zip_stat_index(handle.get(), static_cast<zip_uint64_t>(i), /*flags=*/0, &stat) != 0 ||
        (stat.valid & kNeededStats) != kNeededStats) {
      return bad(absl::StrCat("directory entry ", i, ": ", Describe(zip_get_error(handle.get()))));
    }
    RETURN_IF_ERROR(CheckMember(stat, what));
    members.push_back({stat.name, stat.comp_method, stat.comp_size, stat.size});
  }
  return ZipReader(std::move(handle), std::move(members));
}

absl::StatusOr<std::string> ZipReader::Read(size_t index, absl::string_view what) const {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", why));
  };
  const ZipMember& member = members_.at(index);
  std::unique_ptr<zip_file_t, CloseFile> file(zip_fopen_index(archive_.get(), index, /*flags=*/0));
  if (file == nullptr) return bad(Describe(zip_get_error(archive_.get())));
  // One byte past the directory's size is asked for, to see a stream that inflates to more.
  std::string out;
  out.reserve(std::min(member.size + 1, kReadChunkBytes));
  while (true) {
    const uint64_t want = std::min(kReadChunkBytes, member.size + 1 - out.size());
    const size_t before = out.size();
    out.resize(before + want);
    const zip_int64_t got = zip_fread(file.get(), out.data() + before, want);
    if (got < 0) return bad(Describe(zip_file_get_error(file.get())));
    out.resize(before + static_cast<size_t>(got));
    if (got == 0) break;
    if (out.size() > member.size) {
      return bad(absl::StrCat("inflates to more than the directory's ", member.size, " bytes"));
    }
  }
  if (out.size() != member.size) {
    return bad(
        absl::StrCat("inflates to ", out.size(), " bytes, the directory says ", member.size));
  }
  return out;
}

absl::StatusOr<std::string> StoredZipWriter::LocalHeader(absl::string_view name,
                                                         absl::string_view data) {
  if (members_ + 1 >= 0xffff) {
    return absl::InvalidArgumentError(
        absl::StrCat(what_, ": ", members_ + 1, " members need ZIP64, which we do not write"));
  }
  if (data.size() >= 0xffffffff || offset_ >= 0xffffffff) {
    return absl::InvalidArgumentError(absl::StrCat(
        what_, ":", name, ": members or archives over 4 GiB need ZIP64, which we do not write (",
        data.size(), " bytes at offset ", offset_, ")"));
  }
  const uint32_t crc = Crc32(data);
  const bool ascii = std::all_of(name.begin(), name.end(),
                                 [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  const uint16_t flags = ascii ? 0 : 0x800;  // bit 11: the name is UTF-8
  std::string local;
  PutLittle(&local, kLocalHeaderSignature, 4);
  PutLittle(&local, 20, 2);  // version needed: 2.0
  PutLittle(&local, flags, 2);
  PutLittle(&local, 0, 2);       // stored
  PutLittle(&local, 0, 2);       // time 00:00:00
  PutLittle(&local, 0x0021, 2);  // date 1980-01-01
  PutLittle(&local, crc, 4);
  PutLittle(&local, data.size(), 4);
  PutLittle(&local, data.size(), 4);
  PutLittle(&local, name.size(), 2);
  PutLittle(&local, 20, 2);  // extra: the ZIP64 sizes
  absl::StrAppend(&local, name);
  PutLittle(&local, kZip64ExtraId, 2);
  PutLittle(&local, 16, 2);
  PutLittle(&local, data.size(), 8);
  PutLittle(&local, data.size(), 8);

  PutLittle(&central_, kCentralHeaderSignature, 4);
  PutLittle(&central_, 0x0314, 2);  // made by: Unix, 2.0
  PutLittle(&central_, 20, 2);
  PutLittle(&central_, flags, 2);
  PutLittle(&central_, 0, 2);
  PutLittle(&central_, 0, 2);
  PutLittle(&central_, 0x0021, 2);
  PutLittle(&central_, crc, 4);
  PutLittle(&central_, data.size(), 4);
  PutLittle(&central_, data.size(), 4);
  PutLittle(&central_, name.size(), 2);
  PutLittle(&central_, 0, 2);            // extra
  PutLittle(&central_, 0, 2);            // comment
  PutLittle(&central_, 0, 2);            // disk
  PutLittle(&central_, 0, 2);            // internal attributes
  PutLittle(&central_, 0600u << 16, 4);  // external attributes: -rw-------
  PutLittle(&central_, offset_, 4);
  absl::StrAppend(&central_, name);

  offset_ += local.size() + data.size();
  ++members_;
  return local;
}

absl::StatusOr<std::string> StoredZipWriter::Finish() const {
  if (offset_ + central_.size() >= 0xffffffff) {
    return absl::InvalidArgumentError(
        absl::StrCat(what_, ": archives over 4 GiB need ZIP64, which we do not write"));
  }
  std::string out = central_;
  PutLittle(&out, kEndSignature, 4);
  PutLittle(&out, 0, 2);
  PutLittle(&out, 0, 2);
  PutLittle(&out, members_, 2);
  PutLittle(&out, members_, 2);
  PutLittle(&out, central_.size(), 4);
  PutLittle(&out, offset_, 4);
  PutLittle(&out, 0, 2);
  return out;
}

}  // namespace gd::formats::internal
