// A tiny built-in bitmap font, to write class names under the images of `gd sample --out` without
// a font library: printable ASCII (32 to 126) in 5 x 8 pixel cells (7 rows above the baseline, one
// for descenders), drawn at a whole-number scale. Other bytes are drawn as '?'.
#pragma once

#include <cstdint>

#include "absl/strings/string_view.h"
#include "core/io/formats/formats.h"

namespace gd::client {

inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphHeight = 8;
// Pixels from one character's left edge to the next's at scale 1: the glyph and one blank column.
inline constexpr int kGlyphAdvance = kGlyphWidth + 1;

// Whether pixel (row, column) of character `c`'s cell is inked; row 0 is the top. Bytes outside
// 32..126 answer for '?'. Preconditions: 0 <= row < kGlyphHeight, 0 <= column < kGlyphWidth.
bool GlyphPixel(char c, int row, int column);

// Width in pixels of `text` drawn at `scale`, without the blank column after the last character:
// 0 for "", else (size * kGlyphAdvance - 1) * scale.
int64_t TextWidth(absl::string_view text, int scale);

// Draws `text` into `image` with its top-left corner at (top, left): every inked pixel becomes
// `value` in its grey or RGB channels (an alpha channel becomes opaque). Pixels falling outside the
// image are skipped, so text is clipped, never written out of bounds. scale >= 1.
void DrawText(formats::Image& image, absl::string_view text, int64_t top, int64_t left, int scale,
              uint8_t value);

}  // namespace gd::client
