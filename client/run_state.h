// The on-disk state of a bulk sampling run (bulk_sample.h), so that an interrupted run can be
// resumed: a directory beside the run's .npz (OUT.npz.parts/) holding
//
//   run.textproto                 what the run samples: a SampleRequest in protobuf text format
//   with
//                                 the resolved model name, every image's label (or num_samples = N
//                                 for unlabelled runs), the sampler settings, the seed and the
//                                 outputs kept. A resumed run must describe the same run.
//   noise.npy                     the run's starting noise x_T, when it has one
//   images_FFFFFFFFF_CCCCCC.npz   one per finished request: images FFFFFFFFF .. + CCCCCC - 1 of the
//                                 run as arr_0 uint8 [C, H, W, C], arr_1 int64 labels and, when
//                                 float32 samples are kept, `samples`
//
// Every file is written as NAME.tmp and renamed once complete, so a process killed at any moment
// (kill -9 included) leaves complete files plus at most some .tmp files, which a resume deletes:
// what is lost is the requests that were in flight. A part that cannot be read (a disk fault) is
// an error naming the file, never silently resampled.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/sample_set.h"
#include "core/io/formats/formats.h"
#include "guided_diffusion/v1/sampler.pb.h"

namespace gd::client {

// The directory a run writing `npz_path` keeps its state in.
std::string RunStateDir(const std::string& npz_path);

// One finished request's images: images first .. first + set.size() - 1 of the run.
struct RunPart {
  int64_t first = 0;
  SampleSet set;
};

class RunState {
 public:
  // Opens `dir` for the run `run` describes (see run.textproto above; `noise` is its x_T, if any).
  //   - no directory: creates it and writes the description (a new run);
  //   - an empty directory, or resume with a directory that has no description yet (killed before
  //     writing it): the same;
  //   - resume: the description must equal `run` (else FailedPrecondition naming the differences)
  //     and the noise must be the same; leftover .tmp files are deleted and the parts are loaded,
  //     each checked against the run (its labels, its place within the N images, no overlaps);
  //   - not resume and files in the directory: FailedPrecondition saying how many images it holds
  //     and how to go on (resume, or delete the directory).
  static absl::StatusOr<std::unique_ptr<RunState>> Open(
      const std::string& dir, const guided_diffusion::v1::SampleRequest& run,
      const std::optional<formats::Array>& noise, bool resume);

  const std::string& dir() const { return dir_; }

  // The parts found by Open, sorted by first image; empty for a new run. Moves them out.
  std::vector<RunPart> TakeLoaded() { return std::move(loaded_); }

  // Writes one finished request's part. Thread-safe (each part is its own file).
  absl::Status Save(const RunPart& part) const;

  // Deletes the directory and everything in it (once the run's .npz is written).
  absl::Status Remove() const;

 private:
  explicit RunState(std::string dir) : dir_(std::move(dir)) {}

  absl::Status Create(const guided_diffusion::v1::SampleRequest& run,
                      const std::optional<formats::Array>& noise) const;
  absl::Status CheckSameRun(const guided_diffusion::v1::SampleRequest& run,
                            const std::optional<formats::Array>& noise) const;
  absl::Status LoadParts(const guided_diffusion::v1::SampleRequest& run);

  std::string dir_;
  std::vector<RunPart> loaded_;
};

}  // namespace gd::client
