#include "core/io/formats/zip.h"

#include <zlib.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/io/formats/internal.h"

namespace gd::formats::internal {
namespace {

constexpr uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr uint32_t kCentralHeaderSignature = 0x02014b50;
constexpr uint32_t kEndSignature = 0x06054b50;
constexpr uint32_t kZip64EndSignature = 0x06064b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr size_t kLocalHeaderSize = 30;
constexpr size_t kCentralHeaderSize = 46;
constexpr size_t kEndSize = 22;
constexpr size_t kZip64EndSize = 56;
constexpr size_t kZip64LocatorSize = 20;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint64_t kMaxDeflateRatio = 1100;  // deflate cannot expand more than ~1032:1

// Reads the zip64 sizes/offset of a central directory entry whose 32-bit fields are saturated.
absl::Status ReadZip64Extra(absl::string_view extra, uint32_t size32, uint32_t compressed32,
                            uint32_t offset32, ZipMember* member) {
  while (extra.size() >= 4) {
    const uint16_t id = Le16(extra.data());
    const uint16_t length = Le16(extra.data() + 2);
    if (length > extra.size() - 4) return absl::InvalidArgumentError("extra field overruns");
    absl::string_view field = extra.substr(4, length);
    extra.remove_prefix(4 + length);
    if (id != kZip64ExtraId) continue;
    // The 64-bit values appear in this order, each only if its 32-bit field is saturated.
    const std::pair<bool, uint64_t*> fields[] = {
        {size32 == 0xffffffff, &member->size},
        {compressed32 == 0xffffffff, &member->compressed_size},
        {offset32 == 0xffffffff, &member->local_header_offset}};
    for (auto [saturated, value] : fields) {
      if (!saturated) continue;
      if (field.size() < 8) return absl::InvalidArgumentError("ZIP64 extra field too short");
      *value = Le64(field.data());
      field.remove_prefix(8);
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError("ZIP64 sizes without a ZIP64 extra field");
}

// Inflates a raw deflate stream that must produce exactly `size` bytes.
absl::StatusOr<std::string> Inflate(absl::string_view compressed, uint64_t size,
                                    absl::string_view what) {
  if (size > kMaxDeflateRatio * compressed.size() + 1024) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": claims to inflate ", compressed.size(),
                                                   " bytes to ", size, ", more than deflate can"));
  }
  std::string out(size, '\0');
  z_stream stream{};
  if (inflateInit2(&stream, -MAX_WBITS) != Z_OK) {
    return absl::InternalError(absl::StrCat(what, ": inflateInit2 failed"));
  }
  size_t in_pos = 0;
  size_t out_pos = 0;
  int result = Z_OK;
  while (result == Z_OK) {
    constexpr size_t kChunk = size_t{1} << 30;  // zlib counts in 32-bit uInt
    if (stream.avail_in == 0 && in_pos < compressed.size()) {
      const size_t n = std::min(kChunk, compressed.size() - in_pos);
      stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data() + in_pos));
      stream.avail_in = static_cast<uInt>(n);
      in_pos += n;
    }
    if (stream.avail_out == 0 && out_pos < out.size()) {
      const size_t n = std::min(kChunk, out.size() - out_pos);
      stream.next_out = reinterpret_cast<Bytef*>(&out[out_pos]);
      stream.avail_out = static_cast<uInt>(n);
      out_pos += n;
    }
    result = inflate(&stream, Z_NO_FLUSH);
    // Z_BUF_ERROR: no progress possible, i.e. input exhausted or output full.
  }
  const uint64_t produced = stream.total_out;
  const bool ended = result == Z_STREAM_END;
  const std::string zlib_message = stream.msg != nullptr ? stream.msg : "";
  inflateEnd(&stream);
  if (!ended) {
    if (result != Z_BUF_ERROR) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": corrupt deflate stream (", zlib_message, ")"));
    }
    if (out_pos == out.size() && produced == size) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": the deflate stream does not end within the directory's ", size, " bytes"));
    }
    return absl::InvalidArgumentError(absl::StrCat(what, ": truncated deflate stream"));
  }
  if (produced != size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": inflates to ", produced, " bytes, the directory says ", size));
  }
  return out;
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

absl::StatusOr<ZipDirectory> ReadZipDirectory(absl::string_view archive, absl::string_view what) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a valid zip archive: ", why));
  };
  if (archive.size() < kEndSize) return bad("too short for an end-of-central-directory record");
  // The end record sits at the very end unless an archive comment (at most 64 KiB) follows it.
  size_t end = absl::string_view::npos;
  const size_t lowest =
      archive.size() >= kEndSize + 0xffff ? archive.size() - kEndSize - 0xffff : 0;
  for (size_t p = archive.size() - kEndSize + 1; p-- > lowest;) {
    if (Le32(archive.data() + p) == kEndSignature &&
        p + kEndSize + Le16(archive.data() + p + 20) <= archive.size()) {
      end = p;
      break;
    }
  }
  if (end == absl::string_view::npos) return bad("no end-of-central-directory record");
  const char* e = archive.data() + end;
  if (Le16(e + 4) != 0 || Le16(e + 6) != 0) return bad("multi-disk archives are not supported");
  uint64_t entries = Le16(e + 10);
  uint64_t directory_size = Le32(e + 12);
  uint64_t directory_offset = Le32(e + 16);
  uint64_t directory_limit = end;  // the directory must end before this
  if (end >= kZip64LocatorSize &&
      Le32(archive.data() + end - kZip64LocatorSize) == kZip64LocatorSignature) {
    const char* locator = archive.data() + end - kZip64LocatorSize;
    const uint64_t record = Le64(locator + 8);
    if (record > end - kZip64LocatorSize || end - kZip64LocatorSize - record < kZip64EndSize ||
        Le32(archive.data() + record) != kZip64EndSignature) {
      return bad("the ZIP64 locator does not point at a ZIP64 end record");
    }
    const char* r = archive.data() + record;
    if (Le32(r + 16) != 0 || Le32(r + 20) != 0) return bad("multi-disk archives are not supported");
    entries = Le64(r + 32);
    directory_size = Le64(r + 40);
    directory_offset = Le64(r + 48);
    directory_limit = record;
  } else if (entries == 0xffff || directory_size == 0xffffffff || directory_offset == 0xffffffff) {
    return bad("the end record asks for a ZIP64 end record that is missing");
  }
  if (directory_offset > directory_limit || directory_size > directory_limit - directory_offset) {
    return bad(absl::StrCat("the central directory (", directory_size, " bytes at offset ",
                            directory_offset, ") lies outside the file"));
  }
  if (entries > directory_size / kCentralHeaderSize) {
    return bad(absl::StrCat(entries, " entries cannot fit in a ", directory_size,
                            "-byte central directory"));
  }
  ZipDirectory directory;
  directory.central_directory_offset = directory_offset;
  absl::string_view central = archive.substr(directory_offset, directory_size);
  for (uint64_t i = 0; i < entries; ++i) {
    if (central.size() < kCentralHeaderSize || Le32(central.data()) != kCentralHeaderSignature) {
      return bad(absl::StrCat("central directory entry ", i, " is truncated or corrupt"));
    }
    const char* h = central.data();
    const uint16_t flags = Le16(h + 8);
    ZipMember member;
    member.method = Le16(h + 10);
    member.crc = Le32(h + 16);
    const uint32_t compressed32 = Le32(h + 20);
    const uint32_t size32 = Le32(h + 24);
    const size_t name_length = Le16(h + 28);
    const size_t extra_length = Le16(h + 30);
    const size_t comment_length = Le16(h + 32);
    const uint32_t offset32 = Le32(h + 42);
    const size_t entry_size = kCentralHeaderSize + name_length + extra_length + comment_length;
    if (entry_size > central.size()) {
      return bad(absl::StrCat("central directory entry ", i, " overruns the directory"));
    }
    member.name.assign(h + kCentralHeaderSize, name_length);
    member.compressed_size = compressed32;
    member.size = size32;
    member.local_header_offset = offset32;
    if (size32 == 0xffffffff || compressed32 == 0xffffffff || offset32 == 0xffffffff) {
      absl::Status status =
          ReadZip64Extra(central.substr(kCentralHeaderSize + name_length, extra_length), size32,
                         compressed32, offset32, &member);
      if (!status.ok()) return bad(absl::StrCat("'", member.name, "': ", status.message()));
    }
    if ((flags & 1) != 0) return bad(absl::StrCat("'", member.name, "' is encrypted"));
    if (member.method != 0 && member.method != 8) {
      return bad(absl::StrCat("'", member.name, "' uses compression method ", member.method,
                              " (only 0, stored, and 8, deflate, are supported)"));
    }
    directory.members.push_back(std::move(member));
    central.remove_prefix(entry_size);
  }
  return directory;
}

absl::StatusOr<absl::string_view> ReadZipMember(absl::string_view archive,
                                                const ZipDirectory& directory,
                                                const ZipMember& member, absl::string_view what,
                                                std::string* inflated) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", why));
  };
  // Local header: its name and extra lengths locate the data; sizes come from the directory
  // (numpy's local headers carry them in ZIP64 extras).
  const uint64_t limit = directory.central_directory_offset;
  const uint64_t local = member.local_header_offset;
  if (local > limit || limit - local < kLocalHeaderSize ||
      Le32(archive.data() + local) != kLocalHeaderSignature) {
    return bad(absl::StrCat("no local header at offset ", local));
  }
  const char* h = archive.data() + local;
  const uint64_t data_offset = local + kLocalHeaderSize + Le16(h + 26) + Le16(h + 28);
  if (data_offset > limit || member.compressed_size > limit - data_offset) {
    return bad(absl::StrCat(member.compressed_size, " bytes of data at offset ", data_offset,
                            " run past the central directory at ", limit));
  }
  if (absl::string_view(h + kLocalHeaderSize, Le16(h + 26)) != member.name) {
    return bad("the local header names a different file");
  }
  absl::string_view bytes = archive.substr(data_offset, member.compressed_size);
  if (member.method == 8) {
    absl::StatusOr<std::string> out = Inflate(bytes, member.size, what);
    if (!out.ok()) return out.status();
    *inflated = *std::move(out);
    bytes = *inflated;
  } else if (member.size != member.compressed_size) {
    return bad(absl::StrCat("stored member with size ", member.size, " != compressed size ",
                            member.compressed_size));
  }
  if (const uint32_t crc = Crc32(bytes); crc != member.crc) {
    return bad(absl::StrFormat("CRC-32 mismatch (data %08x, directory %08x)", crc, member.crc));
  }
  return bytes;
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
