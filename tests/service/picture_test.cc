// Tests of the --out grid's pictures (client/picture.h) and the bitmap font (client/bitmap_font.h)
// on synthetic images, and of `gd sample --out` drawing them against the fake server.
#include "client/picture.h"

#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/bitmap_font.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/service/cli_runner.h"
#include "tests/service/fake_sampler.h"

namespace gd::client {
namespace {

using ::testing::HasSubstr;

// The ink of glyph `c` as kGlyphHeight rows of kGlyphWidth '#'/'.' characters.
std::string GlyphRows(char c) {
  std::string rows;
  for (int row = 0; row < kGlyphHeight; ++row) {
    for (int column = 0; column < kGlyphWidth; ++column) {
      rows += GlyphPixel(c, row, column) ? '#' : '.';
    }
  }
  return rows;
}

formats::Image Filled(int64_t height, int64_t width, int64_t channels, uint8_t value) {
  formats::Image image;
  image.height = height;
  image.width = width;
  image.channels = channels;
  image.pixels.assign(static_cast<size_t>(height * width * channels), static_cast<char>(value));
  return image;
}

uint8_t Pixel(const formats::Image& image, int64_t y, int64_t x, int64_t channel = 0) {
  return static_cast<uint8_t>(image.pixels[((y * image.width + x) * image.channels) + channel]);
}

// Inked (dark) pixels in rows [top, bottom) and columns [left, right).
int Ink(const formats::Image& image, int64_t top, int64_t bottom, int64_t left, int64_t right) {
  int ink = 0;
  for (int64_t y = top; y < bottom; ++y) {
    for (int64_t x = left; x < right; ++x) ink += Pixel(image, y, x) < 128;
  }
  return ink;
}

// ---- The font -----------------------------------------------------------------------------------

TEST(BitmapFontTest, EveryPrintableCharacterHasItsOwnGlyph) {
  std::set<std::string> glyphs;
  for (char c = ' '; c <= '~'; ++c) {
    const std::string rows = GlyphRows(c);
    if (c == ' ') {
      EXPECT_EQ(rows.find('#'), std::string::npos);
    } else {
      EXPECT_NE(rows.find('#'), std::string::npos) << c;
    }
    EXPECT_TRUE(glyphs.insert(rows).second) << "'" << c << "' looks like another character";
  }
  EXPECT_EQ(GlyphRows('\x01'), GlyphRows('?'));  // bytes outside ASCII's printable range
  EXPECT_EQ(GlyphRows('\xc3'), GlyphRows('?'));
}

TEST(BitmapFontTest, DescendersUseTheLastRowOnly) {
  const int last = kGlyphHeight - 1;
  auto inked_row = [](char c, int row) {
    for (int column = 0; column < kGlyphWidth; ++column) {
      if (GlyphPixel(c, row, column)) return true;
    }
    return false;
  };
  for (char c : std::string("gjpqy,")) EXPECT_TRUE(inked_row(c, last)) << c;
  for (char c : std::string("AZaz09/-")) EXPECT_FALSE(inked_row(c, last)) << c;
  // 'T' is a bar over a stem.
  EXPECT_EQ(GlyphRows('T').substr(0, 10), "#####..#..");
}

TEST(BitmapFontTest, TextWidthCountsAdvancesWithoutTheLastGap) {
  EXPECT_EQ(TextWidth("", 2), 0);
  EXPECT_EQ(TextWidth("A", 1), kGlyphWidth);
  EXPECT_EQ(TextWidth("Bag", 1), 3 * kGlyphAdvance - 1);
  EXPECT_EQ(TextWidth("Bag", 3), 3 * (3 * kGlyphAdvance - 1));
}

TEST(BitmapFontTest, DrawTextScalesEachGlyphPixelIntoABlock) {
  formats::Image image = Filled(20, 20, 1, 255);
  DrawText(image, "T", /*top=*/2, /*left=*/3, /*scale=*/2, /*value=*/0);
  // T's bar: glyph row 0, columns 0-4 -> image rows 2-3, columns 3-12.
  for (int64_t y = 2; y < 4; ++y) {
    for (int64_t x = 3; x < 13; ++x) EXPECT_EQ(Pixel(image, y, x), 0) << y << "," << x;
  }
  EXPECT_EQ(Pixel(image, 1, 3), 255);   // above
  EXPECT_EQ(Pixel(image, 2, 13), 255);  // right of the bar
  EXPECT_EQ(Pixel(image, 5, 3), 255);   // below the bar, left of the stem
  EXPECT_EQ(Pixel(image, 5, 7), 0);     // the stem: glyph column 2 -> image columns 7-8
  EXPECT_EQ(Ink(image, 0, 20, 0, 20), 2 * 2 * (5 + 6));  // 11 glyph pixels, 4 image pixels each
}

TEST(BitmapFontTest, TextIsClippedAtTheEdges) {
  formats::Image image = Filled(6, 6, 3, 255);
  DrawText(image, "WWWW", /*top=*/-3, /*left=*/-4, /*scale=*/3, /*value=*/0);
  DrawText(image, "W", /*top=*/4, /*left=*/4, /*scale=*/5, /*value=*/0);
  EXPECT_EQ(image.pixels.size(), 6u * 6 * 3);  // nothing written past the end
  EXPECT_GT(Ink(image, 0, 6, 0, 6), 0);
}

TEST(BitmapFontTest, AlphaStaysOpaque) {
  formats::Image image = Filled(10, 10, 4, 255);
  DrawText(image, "I", 0, 0, 1, 0);
  EXPECT_EQ(Pixel(image, 0, 1, 0), 0);  // I's top bar: glyph columns 1-3
  EXPECT_EQ(Pixel(image, 0, 1, 2), 0);
  EXPECT_EQ(Pixel(image, 0, 1, 3), 255);
}

// ---- Scaling and captions -----------------------------------------------------------------------

TEST(PictureTest, UpscaleFactorIsTheSmallestThatReachesTheMinimum) {
  EXPECT_EQ(UpscaleFactor(28, 28, 128), 5);  // 140 px
  EXPECT_EQ(UpscaleFactor(28, 28, 112), 4);  // exactly
  EXPECT_EQ(UpscaleFactor(8, 8, 128), 16);
  EXPECT_EQ(UpscaleFactor(256, 256, 128), 1);
  EXPECT_EQ(UpscaleFactor(28, 14, 28), 2);  // the shorter side counts
  EXPECT_EQ(UpscaleFactor(28, 28, 0), 1);
  EXPECT_EQ(UpscaleFactor(1, 1, 4096), kMaxUpscale);
  EXPECT_EQ(UpscaleFactor(0, 0, 128), 1);
}

TEST(PictureTest, ScaleNearestRepeatsPixels) {
  formats::Image image = Filled(2, 2, 1, 0);
  image.pixels = std::string("\x01\x02\x03\x04", 4);
  const formats::Image scaled = ScaleNearest(image, 3);
  ASSERT_EQ(scaled.height, 6);
  ASSERT_EQ(scaled.width, 6);
  EXPECT_EQ(Pixel(scaled, 0, 0), 1);
  EXPECT_EQ(Pixel(scaled, 2, 2), 1);
  EXPECT_EQ(Pixel(scaled, 2, 3), 2);
  EXPECT_EQ(Pixel(scaled, 3, 2), 3);
  EXPECT_EQ(Pixel(scaled, 5, 5), 4);
}

TEST(PictureTest, CaptionsGetTheLargestScaleThatFitsAndAreShortenedOtherwise) {
  EXPECT_EQ(CaptionScale({"Bag", "Ankle boot"}, 140), 2);  // "Ankle boot": 118 + margins at 2
  EXPECT_EQ(CaptionScale({"Bag"}, 140), kMaxTextScale);
  EXPECT_EQ(CaptionScale({"T-shirt/top"}, 96), 1);
  EXPECT_EQ(FitCaption("Bag", 96, 1), "Bag");
  const std::string fitted = FitCaption("great white shark, white shark, man-eater", 96, 1);
  EXPECT_EQ(fitted, "great white sh.");
  EXPECT_LE(TextWidth(fitted, 1) + 2, 96);
  EXPECT_EQ(FitCaption("Sneaker", 8, 1), "");  // not even two characters fit
}

formats::Image Tile(uint8_t value) { return Filled(8, 8, 1, value); }

TEST(PictureTest, GridWithoutCaptionsIsMakeGridOfTheScaledImages) {
  SampleGridOptions options;
  options.columns = 2;
  options.min_tile_px = 16;
  absl::StatusOr<formats::Image> grid = MakeSampleGrid({Tile(10), Tile(20), Tile(30)}, options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->width, 2 * (16 + 2) + 2);
  EXPECT_EQ(grid->height, 2 * (16 + 2) + 2);
  EXPECT_EQ(Pixel(*grid, 2, 2), 10);
  EXPECT_EQ(Pixel(*grid, 17, 17), 10);  // still tile 0 after scaling
  EXPECT_EQ(Pixel(*grid, 2, 20), 20);
  EXPECT_EQ(Pixel(*grid, 20, 2), 30);
}

TEST(PictureTest, OneClassPerColumnIsNamedUnderTheColumns) {
  SampleGridOptions options;
  options.columns = 2;
  options.min_tile_px = 64;  // 8 px -> 64 px tiles
  options.captions = {"Coat", "Bag", "Coat", "Bag"};
  absl::StatusOr<formats::Image> grid =
      MakeSampleGrid({Tile(200), Tile(200), Tile(200), Tile(200)}, options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  const int64_t images_height = 2 * (64 + 2) + 2;
  const int scale = CaptionScale(options.captions, 64);
  ASSERT_EQ(grid->height, images_height + (kGlyphHeight + 3) * scale);
  EXPECT_EQ(grid->width, 2 * (64 + 2) + 2);
  // Ink under each column, none between the rows of images.
  EXPECT_GT(Ink(*grid, images_height, grid->height, 2, 66), 0);
  EXPECT_GT(Ink(*grid, images_height, grid->height, 68, 132), 0);
  EXPECT_EQ(Ink(*grid, 0, images_height, 0, grid->width), 0);
}

TEST(PictureTest, MixedColumnsAreNamedUnderEachImage) {
  SampleGridOptions options;
  options.columns = 2;
  options.min_tile_px = 64;
  options.captions = {"Coat", "Bag", "Bag", ""};  // the last image has no name
  absl::StatusOr<formats::Image> grid =
      MakeSampleGrid({Tile(200), Tile(200), Tile(200), Tile(200)}, options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  const int64_t band = (kGlyphHeight + 3) * CaptionScale(options.captions, 64);
  const int64_t row = 64 + band + 2;  // a tile, its caption band, padding
  ASSERT_EQ(grid->height, 2 * row + 2);
  EXPECT_GT(Ink(*grid, 2 + 64, 2 + 64 + band, 2, 66), 0);                // under image 0
  EXPECT_GT(Ink(*grid, row + 2 + 64, row + 2 + 64 + band, 2, 66), 0);    // under image 2
  EXPECT_EQ(Ink(*grid, row + 2 + 64, row + 2 + 64 + band, 68, 132), 0);  // image 3: none
}

TEST(PictureTest, GridRejectsInconsistentInput) {
  SampleGridOptions options;
  EXPECT_EQ(MakeSampleGrid({Tile(1), Filled(8, 9, 1, 1)}, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.captions = {"one"};
  EXPECT_THAT(MakeSampleGrid({Tile(1), Tile(2)}, options).status().message(),
              HasSubstr("1 captions for 2 images"));
}

// ---- gd sample --out ----------------------------------------------------------------------------

TEST_F(CliTest, SampleGridIsScaledAndNamesTheClasses) {
  CliResult result = Run({"sample", "--labels", "0,1,2,3", "--out", Path("grid.png")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  absl::StatusOr<formats::Image> grid =
      formats::DecodePng(ReadFileOrEmpty(Path("grid.png")), "grid.png");
  ASSERT_TRUE(grid.ok()) << grid.status();
  // 8 px images at the default 128 px: x16; one row, one class per column: names under it.
  const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress"};
  const int scale = CaptionScale(names, 128);
  EXPECT_EQ(grid->width, 4 * (128 + 2) + 2);
  EXPECT_EQ(grid->height, 128 + 4 + (kGlyphHeight + 3) * scale);
  EXPECT_GT(Ink(*grid, 132, grid->height, 2, 130), 0);

  result = Run({"sample", "--labels", "0,1", "--out", Path("plain.png"), "--captions=false",
                "--min_tile_px", "0"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  grid = formats::DecodePng(ReadFileOrEmpty(Path("plain.png")), "plain.png");
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->height, kImageSize + 4);

  // Unlabelled images have no class to name.
  result = Run({"sample", "--num_samples", "2", "--out", Path("unlabelled.png")});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  grid = formats::DecodePng(ReadFileOrEmpty(Path("unlabelled.png")), "unlabelled.png");
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->height, 128 + 4);
}

}  // namespace
}  // namespace gd::client
