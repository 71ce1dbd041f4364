// Image grids, as torchvision.utils.make_grid: the geometry (LayOutGrid) and tiling of Images.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/io/formats/formats.h"
#include "core/io/formats/internal.h"

namespace gd::formats {

GridLayout LayOutGrid(int64_t count, int64_t tile_height, int64_t tile_width, int64_t columns,
                      int64_t padding) {
  if (count < 0 || tile_height < 0 || tile_width < 0 || columns < 1 || padding < 0) {
    internal::PreconditionFailed(
        "LayOutGrid", absl::StrCat("count = ", count, ", tile ", tile_height, "x", tile_width,
                                   ", columns = ", columns, ", padding = ", padding,
                                   "; needs columns >= 1 and the others >= 0"));
  }
  GridLayout layout;
  layout.columns = std::min(columns, count);
  layout.rows = layout.columns == 0 ? 0 : (count + layout.columns - 1) / layout.columns;
  layout.height = layout.rows * (tile_height + padding) + padding;
  layout.width = layout.columns * (tile_width + padding) + padding;
  layout.tile_height = tile_height;
  layout.tile_width = tile_width;
  layout.padding = padding;
  return layout;
}

int64_t GridLayout::TileTop(int64_t index) const {
  return (index / columns) * (tile_height + padding) + padding;
}

int64_t GridLayout::TileLeft(int64_t index) const {
  return (index % columns) * (tile_width + padding) + padding;
}

Image MakeGrid(const std::vector<Image>& images, int64_t columns, int64_t padding,
               uint8_t pad_value) {
  if (images.empty()) {
    LayOutGrid(0, 0, 0, columns, padding);  // checks columns and padding all the same
    return Image{};
  }
  const Image& first = images.front();
  for (size_t i = 0; i < images.size(); ++i) {
    const Image& image = images[i];
    if (image.height != first.height || image.width != first.width ||
        image.channels != first.channels || image.height < 0 || image.width < 0 ||
        image.channels < 0 ||
        image.pixels.size() != static_cast<size_t>(image.height * image.width * image.channels)) {
      internal::PreconditionFailed(
          "MakeGrid",
          absl::StrCat("images[", i, "] is ", image.height, "x", image.width, "x", image.channels,
                       " with ", image.pixels.size(), " bytes of pixels; images[0] is ",
                       first.height, "x", first.width, "x", first.channels));
    }
  }
  const GridLayout layout =
      LayOutGrid(static_cast<int64_t>(images.size()), first.height, first.width, columns, padding);
  Image grid;
  grid.height = layout.height;
  grid.width = layout.width;
  grid.channels = first.channels;
  grid.pixels.assign(static_cast<size_t>(grid.height * grid.width * grid.channels),
                     static_cast<char>(pad_value));
  const size_t tile_row_bytes = static_cast<size_t>(first.width * first.channels);
  for (size_t i = 0; i < images.size(); ++i) {
    const int64_t top = layout.TileTop(static_cast<int64_t>(i));
    const int64_t left = layout.TileLeft(static_cast<int64_t>(i));
    for (int64_t y = 0; y < first.height; ++y) {
      std::memcpy(&grid.pixels[((top + y) * grid.width + left) * grid.channels],
                  &images[i].pixels[y * tile_row_bytes], tile_row_bytes);
    }
  }
  return grid;
}

}  // namespace gd::formats
