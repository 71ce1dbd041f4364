// ReadCheckpoint's dispatch by content, strict state_dict loading, and the helpers the format
// readers share (checkpoint_format.h). The formats: torch_checkpoint.cc, safetensors.cc.
#include "core/nn/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
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
namespace checkpoint_internal {

bool HostIsLittleEndian() {
  const uint16_t one = 1;
  unsigned char first_byte = 0;
  std::memcpy(&first_byte, &one, 1);
  return first_byte == 1;
}

std::string Quoted(absl::string_view text) {
  constexpr size_t kMaxShown = 200;
  std::string quoted = absl::StrCat("\"", absl::CHexEscape(text.substr(0, kMaxShown)), "\"");
  if (text.size() > kMaxShown) absl::StrAppend(&quoted, "...");
  return quoted;
}

std::string ShapeString(c10::IntArrayRef sizes) {
  return absl::StrCat("[", absl::StrJoin(sizes, ", "), "]");
}

absl::Status WithPrefix(const absl::Status& status, absl::string_view prefix) {
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

const DtypeNames* FindSafetensorsDtype(absl::string_view name) {
  for (const DtypeNames& names : kDtypes) {
    if (name == names.safetensors) return &names;
  }
  return nullptr;
}

const DtypeNames* FindStorageDtype(absl::string_view storage_type) {
  for (const DtypeNames& names : kDtypes) {
    if (storage_type == names.storage) return &names;
  }
  return nullptr;
}

const DtypeNames* FindDtype(torch::ScalarType type) {
  for (const DtypeNames& names : kDtypes) {
    if (type == names.type) return &names;
  }
  return nullptr;
}

bool HasInvalidBools(const torch::Tensor& contiguous_bools) {
  const auto* bytes = static_cast<const uint8_t*>(contiguous_bools.data_ptr());
  const int64_t count = contiguous_bools.numel();
  for (int64_t i = 0; i < count; ++i) {
    if (bytes[i] > 1) return true;
  }
  return false;
}

absl::Status FileError(absl::string_view what, const std::string& path, int error_number) {
  const std::string message = absl::StrCat(what, " \"", path, "\": ", std::strerror(error_number));
  if (error_number == ENOENT) return absl::NotFoundError(message);
  if (error_number == EACCES || error_number == EPERM) return absl::PermissionDeniedError(message);
  if (error_number == EISDIR) return absl::InvalidArgumentError(message);
  return absl::UnavailableError(message);
}

absl::StatusOr<FilePtr> OpenForReading(const std::string& path) {
  FilePtr file(std::fopen(path.c_str(), "rb"));
  if (file == nullptr) return FileError("cannot open checkpoint", path, errno);
  return file;
}

absl::StatusOr<std::string> ReadPrefix(const std::string& path, size_t max_bytes) {
  ASSIGN_OR_RETURN(auto file, OpenForReading(path));
  std::string prefix(max_bytes, '\0');
  const size_t got = std::fread(prefix.data(), 1, max_bytes, file.get());
  if (got < max_bytes && std::ferror(file.get())) {
    return FileError("cannot read checkpoint", path, errno);
  }
  prefix.resize(got);
  return prefix;
}

bool IsLegacyTorchPickle(absl::string_view prefix) {
  return prefix.size() >= 2 && static_cast<uint8_t>(prefix[0]) == 0x80 &&
         absl::StrContains(prefix.substr(0, 32), kLegacyTorchMagic);
}

}  // namespace checkpoint_internal

namespace {

using checkpoint_internal::Quoted;
using checkpoint_internal::ShapeString;
using checkpoint_internal::ReadPrefix;
using checkpoint_internal::IsLegacyTorchPickle;
using checkpoint_internal::kZipMagic;

// How many keys of each kind LoadStateDict names before it only counts.
constexpr size_t kMaxKeysNamed = 10;

std::string KeyList(const std::vector<std::string>& keys) {
  std::vector<std::string> shown;
  for (size_t i = 0; i < keys.size() && i < kMaxKeysNamed; ++i) shown.push_back(Quoted(keys[i]));
  std::string list = absl::StrJoin(shown, ", ");
  if (keys.size() > kMaxKeysNamed) {
    absl::StrAppend(&list, " and ", keys.size() - kMaxKeysNamed, " more");
  }
  return list;
}

}  // namespace

absl::StatusOr<StateDict> ReadCheckpoint(const std::string& path) {
  ASSIGN_OR_RETURN(auto prefix, ReadPrefix(path, 64));
  if (absl::StartsWith(prefix, kZipMagic) || IsLegacyTorchPickle(prefix)) {
    return ReadTorchCheckpoint(path);
  }
  if (prefix.size() > 8 && (prefix)[8] == '{') return ReadSafetensors(path);
  if (prefix.empty())
    return absl::DataLossError(absl::StrCat("checkpoint \"", path, "\" is empty"));
  return absl::InvalidArgumentError(absl::StrCat(
      "checkpoint \"", path,
      "\" is neither a torch.save zip archive (which starts with \"PK\\x03\\x04\") nor a "
      "safetensors file (an 8-byte header length, then '{')"));
}

absl::Status LoadStateDict(torch::nn::Module& module, const StateDict& state,
                           const std::string& what, const std::string& source_path) {
  const std::string context =
      absl::StrCat("checkpoint \"", source_path, "\" for model \"", what, "\": ");
  StateDict targets = ModuleStateDict(module);
  std::unordered_map<std::string, const torch::Tensor*> values;
  for (const auto& [name, tensor] : state) {
    if (!tensor.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat(context, "key ", Quoted(name), " holds no tensor"));
    }
    if (!values.emplace(name, &tensor).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(context, "key ", Quoted(name), " appears twice"));
    }
  }
  std::vector<std::string> missing;
  std::vector<std::string> misshapen;
  std::unordered_set<std::string> expected;
  for (const auto& [name, target] : targets) {
    expected.insert(name);
    auto it = values.find(name);
    if (it == values.end()) {
      missing.push_back(name);
    } else if (it->second->sizes() != target.sizes()) {
      misshapen.push_back(absl::StrCat("key ", Quoted(name), " has shape ",
                                       ShapeString(it->second->sizes()), ", the model expects ",
                                       ShapeString(target.sizes())));
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& entry : state) {
    if (expected.count(entry.first) == 0) unexpected.push_back(entry.first);
  }
  std::vector<std::string> problems;
  if (!missing.empty()) {
    problems.push_back(missing.size() == 1
                           ? absl::StrCat("missing key ", Quoted(missing[0]))
                           : absl::StrCat(missing.size(), " missing keys: ", KeyList(missing)));
  }
  if (!unexpected.empty()) {
    problems.push_back(
        unexpected.size() == 1
            ? absl::StrCat("unexpected key ", Quoted(unexpected[0]))
            : absl::StrCat(unexpected.size(), " unexpected keys: ", KeyList(unexpected)));
  }
  for (size_t i = 0; i < misshapen.size() && i < kMaxKeysNamed; ++i) {
    problems.push_back(misshapen[i]);
  }
  if (misshapen.size() > kMaxKeysNamed) {
    problems.push_back(
        absl::StrCat("and ", misshapen.size() - kMaxKeysNamed, " more keys with wrong shapes"));
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(context, absl::StrJoin(problems, "; ")));
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : targets) {
    try {
      target.copy_(*values.at(name));
    } catch (const c10::Error& error) {
      return absl::InvalidArgumentError(absl::StrCat(context, "copying key ", Quoted(name), ": ",
                                                     error.what_without_backtrace()));
    }
  }
  return absl::OkStatus();
}

StateDict ModuleStateDict(const torch::nn::Module& module) {
  StateDict state;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    state.emplace_back(item.key(), item.value().detach());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    state.emplace_back(item.key(), item.value().detach());
  }
  return state;
}

}  // namespace gd
