// The files `gd sample` and `gd stream` write from a SampleResponse: a PNG grid, the reference's
// .npz sample dump (arr_0 uint8 [N, H, W, C], arr_1 int64 labels) and float32 .npy tensors, and,
// for `gd stream --dump_dir`, each streamed step's x_t and pred_xstart as .npy. Torch-free: wire
// tensors go through gd_formats.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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
  int64_t columns = 0;  // 0 = min(N, kMaxGridColumns)
};

// The columns of a grid of `count` images: `columns` when > 0, else min(count, kMaxGridColumns).
int64_t GridColumns(int64_t count, int64_t columns);

// A streamed or returned tensor as float32 [N, C, H, W] (float16 is widened); errors name `what`.
absl::StatusOr<formats::Array> StepTensor(const guided_diffusion::v1::Tensor& tensor,
                                          absl::string_view what);

// DIR/x_t_0012.npy and DIR/pred_xstart_0012.npy for step 12, as far as the event carries tensors.
absl::Status DumpStep(const guided_diffusion::v1::StepEvent& step, const std::string& dir);

// Writes what `outputs` asks for and prints the summary line on stdout, then one line per file.
absl::Status WriteOutputs(const guided_diffusion::v1::SampleResponse& response,
                          const Outputs& outputs);

}  // namespace gd::client
