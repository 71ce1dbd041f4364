#include "client/picture.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/bitmap_font.h"

namespace gd::client {
namespace {

constexpr uint8_t kBackground = 255;  // white, as MakeGrid's padding
constexpr uint8_t kInk = 0;

// Height of the white band a caption is written in: 2 rows of margin above the glyphs, 1 below.
int64_t CaptionBandHeight(int scale) { return int64_t{kGlyphHeight + 3} * scale; }

formats::Image Blank(int64_t height, int64_t width, int64_t channels) {
  formats::Image image;
  image.height = height;
  image.width = width;
  image.channels = channels;
  image.pixels.assign(static_cast<size_t>(height * width * channels),
                      static_cast<char>(kBackground));
  return image;
}

// Writes `caption` centred in the band of `image` that starts at row `top` and spans columns
// [left, left + width).
void DrawCaption(formats::Image& image, const std::string& caption, int64_t top, int64_t left,
                 int64_t width, int scale) {
  const std::string text = FitCaption(caption, width, scale);
  const int64_t text_left = left + (width - TextWidth(text, scale)) / 2;
  DrawText(image, text, top + int64_t{2} * scale, text_left, scale, kInk);
}

// `tile` with a caption band below it.
formats::Image CaptionedTile(const formats::Image& tile, const std::string& caption, int scale) {
  formats::Image captioned =
      Blank(tile.height + CaptionBandHeight(scale), tile.width, tile.channels);
  std::copy(tile.pixels.begin(), tile.pixels.end(), captioned.pixels.begin());
  DrawCaption(captioned, caption, tile.height, 0, tile.width, scale);
  return captioned;
}

// Whether every column of a grid of `columns` holds images of one caption.
bool OneCaptionPerColumn(const std::vector<std::string>& captions, int64_t columns) {
  for (size_t i = static_cast<size_t>(columns); i < captions.size(); ++i) {
    if (captions[i] != captions[i % columns]) return false;
  }
  return true;
}

// `grid` with a caption band below it, one caption under each of its first columns.
formats::Image CaptionColumns(const formats::Image& grid, const formats::GridLayout& layout,
                              const std::vector<std::string>& captions, int scale) {
  formats::Image captioned =
      Blank(grid.height + CaptionBandHeight(scale), grid.width, grid.channels);
  std::copy(grid.pixels.begin(), grid.pixels.end(), captioned.pixels.begin());
  const size_t labelled = std::min(captions.size(), static_cast<size_t>(layout.columns));
  for (size_t column = 0; column < labelled; ++column) {
    DrawCaption(captioned, captions[column], grid.height, layout.TileLeft(column),
                layout.tile_width, scale);
  }
  return captioned;
}

}  // namespace

int64_t UpscaleFactor(int64_t width, int64_t height, int64_t min_tile_px) {
  const int64_t side = std::min(width, height);
  if (side <= 0 || min_tile_px <= side) return 1;
  return std::min(kMaxUpscale, (min_tile_px + side - 1) / side);
}

formats::Image ScaleNearest(const formats::Image& image, int64_t factor) {
  if (factor == 1) return image;
  formats::Image scaled = Blank(image.height * factor, image.width * factor, image.channels);
  const size_t pixel = static_cast<size_t>(image.channels);
  for (int64_t y = 0; y < scaled.height; ++y) {
    for (int64_t x = 0; x < scaled.width; ++x) {
      const size_t from = static_cast<size_t>((y / factor) * image.width + x / factor) * pixel;
      const size_t to = static_cast<size_t>(y * scaled.width + x) * pixel;
      std::copy_n(image.pixels.begin() + from, pixel, scaled.pixels.begin() + to);
    }
  }
  return scaled;
}

int CaptionScale(const std::vector<std::string>& captions, int64_t width) {
  for (int scale = kMaxTextScale; scale > 1; --scale) {
    const bool fits = std::all_of(captions.begin(), captions.end(), [&](const std::string& c) {
      return TextWidth(c, scale) + int64_t{2} * scale <= width;
    });
    if (fits) return scale;
  }
  return 1;
}

std::string FitCaption(const std::string& caption, int64_t width, int scale) {
  if (TextWidth(caption, scale) + int64_t{2} * scale <= width) return caption;
  // The most characters n with (n * advance - 1) * scale plus the margins within `width`.
  const int64_t fitting = (width / scale - 1) / kGlyphAdvance;
  if (fitting < 2) return "";
  return caption.substr(0, static_cast<size_t>(fitting - 1)) + ".";
}

absl::StatusOr<formats::Image> MakeSampleGrid(const std::vector<formats::Image>& images,
                                              const SampleGridOptions& options) {
  if (images.empty()) return formats::Image();
  const formats::Image& first = images.front();
  for (size_t i = 1; i < images.size(); ++i) {
    if (images[i].height != first.height || images[i].width != first.width ||
        images[i].channels != first.channels) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image ", i, " is ", images[i].height, "x", images[i].width, "x", images[i].channels,
          ", image 0 ", first.height, "x", first.width, "x", first.channels));
    }
  }
  if (!options.captions.empty() && options.captions.size() != images.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.captions.size(), " captions for ", images.size(), " images"));
  }
  const int64_t factor = UpscaleFactor(first.width, first.height, options.min_tile_px);
  const int64_t columns = std::max<int64_t>(1, options.columns);
  const int scale = CaptionScale(options.captions, first.width * factor);
  const bool under_columns =
      !options.captions.empty() && OneCaptionPerColumn(options.captions, columns);
  std::vector<formats::Image> tiles;
  tiles.reserve(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    formats::Image tile = ScaleNearest(images[i], factor);
    if (!options.captions.empty() && !under_columns) {
      tile = CaptionedTile(tile, options.captions[i], scale);
    }
    tiles.push_back(std::move(tile));
  }
  formats::Image grid = formats::MakeGrid(tiles, columns);
  if (!under_columns) return grid;
  const formats::GridLayout layout = formats::LayOutGrid(
      static_cast<int64_t>(tiles.size()), tiles[0].height, tiles[0].width, columns, /*padding=*/2);
  return CaptionColumns(grid, layout, options.captions, scale);
}

}  // namespace gd::client
