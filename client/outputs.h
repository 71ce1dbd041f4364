// The files `gd sample` and `gd stream` write from their final images (a SampleSet): a PNG grid
// (scaled up and captioned, picture.h), the reference's .npz sample dump (arr_0 uint8
// [N, H, W, C], arr_1 int64 labels) and float32 .npy tensors, and, for `gd stream --dump_dir`,
// each streamed step's x_t and pred_xstart as .npy. Torch-free: wire tensors go through gd_formats.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/picture.h"
#include "client/sample_set.h"
#include "core/io/formats/formats.h"
#include "guided_diffusion/v1/sampler.pb.h"

namespace gd::client {

// Images per grid row when the user does not say: min(N, kMaxGridColumns).
inline constexpr int64_t kMaxGridColumns = 10;

// Where the final images go; empty paths are not written.
struct Outputs {
  std::string grid_path;
  std::string npz_path;
  std::string tensor_path;
  int64_t columns = 0;                      // 0 = min(N, kMaxGridColumns)
  int64_t min_tile_px = kDefaultMinTilePx;  // grid images are scaled up to this; 0 = native size
  bool captions = true;                     // class names under the grid's images, when known

  // What the files need kept from the responses.
  KeptOutputs Kept() const {
    return {/*images=*/!grid_path.empty() || !npz_path.empty(), /*samples=*/!tensor_path.empty()};
  }
};

// The columns of a grid of `count` images: `columns` when > 0, else min(count, kMaxGridColumns).
int64_t GridColumns(int64_t count, int64_t columns);

// A streamed or returned tensor as float32 [N, C, H, W] (float16 is widened); errors name `what`.
absl::StatusOr<formats::Array> StepTensor(const guided_diffusion::v1::Tensor& tensor,
                                          absl::string_view what);

// Starts DIR/steps.tsv, the index of a --dump_dir: a header line, then DumpStep adds a line per
// step: its number, its timestep and the continuous timestep the networks saw (DPM-Solver++ runs
// them between integer timesteps; DDPM and DDIM at them), tab-separated.
absl::Status StartStepIndex(const std::string& dir);

// DIR/x_t_0012.npy and DIR/pred_xstart_0012.npy for step 12, as far as the event carries tensors,
// and the step's line of DIR/steps.tsv.
absl::Status DumpStep(const guided_diffusion::v1::StepEvent& step, const std::string& dir);

// The grid's captions: each image's class name from `class_names`; none when there are no names
// or no labels.
std::vector<std::string> Captions(const std::vector<int64_t>& labels,
                                  const std::vector<std::string>& class_names);

// Writes what `outputs` asks for (the .npz unless `npz_written`, which BulkSample does itself)
// and prints "wrote PATH" on stdout for each file.
absl::Status WriteOutputs(const SampleSet& set, const Outputs& outputs,
                          const std::vector<std::string>& class_names, bool npz_written = false);

}  // namespace gd::client
