// ReadSafetensors and WriteSafetensors (see checkpoint.h for the format and the contract).
#include "core/nn/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "core/nn/checkpoint_format.h"
#include "core/status_macros.h"

namespace gd {
namespace {

using checkpoint_internal::HostIsLittleEndian;
using checkpoint_internal::Quoted;
using checkpoint_internal::ShapeString;
using checkpoint_internal::WithPrefix;
using checkpoint_internal::DtypeNames;
using checkpoint_internal::kSafetensorsDtypeList;
using checkpoint_internal::FindSafetensorsDtype;
using checkpoint_internal::FindDtype;
using checkpoint_internal::HasInvalidBools;
using checkpoint_internal::FilePtr;
using checkpoint_internal::FileError;
using checkpoint_internal::OpenForReading;
using checkpoint_internal::kMaxDims;

// ---------------------------------------------------------------------------------------------
// safetensors.

struct SafetensorsEntry {
  std::string name;
  torch::ScalarType dtype = torch::kFloat32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // data_offsets, relative to the start of the data section
  uint64_t end = 0;
};

absl::StatusOr<SafetensorsEntry> ParseSafetensorsEntry(const std::string& name,
                                                       const nlohmann::json& info,
                                                       uint64_t data_size) {
  SafetensorsEntry entry;
  entry.name = name;
  const std::string where = absl::StrCat("tensor ", Quoted(name), ": ");
  if (!info.is_object()) return absl::DataLossError(absl::StrCat(where, "not a JSON object"));
  const auto dtype = info.find("dtype");
  const auto shape = info.find("shape");
  const auto offsets = info.find("data_offsets");
  if (dtype == info.end() || !dtype->is_string() || shape == info.end() || !shape->is_array() ||
      offsets == info.end() || !offsets->is_array()) {
    return absl::DataLossError(
        absl::StrCat(where, "needs \"dtype\" (a string), \"shape\" and \"data_offsets\" (arrays)"));
  }
  const auto& dtype_name = dtype->get_ref<const std::string&>();
  const DtypeNames* names = FindSafetensorsDtype(dtype_name);
  if (names == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(where, "dtype ", Quoted(dtype_name),
                                                   " is not supported (", kSafetensorsDtypeList,
                                                   " are)"));
  }
  entry.dtype = names->type;
  if (shape->size() > kMaxDims) {
    return absl::DataLossError(absl::StrCat(where, "shape has ", shape->size(), " dimensions"));
  }
  uint64_t bytes = c10::elementSize(entry.dtype);
  bool overflow = false;
  for (const auto& dim : *shape) {
    if (!dim.is_number_unsigned() ||
        dim.get<uint64_t>() > uint64_t{std::numeric_limits<int64_t>::max()}) {
      return absl::DataLossError(
          absl::StrCat(where, "shape ", shape->dump(), " is not a list of non-negative integers"));
    }
    entry.shape.push_back(static_cast<int64_t>(dim.get<uint64_t>()));
    overflow |= __builtin_mul_overflow(bytes, dim.get<uint64_t>(), &bytes);
  }
  if (offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
      !(*offsets)[1].is_number_unsigned()) {
    return absl::DataLossError(
        absl::StrCat(where, "data_offsets ", offsets->dump(), " is not [begin, end]"));
  }
  entry.begin = (*offsets)[0].get<uint64_t>();
  entry.end = (*offsets)[1].get<uint64_t>();
  if (entry.begin > entry.end || entry.end > data_size) {
    return absl::DataLossError(absl::StrCat(where, "data_offsets [", entry.begin, ", ", entry.end,
                                            "] fall outside the ", data_size,
                                            " bytes of data (truncated?)"));
  }
  if (overflow || entry.end - entry.begin != bytes) {
    return absl::DataLossError(absl::StrCat(
        where, "data_offsets [", entry.begin, ", ", entry.end, "] hold ", entry.end - entry.begin,
        " bytes, but shape ", ShapeString(entry.shape), " of ", dtype_name, " needs ",
        overflow ? std::string("more than 2^64") : absl::StrCat(bytes)));
  }
  return entry;
}

// The header as the entries it describes, in header order, with "__metadata__" (when present)
// copied into `metadata`.
absl::StatusOr<std::vector<SafetensorsEntry>> ParseSafetensorsHeader(
    const std::string& header_text, uint64_t data_size,
    std::map<std::string, std::string>* metadata) {
  // nlohmann::json keeps keys in a std::map (ordered_json's linear lookups would make a header
  // with millions of keys quadratic); the parser callback records the header's key order.
  std::vector<std::string> key_order;
  const auto record_key = [&key_order](int depth, nlohmann::json::parse_event_t event,
                                       nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      key_order.push_back(parsed.get<std::string>());
    }
    return true;
  };
  const auto header = nlohmann::json::parse(header_text, record_key,
                                            /*allow_exceptions=*/false);
  if (header.is_discarded()) return absl::DataLossError("the header is not valid JSON");
  if (!header.is_object()) {
    return absl::DataLossError(
        absl::StrCat("the header is a JSON ", header.type_name(), ", not an object"));
  }
  std::vector<SafetensorsEntry> entries;
  std::unordered_set<std::string> seen;
  for (const std::string& name : key_order) {
    const auto info = header.find(name);
    if (info == header.end() || !seen.insert(name).second) continue;  // a repeated key
    if (name != "__metadata__") {
      ASSIGN_OR_RETURN(auto entry, ParseSafetensorsEntry(name, *info, data_size));
      entries.push_back(std::move(entry));
      continue;
    }
    if (!info->is_object()) return absl::DataLossError("__metadata__ is not an object");
    for (const auto& [key, value] : info->items()) {
      if (!value.is_string()) {
        return absl::DataLossError(
            absl::StrCat("__metadata__ value of ", Quoted(key), " is not a string"));
      }
      if (metadata != nullptr) (*metadata)[key] = value.get<std::string>();
    }
  }
  // No two tensors may share bytes.
  std::vector<const SafetensorsEntry*> by_offset;
  for (const SafetensorsEntry& entry : entries) {
    if (entry.end > entry.begin) by_offset.push_back(&entry);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      return absl::DataLossError(absl::StrCat("tensors ", Quoted(by_offset[i - 1]->name), " and ",
                                              Quoted(by_offset[i]->name), " overlap"));
    }
  }
  return entries;
}

absl::StatusOr<StateDict> ReadSafetensorsFile(const std::string& path,
                                              std::map<std::string, std::string>* metadata) {
  ASSIGN_OR_RETURN(auto file, OpenForReading(path));
  std::FILE* stream = file.get();
  if (fseeko(stream, 0, SEEK_END) != 0) return FileError("cannot seek in", path, errno);
  const off_t file_size_signed = ftello(stream);
  if (file_size_signed < 0) return FileError("cannot seek in", path, errno);
  const auto file_size = static_cast<uint64_t>(file_size_signed);
  unsigned char length_bytes[8];
  if (file_size < 8 || fseeko(stream, 0, SEEK_SET) != 0 ||
      std::fread(length_bytes, 1, 8, stream) != 8) {
    return absl::DataLossError(
        absl::StrCat("has ", file_size, " bytes, fewer than its 8-byte header length"));
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length_bytes[i];
  constexpr uint64_t kMaxHeaderSize = uint64_t{100} << 20;  // the reference implementation's cap
  if (header_size > file_size - 8) {
    return absl::DataLossError(absl::StrCat("header length ", header_size, " exceeds the ",
                                            file_size - 8, " bytes after it (truncated?)"));
  }
  if (header_size > kMaxHeaderSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("header length ", header_size, " exceeds the limit of ", kMaxHeaderSize));
  }
  std::string header_text(header_size, '\0');
  if (std::fread(header_text.data(), 1, header_size, stream) != header_size) {
    return absl::DataLossError("cannot read the header");
  }
  const uint64_t data_start = 8 + header_size;
  ASSIGN_OR_RETURN(const std::vector<SafetensorsEntry> entries,
                   ParseSafetensorsHeader(header_text, file_size - data_start, metadata));
  StateDict state;
  state.reserve(entries.size());
  for (const SafetensorsEntry& entry : entries) {
    torch::Tensor tensor = torch::empty(entry.shape, torch::TensorOptions().dtype(entry.dtype));
    const uint64_t bytes = entry.end - entry.begin;
    if (bytes > 0 && (fseeko(stream, static_cast<off_t>(data_start + entry.begin), SEEK_SET) != 0 ||
                      std::fread(tensor.data_ptr(), 1, bytes, stream) != bytes)) {
      return absl::DataLossError(absl::StrCat("cannot read the data of ", Quoted(entry.name)));
    }
    if (entry.dtype == torch::kBool && HasInvalidBools(tensor)) {
      return absl::DataLossError(
          absl::StrCat("BOOL tensor ", Quoted(entry.name), " holds bytes other than 0 and 1"));
    }
    state.emplace_back(entry.name, std::move(tensor));
  }
  return state;
}

// The JSON header for `tensors` (already contiguous CPU) in their order, padded with spaces so
// that the data starts 8-byte aligned. Throws nlohmann::json::exception for names or metadata
// that are not valid UTF-8.
absl::StatusOr<std::string> SafetensorsHeader(const StateDict& tensors,
                                              const std::map<std::string, std::string>& metadata) {
  std::vector<std::string> fields;
  if (!metadata.empty()) {
    fields.push_back(absl::StrCat("\"__metadata__\":", nlohmann::json(metadata).dump()));
  }
  std::unordered_set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__" || !names.insert(name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor name ", Quoted(name), " is reserved or used twice"));
    }
    const DtypeNames* dtype = FindDtype(tensor.scalar_type());
    if (dtype == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quoted(name), " has dtype ", c10::toString(tensor.scalar_type()),
                       ", which safetensors files here cannot hold (", kSafetensorsDtypeList, ")"));
    }
    const uint64_t bytes = tensor.nbytes();
    const nlohmann::json info = {{"dtype", dtype->safetensors},
                                 {"shape", tensor.sizes().vec()},
                                 {"data_offsets", {offset, offset + bytes}}};
    fields.push_back(absl::StrCat(nlohmann::json(name).dump(), ":", info.dump()));
    offset += bytes;
  }
  std::string header = absl::StrCat("{", absl::StrJoin(fields, ","), "}");
  header.append((8 - header.size() % 8) % 8, ' ');
  return header;
}

absl::Status WriteSafetensorsFile(const std::string& path, const StateDict& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  StateDict contiguous;
  contiguous.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(name), " is undefined"));
    }
    contiguous.emplace_back(name, tensor.detach().to(torch::kCPU).contiguous());
  }
  ASSIGN_OR_RETURN(auto header, SafetensorsHeader(contiguous, metadata));
  unsigned char length_bytes[8];
  for (int i = 0; i < 8; ++i) length_bytes[i] = (uint64_t{header.size()} >> (8 * i)) & 0xff;

  const std::string temporary_path = path + ".tmp";
  FilePtr file(std::fopen(temporary_path.c_str(), "wb"));
  if (file == nullptr) return FileError("cannot create", temporary_path, errno);
  bool written = std::fwrite(length_bytes, 1, 8, file.get()) == 8 &&
                 std::fwrite(header.data(), 1, header.size(), file.get()) == header.size();
  for (const auto& entry : contiguous) {
    if (!written) break;
    const torch::Tensor& tensor = entry.second;
    if (tensor.nbytes() == 0) continue;  // an empty tensor's data_ptr() may be null
    written = std::fwrite(tensor.data_ptr(), 1, tensor.nbytes(), file.get()) == tensor.nbytes();
  }
  const int write_error = errno;
  const bool closed = std::fclose(file.release()) == 0;
  if (!written || !closed) {
    const int error_number = written ? errno : write_error;
    std::remove(temporary_path.c_str());
    return FileError("cannot write", temporary_path, error_number);
  }
  if (std::rename(temporary_path.c_str(), path.c_str()) != 0) {
    const int rename_error = errno;
    std::remove(temporary_path.c_str());
    return FileError("cannot rename the written file to", path, rename_error);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StateDict> ReadSafetensors(const std::string& path,
                                          std::map<std::string, std::string>* metadata) {
  if (metadata != nullptr) metadata->clear();
  const std::string context = absl::StrCat("safetensors file \"", path, "\": ");
  if (!HostIsLittleEndian()) {
    return absl::UnimplementedError(context + "reading on a big-endian host is not supported");
  }
  try {
    absl::StatusOr<StateDict> state = ReadSafetensorsFile(path, metadata);
    if (!state.ok()) {
      if (absl::IsNotFound(state.status()) || absl::IsPermissionDenied(state.status())) {
        return state.status();  // already names the file
      }
      return WithPrefix(state.status(), context);
    }
    return state;
  } catch (const c10::Error& error) {
    return absl::DataLossError(absl::StrCat(context, error.what_without_backtrace()));
  } catch (const std::exception& error) {
    return absl::DataLossError(absl::StrCat(context, error.what()));
  }
}

absl::Status WriteSafetensors(const std::string& path, const StateDict& tensors,
                              const std::map<std::string, std::string>& metadata) {
  const std::string context = absl::StrCat("safetensors file \"", path, "\": ");
  if (!HostIsLittleEndian()) {
    return absl::UnimplementedError(context + "writing on a big-endian host is not supported");
  }
  try {
    absl::Status status = WriteSafetensorsFile(path, tensors, metadata);
    return status.ok() ? status : WithPrefix(status, context);
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat(
        context, "tensor names and metadata must be valid UTF-8 (", error.what(), ")"));
  } catch (const c10::Error& error) {
    return absl::InternalError(absl::StrCat(context, error.what_without_backtrace()));
  } catch (const std::exception& error) {
    return absl::InternalError(absl::StrCat(context, error.what()));
  }
}

}  // namespace gd
