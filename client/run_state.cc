#include "client/run_state.h"

#include <google/protobuf/text_format.h>
#include <google/protobuf/util/message_differencer.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/status_macros.h"

namespace gd::client {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::guided_diffusion::v1;

constexpr char kDescriptionFile[] = "run.textproto";
constexpr char kNoiseFile[] = "noise.npy";
constexpr char kPartPrefix[] = "images_";
constexpr char kPartSuffix[] = ".npz";
constexpr char kPartialSuffix[] = ".tmp";
// Differences between a stored and a requested run listed in the error; the rest are counted.
constexpr size_t kDifferencesShown = 4;

std::string PartName(int64_t first, int64_t count) {
  return absl::StrFormat("%s%09d_%06d%s", kPartPrefix, first, count, kPartSuffix);
}

// "images_000000032_000016.npz" -> {32, 16}; nullopt for other names.
std::optional<std::pair<int64_t, int64_t>> ParsePartName(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, kPartPrefix) || !absl::ConsumeSuffix(&name, kPartSuffix)) {
    return std::nullopt;
  }
  const std::vector<absl::string_view> fields = absl::StrSplit(name, '_');
  int64_t first = 0, count = 0;
  if (fields.size() != 2 || !absl::SimpleAtoi(fields[0], &first) ||
      !absl::SimpleAtoi(fields[1], &count) || first < 0 || count <= 0) {
    return std::nullopt;
  }
  return std::pair{first, count};
}

int64_t ImageCount(const v1::SampleRequest& run) {
  return run.labels_size() > 0 ? run.labels_size() : run.num_samples();
}

// Writes `bytes` as PATH.tmp and renames it, so that PATH is complete or absent.
absl::Status WriteWhole(const std::string& path, absl::string_view bytes) {
  const std::string partial = path + kPartialSuffix;
  RETURN_IF_ERROR(formats::WriteFileBytes(partial, bytes));
  if (std::rename(partial.c_str(), path.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("renaming \"", partial, "\" to \"", path, "\": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status FileError(absl::string_view doing, const std::string& path, std::error_code error) {
  return absl::InternalError(absl::StrCat(doing, " \"", path, "\": ", error.message()));
}

// How many images the parts in `dir` hold, by their names.
int64_t ImagesInParts(const std::string& dir) {
  int64_t images = 0;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    if (auto part = ParsePartName(entry.path().filename().string())) images += part->second;
  }
  return images;
}

// The first few differences between two runs, one per line, e.g. "modified: classifier_scale: 3
// -> 4".
std::string Differences(const v1::SampleRequest& stored, const v1::SampleRequest& requested) {
  std::string report;
  google::protobuf::util::MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&report);
  differencer.Compare(stored, requested);
  std::vector<absl::string_view> lines = absl::StrSplit(report, '\n', absl::SkipEmpty());
  const size_t hidden = lines.size() > kDifferencesShown ? lines.size() - kDifferencesShown : 0;
  lines.resize(lines.size() - hidden);
  std::string text = absl::StrJoin(lines, "; ");
  if (hidden > 0) absl::StrAppend(&text, "; and ", hidden, " more");
  return text;
}

// A loaded part must be images of this run: inside its N images, with the run's labels, and
// with float32 samples exactly when the run keeps them.
absl::Status CheckPart(const RunPart& part, int64_t count, const v1::SampleRequest& run,
                       const std::string& path) {
  const int64_t total = ImageCount(run);
  if (part.set.size() != count || part.first + count > total) {
    return absl::DataLossError(absl::StrCat(path, " holds ", part.set.size(), " images at ",
                                            part.first, " (its name says ", count,
                                            "); the run has ", total));
  }
  for (int64_t i = 0; i < count; ++i) {
    const int64_t expected = run.labels_size() > 0 ? run.labels(part.first + i) : 0;
    if (part.set.labels[i] != expected) {
      return absl::DataLossError(absl::StrCat(path, ": image ", part.first + i, " has label ",
                                              part.set.labels[i], ", the run gives it ", expected));
    }
  }
  if (part.set.samples.has_value() != run.output().float32()) {
    return absl::DataLossError(absl::StrCat(
        path, part.set.samples.has_value() ? " has" : " lacks", " float32 samples, the run ",
        run.output().float32() ? "keeps" : "does not keep", " them"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string RunStateDir(const std::string& npz_path) { return npz_path + ".parts"; }

absl::StatusOr<std::unique_ptr<RunState>> RunState::Open(const std::string& dir,
                                                         const v1::SampleRequest& run,
                                                         const std::optional<formats::Array>& noise,
                                                         bool resume) {
  std::unique_ptr<RunState> state(new RunState(dir));
  std::error_code error;
  if (!fs::exists(dir, error)) {
    if (!fs::create_directory(dir, error)) return FileError("creating", dir, error);
    RETURN_IF_ERROR(state->Create(run, noise));
    return state;
  }
  if (!fs::is_directory(dir, error)) {
    return absl::FailedPreconditionError(
        absl::StrCat("\"", dir, "\" is in the way: it should be the directory of the run's parts"));
  }
  const bool described = fs::exists(fs::path(dir) / kDescriptionFile, error);
  if (!resume && !fs::is_empty(dir, error)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "\"", dir, "\" holds an unfinished run (", ImagesInParts(dir), " of ", ImageCount(run),
        " images done): resume it, or delete the directory to start over"));
  }
  if (!described) {
    if (ImagesInParts(dir) > 0) {
      return absl::DataLossError(absl::StrCat("\"", dir, "\" holds parts but no ", kDescriptionFile,
                                              ": delete it to start over"));
    }
    RETURN_IF_ERROR(state->Create(run, noise));
    return state;
  }
  RETURN_IF_ERROR(state->CheckSameRun(run, noise));
  RETURN_IF_ERROR(state->LoadParts(run));
  return state;
}

absl::Status RunState::Create(const v1::SampleRequest& run,
                              const std::optional<formats::Array>& noise) const {
  if (noise.has_value()) {
    const std::string path = (fs::path(dir_) / kNoiseFile).string();
    if (absl::Status status = WriteWhole(path, formats::SerializeNpy(*noise)); !status.ok()) {
      return status;
    }
  }
  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(run, &text)) {
    return absl::InternalError("cannot print the run's description");
  }
  // Written last: a directory with a description is a complete start of a run.
  return WriteWhole((fs::path(dir_) / kDescriptionFile).string(), text);
}

absl::Status RunState::CheckSameRun(const v1::SampleRequest& run,
                                    const std::optional<formats::Array>& noise) const {
  const std::string path = (fs::path(dir_) / kDescriptionFile).string();
  ASSIGN_OR_RETURN(auto text, formats::ReadFileBytes(path));
  v1::SampleRequest stored;
  if (!google::protobuf::TextFormat::ParseFromString(text, &stored)) {
    return absl::DataLossError(absl::StrCat(path, " is not a SampleRequest in text format"));
  }
  if (!google::protobuf::util::MessageDifferencer::Equals(stored, run)) {
    return absl::FailedPreconditionError(
        absl::StrCat("\"", dir_, "\" holds a different run (", Differences(stored, run),
                     "): use the same settings to resume it, or delete the directory"));
  }
  const std::string noise_path = (fs::path(dir_) / kNoiseFile).string();
  std::error_code error;
  const bool stored_noise = fs::exists(noise_path, error);
  if (stored_noise != noise.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("\"", dir_, "\" holds a run ", stored_noise ? "with" : "without",
                     " starting noise; this one is ", noise.has_value() ? "with" : "without"));
  }
  if (noise.has_value()) {
    ASSIGN_OR_RETURN(auto bytes, formats::ReadFileBytes(noise_path));
    if (bytes != formats::SerializeNpy(*noise)) {
      return absl::FailedPreconditionError(
          absl::StrCat("\"", dir_, "\" holds a run with other starting noise than this one's"));
    }
  }
  return absl::OkStatus();
}

absl::Status RunState::LoadParts(const v1::SampleRequest& run) {
  std::error_code error;
  std::vector<std::pair<int64_t, RunPart>> parts;  // count, part
  for (const fs::directory_entry& entry : fs::directory_iterator(dir_, error)) {
    const std::string name = entry.path().filename().string();
    const std::string path = entry.path().string();
    if (absl::EndsWith(name, kPartialSuffix)) {  // a write a killed run did not finish
      fs::remove(entry.path(), error);
      continue;
    }
    const std::optional<std::pair<int64_t, int64_t>> range = ParsePartName(name);
    if (!range.has_value()) continue;
    absl::StatusOr<SampleSet> set = ReadSampleSetNpz(path);
    if (!set.ok()) {
      return absl::DataLossError(absl::StrCat(set.status().message(), ": delete \"", path,
                                              "\" and resume to sample its images again"));
    }
    RunPart part{range->first, *std::move(set)};
    RETURN_IF_ERROR(CheckPart(part, range->second, run, path));
    parts.emplace_back(range->second, std::move(part));
  }
  if (error) return FileError("listing", dir_, error);
  std::sort(parts.begin(), parts.end(),
            [](const auto& a, const auto& b) { return a.second.first < b.second.first; });
  for (size_t i = 1; i < parts.size(); ++i) {
    const RunPart& previous = parts[i - 1].second;
    if (previous.first + parts[i - 1].first > parts[i].second.first) {
      return absl::DataLossError(
          absl::StrCat("\"", dir_, "\": parts ", PartName(previous.first, parts[i - 1].first),
                       " and ", PartName(parts[i].second.first, parts[i].first), " overlap"));
    }
  }
  for (auto& [count, part] : parts) loaded_.push_back(std::move(part));
  return absl::OkStatus();
}

absl::Status RunState::Save(const RunPart& part) const {
  const std::string path = (fs::path(dir_) / PartName(part.first, part.set.size())).string();
  return WriteSampleSetNpz(path, part.set, /*with_samples=*/true);
}

absl::Status RunState::Remove() const {
  std::error_code error;
  fs::remove_all(dir_, error);
  if (error) return FileError("removing", dir_, error);
  return absl::OkStatus();
}

}  // namespace gd::client
