// .npz (np.savez, np.savez_compressed): a zip archive of NAME.npy members, read whole from memory
// and written stored, in memory or member by member to a file.
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/io/formats/formats.h"
#include "core/io/formats/internal.h"
#include "core/io/formats/output_file.h"
#include "core/io/formats/zip.h"
#include "core/status_macros.h"

namespace gd::formats {
namespace {

constexpr size_t kMaxNpzMembers = 0xffff - 1;  // 0xffff entries need ZIP64's end record

// Names must be non-empty, unique and without NUL; their count within what a plain zip holds.
// Errors are prefixed with `what` (the archive).
absl::Status CheckNpzNames(const std::vector<std::string>& names, absl::string_view what) {
  std::set<std::string> seen;
  for (const std::string& name : names) {
    if (name.empty() || name.find('\0') != std::string::npos || name.size() > 0xffff - 4) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": array name '", name, "' is empty, too long or contains NUL"));
    }
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": array name '", name, "' repeats"));
    }
  }
  if (names.size() > kMaxNpzMembers) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", names.size(), " arrays need ZIP64, which we do not write"));
  }
  return absl::OkStatus();
}

std::vector<std::string> NamesOf(const std::vector<std::pair<std::string, Array>>& arrays) {
  std::vector<std::string> names;
  names.reserve(arrays.size());
  for (const auto& [name, array] : arrays) names.push_back(name);
  return names;
}

}  // namespace

absl::Status VisitNpz(
    absl::string_view bytes, absl::string_view what,
    const std::function<absl::Status(const std::string& name, NpyArray array)>& visit) {
  ASSIGN_OR_RETURN(auto zip, internal::ZipReader::Open(bytes, what));
  // Member names are unique: the reader refuses archives that repeat one.
  for (size_t i = 0; i < zip.members().size(); ++i) {
    const std::string& member_name = zip.members()[i].name;
    const std::string member_what = absl::StrCat(what, ":", member_name);
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(member_what, ": ", why));
    };
    if (!absl::EndsWith(member_name, ".npy")) {
      return bad("not a .npy member (an .npz holds only NAME.npy arrays)");
    }
    const std::string name = member_name.substr(0, member_name.size() - 4);
    absl::StatusOr<NpyArray> array;
    {
      ASSIGN_OR_RETURN(auto npy, zip.Read(i, member_what));
      array = ParseNpyArray(npy, member_what);
    }  // the member's bytes are freed before the visitor converts the array
    RETURN_IF_ERROR(array.status());
    RETURN_IF_ERROR(visit(name, *std::move(array)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::pair<std::string, Array>>> ParseNpz(absl::string_view bytes,
                                                                    absl::string_view what) {
  std::vector<std::pair<std::string, Array>> arrays;
  absl::Status status = VisitNpz(bytes, what, [&](const std::string& name, NpyArray npy) {
    ASSIGN_OR_RETURN(Array array,
                     internal::ArrayFromNpy(std::move(npy), absl::StrCat(what, ":", name, ".npy")));
    arrays.emplace_back(name, std::move(array));
    return absl::OkStatus();
  });
  RETURN_IF_ERROR(status);
  return arrays;
}

std::string SerializeNpz(const std::vector<std::pair<std::string, Array>>& arrays) {
  const std::string what = "the archive";
  if (absl::Status status = CheckNpzNames(NamesOf(arrays), what); !status.ok()) {
    internal::PreconditionFailed("SerializeNpz", status.message());
  }
  internal::StoredZipWriter zip(what);
  std::string out;
  for (const auto& [name, array] : arrays) {
    const std::string npy = SerializeNpy(array);
    absl::StatusOr<std::string> header = zip.LocalHeader(absl::StrCat(name, ".npy"), npy);
    if (!header.ok()) internal::PreconditionFailed("SerializeNpz", header.status().message());
    absl::StrAppend(&out, *header, npy);
  }
  absl::StatusOr<std::string> end = zip.Finish();
  if (!end.ok()) internal::PreconditionFailed("SerializeNpz", end.status().message());
  out += *end;
  return out;
}

absl::Status WriteNpz(const std::string& path, const std::vector<std::string>& names,
                      const std::function<absl::StatusOr<std::string>(size_t index)>& npy_bytes) {
  RETURN_IF_ERROR(CheckNpzNames(names, path));
  ASSIGN_OR_RETURN(auto file, internal::OutputFile::Create(path));
  internal::StoredZipWriter zip(path);
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string member_name = absl::StrCat(names[i], ".npy");
    absl::StatusOr<std::string> npy = npy_bytes(i);
    if (!npy.ok()) {
      return absl::Status(npy.status().code(),
                          absl::StrCat(path, ":", member_name, ": ", npy.status().message()));
    }
    ASSIGN_OR_RETURN(auto header, zip.LocalHeader(member_name, *npy));
    absl::Status status = file.Write(header);
    if (status.ok()) status = file.Write(*npy);
    if (!status.ok()) return status;
  }
  ASSIGN_OR_RETURN(auto end, zip.Finish());
  absl::Status status = file.Write(end);
  if (status.ok()) status = file.Close();
  return status;
}

absl::Status WriteNpz(const std::string& path,
                      const std::vector<std::pair<std::string, Array>>& arrays) {
  return WriteNpz(path, NamesOf(arrays), [&](size_t index) -> absl::StatusOr<std::string> {
    return SerializeNpy(arrays[index].second);
  });
}

}  // namespace gd::formats
