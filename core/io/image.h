// Images: the reference's sample <-> pixel conversions, PNG encode/decode (libpng) and grids.
//
// Pixel tensors here are uint8 [N x H x W x C] (or one image, [H x W x C]), the layout the
// reference's sampling scripts write and PIL reads; model tensors are float [N x C x H x W] in
// [-1, 1]. This module knows nothing of datasets, models or the wire: callers own file names.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gd {

// Float samples [N x C x H x W] in [-1, 1] -> uint8 [N x H x W x C], as image_sample.py:
// ((x + 1) * 127.5).clamp(0, 255).to(uint8), permuted to NHWC, contiguous. The cast truncates
// (0 -> 127, not 128). Computed in float32 (float64 input stays float64); NaN maps to 0 (what the
// reference's cast yields on x86). Same device as the input. Precondition: 4-D floating input.
torch::Tensor SamplesToUint8(const torch::Tensor& samples);

// uint8 [N x H x W x C] -> float32 [N x C x H x W] in [-1, 1]: x / 127.5 - 1, as
// image_datasets.py. Same device as the input. Precondition: 4-D input.
torch::Tensor Uint8ToSamples(const torch::Tensor& images);

// PNG bytes of one uint8 image [H x W x C], C in {1 (grey), 3 (RGB), 4 (RGBA)}, 8 bits per
// channel, not interlaced, no ancillary chunks. Any device and memory layout. Errors name the
// dtype/shape that cannot be written.
absl::StatusOr<std::string> EncodePng(const torch::Tensor& image_hwc);

// Decodes PNG bytes into a contiguous CPU uint8 [H x W x C] tensor:
//   grey (1, 2, 4, 8 or 16 bit)               -> C = 1
//   grey with alpha, or grey with tRNS        -> C = 4 (RGBA: grey copied to R, G, B)
//   RGB, or palette                           -> C = 3
//   RGBA, or RGB / palette with tRNS          -> C = 4
// 16-bit channels keep their high byte (as PIL's 16-bit RGB decoding); gamma and colour chunks
// are ignored (as PIL). Interlaced images are de-interlaced. `what` names the source in errors
// (a corrupt, truncated or oversized image is an InvalidArgument error, never a crash).
absl::StatusOr<torch::Tensor> DecodePng(absl::string_view bytes, absl::string_view what = "PNG");

absl::Status WritePng(const std::string& path, const torch::Tensor& image_hwc);
absl::StatusOr<torch::Tensor> ReadPng(const std::string& path);

// Tiles uint8 images [N x H x W x C] into one image [H' x W' x C], as torchvision's make_grid:
// min(columns, N) tiles per row, ceil(N / columns) rows, `padding` pixels of `pad_value` between
// tiles and around them, so H' = rows * (H + padding) + padding and tile (r, c) starts at pixel
// (r * (H + padding) + padding, c * (W + padding) + padding). Cells after the last image are
// filled with pad_value. Preconditions (checked, c10::Error): uint8 4-D input, columns >= 1,
// padding >= 0. Result on the input's device.
torch::Tensor MakeGrid(const torch::Tensor& images_nhwc, int64_t columns, int64_t padding = 2,
                       uint8_t pad_value = 255);

}  // namespace gd
