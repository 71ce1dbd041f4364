// Tests for core/io/formats/gif: the GIF89a writer, read back by giflib's decoder (DGifSlurp): the
// screen, the loop count, each frame's delay, disposal, placement and colour table, and its pixels.
// Torch-free like gd_formats itself.
#include <gif_lib.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/io/formats/gif.h"

namespace gd::formats {
namespace {

using ::testing::HasSubstr;

// ---- Reading GIFs back with giflib --------------------------------------------------------------

struct DecodedFrame {
  int delay_cs = -1;  // from the graphic control extension; -1 without one
  int disposal = -1;
  int transparent_index = -2;  // -1: none
  int left = 0, top = 0, width = 0, height = 0;
  bool interlaced = false;
  size_t palette_entries = 0;  // of the colour table in force: the local one, else the global one
  bool local_palette = false;
  std::vector<uint8_t> rgb;  // width * height * 3
};

struct DecodedGif {
  std::string version;  // "GIF89a"
  int width = 0;
  int height = 0;
  bool global_palette = false;
  int loop_count = -1;  // from NETSCAPE2.0; -1 without it
  std::vector<DecodedFrame> frames;
};

// giflib's InputFunc over a string: the bytes not read yet.
struct StringInput {
  const std::string* bytes;
  size_t position = 0;
};

int ReadFromString(GifFileType* gif, GifByteType* out, int length) {
  auto* input = static_cast<StringInput*>(gif->UserData);
  const size_t count = std::min<size_t>(length, input->bytes->size() - input->position);
  std::memcpy(out, input->bytes->data() + input->position, count);
  input->position += count;
  return static_cast<int>(count);
}

// The loop count of a NETSCAPE2.0 application extension among `blocks`, or -1.
int LoopCount(const ExtensionBlock* blocks, int count) {
  for (int i = 0; i + 1 < count; ++i) {
    const ExtensionBlock& block = blocks[i];
    const ExtensionBlock& next = blocks[i + 1];
    if (block.Function == APPLICATION_EXT_FUNC_CODE && block.ByteCount == 11 &&
        std::memcmp(block.Bytes, "NETSCAPE2.0", 11) == 0 &&
        next.Function == CONTINUE_EXT_FUNC_CODE && next.ByteCount == 3 && next.Bytes[0] == 1) {
      return next.Bytes[1] | (next.Bytes[2] << 8);
    }
  }
  return -1;
}

// Decodes `bytes` whole, adding a test failure for anything giflib refuses and for bytes after the
// trailer.
DecodedGif DecodeGif(const std::string& bytes) {
  DecodedGif decoded;
  decoded.version = bytes.substr(0, 6);
  StringInput input{&bytes};
  int error = 0;
  std::unique_ptr<GifFileType, void (*)(GifFileType*)> gif(
      DGifOpen(&input, &ReadFromString, &error),
      [](GifFileType* file) { DGifCloseFile(file, /*ErrorCode=*/nullptr); });
  if (gif == nullptr) {
    ADD_FAILURE() << "DGifOpen: " << GifErrorString(error);
    return decoded;
  }
  if (DGifSlurp(gif.get()) != GIF_OK) {
    ADD_FAILURE() << "DGifSlurp: " << GifErrorString(gif->Error);
    return decoded;
  }
  EXPECT_EQ(input.position, bytes.size()) << "bytes after the trailer";
  decoded.width = gif->SWidth;
  decoded.height = gif->SHeight;
  decoded.global_palette = gif->SColorMap != nullptr;
  for (int i = 0; i < gif->ImageCount; ++i) {
    const SavedImage& image = gif->SavedImages[i];
    if (i == 0) decoded.loop_count = LoopCount(image.ExtensionBlocks, image.ExtensionBlockCount);
    DecodedFrame frame;
    GraphicsControlBlock control;
    if (DGifSavedExtensionToGCB(gif.get(), i, &control) == GIF_OK) {
      frame.delay_cs = control.DelayTime;
      frame.disposal = control.DisposalMode;
      frame.transparent_index = control.TransparentColor;
    }
    const GifImageDesc& desc = image.ImageDesc;
    frame.left = desc.Left;
    frame.top = desc.Top;
    frame.width = desc.Width;
    frame.height = desc.Height;
    frame.interlaced = desc.Interlace;
    frame.local_palette = desc.ColorMap != nullptr;
    const ColorMapObject* palette = desc.ColorMap != nullptr ? desc.ColorMap : gif->SColorMap;
    if (palette == nullptr) {
      ADD_FAILURE() << "frame " << i << " has no colour table";
      break;
    }
    frame.palette_entries = static_cast<size_t>(palette->ColorCount);
    for (int p = 0; p < desc.Width * desc.Height; ++p) {
      const int index = image.RasterBits[p];
      EXPECT_LT(index, palette->ColorCount);
      if (index >= palette->ColorCount) break;
      const GifColorType& colour = palette->Colors[index];
      frame.rgb.insert(frame.rgb.end(), {colour.Red, colour.Green, colour.Blue});
    }
    decoded.frames.push_back(std::move(frame));
  }
  return decoded;
}

// ---- Helpers ------------------------------------------------------------------------------------

Image RandomImage(int64_t height, int64_t width, int64_t channels, int levels, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> level(0, levels - 1);
  Image image{height, width, channels, std::string(height * width * channels, '\0')};
  for (char& pixel : image.pixels) {
    pixel = static_cast<char>(levels == 1 ? 0 : level(rng) * 255 / (levels - 1));
  }
  return image;
}

// The RGB pixels an exact GIF must decode to: grey replicated, alpha dropped.
std::vector<uint8_t> ExpectedRgb(const Image& image) {
  std::vector<uint8_t> rgb;
  for (int64_t i = 0; i < image.height * image.width; ++i) {
    for (int c = 0; c < 3; ++c) {
      const int64_t channel = image.channels == 1 ? 0 : c;
      rgb.push_back(static_cast<uint8_t>(image.pixels[i * image.channels + channel]));
    }
  }
  return rgb;
}

// ---- Tests --------------------------------------------------------------------------------------

TEST(GifTest, GreyFramesRoundTripExactly) {
  const std::vector<Image> frames = {RandomImage(5, 7, 1, 16, 1), RandomImage(5, 7, 1, 16, 2),
                                     RandomImage(5, 7, 1, 256, 3)};
  GifWriter writer(7, 5);
  ASSERT_TRUE(writer.AddFrame(frames[0], 10).ok());
  ASSERT_TRUE(writer.AddFrame(frames[1], 20).ok());
  ASSERT_TRUE(writer.AddFrame(frames[2], 300).ok());
  EXPECT_EQ(writer.frame_count(), 3);
  absl::StatusOr<std::string> bytes = writer.Finish();
  ASSERT_TRUE(bytes.ok()) << bytes.status();

  const DecodedGif gif = DecodeGif(*bytes);
  EXPECT_EQ(gif.version, "GIF89a");
  EXPECT_EQ(gif.width, 7);
  EXPECT_EQ(gif.height, 5);
  EXPECT_FALSE(gif.global_palette);
  EXPECT_EQ(gif.loop_count, 0);  // forever
  ASSERT_EQ(gif.frames.size(), 3u);
  const int delays[] = {10, 20, 300};
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(gif.frames[i].delay_cs, delays[i]);
    EXPECT_EQ(gif.frames[i].disposal, DISPOSE_DO_NOT);
    EXPECT_EQ(gif.frames[i].transparent_index, NO_TRANSPARENT_COLOR);
    EXPECT_TRUE(gif.frames[i].local_palette);
    EXPECT_FALSE(gif.frames[i].interlaced);
    EXPECT_EQ(gif.frames[i].left, 0);
    EXPECT_EQ(gif.frames[i].top, 0);
    EXPECT_EQ(gif.frames[i].width, 7);
    EXPECT_EQ(gif.frames[i].height, 5);
    EXPECT_EQ(gif.frames[i].rgb, ExpectedRgb(frames[i]));
  }
}

TEST(GifTest, RgbAndRgbaFramesWithFewColoursAreExact) {
  const Image rgb = RandomImage(9, 4, 3, 5, 4);  // at most 125 colours
  Image rgba = RandomImage(9, 4, 4, 4, 5);
  absl::StatusOr<std::string> bytes = EncodeGif({rgb, rgba}, 7, /*loop_count=*/3);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const DecodedGif gif = DecodeGif(*bytes);
  EXPECT_EQ(gif.loop_count, 3);
  ASSERT_EQ(gif.frames.size(), 2u);
  EXPECT_EQ(gif.frames[0].rgb, ExpectedRgb(rgb));
  EXPECT_EQ(gif.frames[1].rgb, ExpectedRgb(rgba));
  EXPECT_EQ(gif.frames[1].delay_cs, 7);
}

// Large frames (noise fills LZW's 4096-entry string table many times) and uniform ones (long
// strings) round-trip; runs compress well.
TEST(GifTest, TableResetsAndLongRunsDecompress) {
  const Image noise = RandomImage(200, 300, 1, 256, 6);
  const Image flat = RandomImage(300, 200, 1, 1, 0);
  Image stripes = flat;
  for (size_t i = 0; i < stripes.pixels.size(); ++i) stripes.pixels[i] = (i / 37) % 2 ? 'x' : 'y';
  absl::StatusOr<std::string> bytes = EncodeGif({noise}, 0);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  DecodedGif gif = DecodeGif(*bytes);
  ASSERT_EQ(gif.frames.size(), 1u);
  EXPECT_EQ(gif.frames[0].palette_entries, 256u);
  EXPECT_TRUE(gif.frames[0].rgb == ExpectedRgb(noise));

  bytes = EncodeGif({flat, stripes}, 0);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  gif = DecodeGif(*bytes);
  ASSERT_EQ(gif.frames.size(), 2u);
  EXPECT_EQ(gif.frames[0].palette_entries, 2u);  // one colour: GIF's smallest table
  EXPECT_TRUE(gif.frames[0].rgb == ExpectedRgb(flat));
  EXPECT_TRUE(gif.frames[1].rgb == ExpectedRgb(stripes));
  EXPECT_LT(bytes->size(), 4000u);  // 120,000 pixels of runs compress well
}

// Every palette size: the smallest table that holds the colours used, and exact pixels.
TEST(GifTest, EveryPaletteSizeRoundTrips) {
  for (int levels : {2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256}) {
    SCOPED_TRACE(levels);
    const Image image = RandomImage(31, 33, 1, levels, levels);
    absl::StatusOr<std::string> bytes = EncodeGif({image}, 1);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    const DecodedGif gif = DecodeGif(*bytes);
    ASSERT_EQ(gif.frames.size(), 1u);
    // The smallest table that holds the colours used (GIF tables have 2^k entries, k >= 1).
    const size_t used = std::set<char>(image.pixels.begin(), image.pixels.end()).size();
    size_t entries = 2;
    while (entries < used) entries *= 2;
    EXPECT_EQ(gif.frames[0].palette_entries, entries);
    EXPECT_TRUE(gif.frames[0].rgb == ExpectedRgb(image));
  }
}

// More than 256 colours: the dithered cube keeps every pixel within one cube step of its colour
// and the frame's mean colour close to the original's.
TEST(GifTest, ManyColoursAreDitheredOntoTheCube) {
  const Image image = RandomImage(64, 64, 3, 256, 7);
  absl::StatusOr<std::string> bytes = EncodeGif({image}, 5);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const DecodedGif gif = DecodeGif(*bytes);
  ASSERT_EQ(gif.frames.size(), 1u);
  EXPECT_EQ(gif.frames[0].palette_entries, 256u);
  const std::vector<uint8_t> want = ExpectedRgb(image);
  ASSERT_EQ(gif.frames[0].rgb.size(), want.size());
  double sum_want = 0, sum_got = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const int step = i % 3 == 1 ? 255 / 6 + 1 : 255 / 5 + 1;  // green has 7 levels, red/blue 6
    ASSERT_LE(std::abs(int{gif.frames[0].rgb[i]} - int{want[i]}), step) << i;
    sum_want += want[i];
    sum_got += gif.frames[0].rgb[i];
  }
  EXPECT_NEAR(sum_got / want.size(), sum_want / want.size(), 3.0);
}

// A writer moved half way (std::optional<GifWriter> in the client) keeps writing the same file.
TEST(GifTest, MovedWriterKeepsItsFrames) {
  const std::vector<Image> frames = {RandomImage(6, 4, 3, 3, 8), RandomImage(6, 4, 3, 3, 9)};
  GifWriter first(4, 6, /*loop_count=*/2);
  ASSERT_TRUE(first.AddFrame(frames[0], 11).ok());
  GifWriter moved = std::move(first);
  ASSERT_TRUE(moved.AddFrame(frames[1], 12).ok());
  EXPECT_EQ(moved.frame_count(), 2);
  absl::StatusOr<std::string> bytes = moved.Finish();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const DecodedGif gif = DecodeGif(*bytes);
  EXPECT_EQ(gif.loop_count, 2);
  ASSERT_EQ(gif.frames.size(), 2u);
  EXPECT_EQ(gif.frames[0].delay_cs, 11);
  EXPECT_EQ(gif.frames[1].delay_cs, 12);
  EXPECT_EQ(gif.frames[0].rgb, ExpectedRgb(frames[0]));
  EXPECT_EQ(gif.frames[1].rgb, ExpectedRgb(frames[1]));
}

TEST(GifTest, BadFramesAndMisuseAreErrors) {
  GifWriter writer(4, 3);
  EXPECT_EQ(writer.Finish().status().code(), absl::StatusCode::kFailedPrecondition);

  GifWriter gif(4, 3);
  absl::Status status = gif.AddFrame(RandomImage(3, 5, 1, 2, 0), 1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("GIF frame 0 is 3x5; the animation is 3x4"));
  EXPECT_THAT(gif.AddFrame(RandomImage(3, 4, 2, 2, 0), 1).message(), HasSubstr("2 channels"));
  Image short_pixels = RandomImage(3, 4, 3, 2, 0);
  short_pixels.pixels.pop_back();
  EXPECT_THAT(gif.AddFrame(short_pixels, 1).message(), HasSubstr("35 bytes of pixels"));
  EXPECT_THAT(gif.AddFrame(RandomImage(3, 4, 1, 2, 0), -1).message(), HasSubstr("delay -1"));
  EXPECT_THAT(gif.AddFrame(RandomImage(3, 4, 1, 2, 0), 65536).message(), HasSubstr("65536"));
  EXPECT_EQ(gif.frame_count(), 0);
  ASSERT_TRUE(gif.AddFrame(RandomImage(3, 4, 1, 2, 0), 1).ok());
  ASSERT_TRUE(gif.Finish().ok());
  EXPECT_EQ(gif.Finish().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(gif.AddFrame(RandomImage(3, 4, 1, 2, 0), 1).code(),
            absl::StatusCode::kFailedPrecondition);

  GifWriter too_wide(70000, 1);
  EXPECT_THAT(too_wide.AddFrame(RandomImage(1, 70000, 1, 2, 0), 1).message(),
              HasSubstr("outside GIF's 1..65535"));
  EXPECT_EQ(EncodeGif({}, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gd::formats
