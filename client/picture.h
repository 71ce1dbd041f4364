// The PNG grid of final samples that `gd sample --out` and `gd stream --out` write, made to be
// looked at: small images (28x28 Fashion-MNIST) scaled up by a whole factor with nearest-neighbour
// pixels (no blur, every model pixel a block), and each image's class name written under it in
// the built-in bitmap font (bitmap_font.h) when the model has class names. When every column of
// the grid holds one class (labels 0..9 with 10 columns), the names are written once, under the
// columns.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/io/formats/formats.h"

namespace gd::client {

// Default of --min_tile_px: 28x28 images are drawn 140 px wide, a 64x64 one 128 px.
inline constexpr int64_t kDefaultMinTilePx = 128;
// The largest scale factor and text scale used.
inline constexpr int64_t kMaxUpscale = 64;
inline constexpr int kMaxTextScale = 3;

// The smallest whole factor that makes a width x height image at least `min_tile_px` on its
// shorter side; 1 when it already is (or min_tile_px <= 1), at most kMaxUpscale.
int64_t UpscaleFactor(int64_t width, int64_t height, int64_t min_tile_px);

// `image` with every pixel repeated factor x factor times. factor >= 1.
formats::Image ScaleNearest(const formats::Image& image, int64_t factor);

// The largest text scale (1 to kMaxTextScale) at which every caption fits in `width` pixels with
// a margin; 1 when none fits even at scale 1 (those are shortened by FitCaption).
int CaptionScale(const std::vector<std::string>& captions, int64_t width);

// `caption`, shortened to end in "." when it is wider than `width` at `scale`.
std::string FitCaption(const std::string& caption, int64_t width, int scale);

struct SampleGridOptions {
  int64_t columns = 10;     // images per row, >= 1
  int64_t min_tile_px = 0;  // see UpscaleFactor; 0 = native size
  // One per image, or none. Empty strings leave an image without a caption.
  std::vector<std::string> captions;
};

// The images (all of the first one's size and channels) scaled, captioned and tiled as
// formats::MakeGrid does (2 px white padding). InvalidArgument when the images differ in size or
// the captions are not one per image.
absl::StatusOr<formats::Image> MakeSampleGrid(const std::vector<formats::Image>& images,
                                              const SampleGridOptions& options);

}  // namespace gd::client
