// Tests for core/io/formats/gif: the GIF89a writer, read back by a decoder written here from the
// GIF specification (independent of the writer's code): every block is walked, the LZW data is
// decompressed and the pixels compared. Torch-free like gd_formats itself.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/io/formats/gif.h"

namespace gd::formats {
namespace {

using ::testing::HasSubstr;

// ---- A GIF reader, from the specification -------------------------------------------------------

struct DecodedFrame {
  int delay_cs = -1;  // from the graphic control extension; -1 without one
  int disposal = -1;
  int left = 0, top = 0, width = 0, height = 0;
  int min_code_size = 0;
  size_t palette_entries = 0;
  std::vector<uint8_t> rgb;  // width * height * 3
};

struct DecodedGif {
  int width = 0;
  int height = 0;
  int loop_count = -1;  // from NETSCAPE2.0; -1 without it
  std::vector<DecodedFrame> frames;
  bool trailer = false;
  size_t largest_sub_block = 0;
};

class Reader {
 public:
  explicit Reader(const std::string& bytes) : bytes_(bytes) {}
  bool Has(size_t n) const { return pos_ + n <= bytes_.size(); }
  uint8_t Byte() { return Has(1) ? static_cast<uint8_t>(bytes_[pos_++]) : (failed_ = true, 0); }
  int U16() {
    const int low = Byte();
    return low | (Byte() << 8);
  }
  std::string Take(size_t n) {
    if (!Has(n)) {
      failed_ = true;
      return "";
    }
    pos_ += n;
    return bytes_.substr(pos_ - n, n);
  }
  // Data sub-blocks up to the zero-length terminator, concatenated.
  std::string SubBlocks(size_t* largest) {
    std::string data;
    for (uint8_t size = Byte(); size != 0 && !failed_; size = Byte()) {
      *largest = std::max<size_t>(*largest, size);
      data += Take(size);
    }
    return data;
  }
  bool failed() const { return failed_; }
  bool at_end() const { return pos_ == bytes_.size(); }

 private:
  const std::string& bytes_;
  size_t pos_ = 0;
  bool failed_ = false;
};

// LZW decompression as in the GIF specification's appendix F; an empty result on any bad code.
std::vector<uint8_t> LzwDecode(const std::string& data, int min_code_size, size_t pixel_count) {
  const int clear = 1 << min_code_size;
  const int end = clear + 1;
  std::vector<std::vector<uint8_t>> table;
  auto reset = [&] {
    table.assign(clear + 2, {});
    for (int i = 0; i < clear; ++i) table[i] = {static_cast<uint8_t>(i)};
  };
  reset();
  int code_bits = min_code_size + 1;
  int previous = -1;
  std::vector<uint8_t> out;
  size_t bit = 0;
  while (bit + code_bits <= data.size() * 8) {
    int code = 0;
    for (int i = 0; i < code_bits; ++i, ++bit) {
      code |= ((static_cast<uint8_t>(data[bit / 8]) >> (bit % 8)) & 1) << i;
    }
    if (code == clear) {
      reset();
      code_bits = min_code_size + 1;
      previous = -1;
      continue;
    }
    if (code == end) return out;
    std::vector<uint8_t> entry;
    if (code < static_cast<int>(table.size()) && !table[code].empty()) {
      entry = table[code];
    } else if (code == static_cast<int>(table.size()) && previous >= 0) {
      entry = table[previous];
      entry.push_back(table[previous][0]);
    } else {
      return {};
    }
    out.insert(out.end(), entry.begin(), entry.end());
    if (previous >= 0 && table.size() < 4096) {
      std::vector<uint8_t> added = table[previous];
      added.push_back(entry[0]);
      table.push_back(added);
      if (table.size() == (size_t{1} << code_bits) && code_bits < 12) ++code_bits;
    }
    previous = code;
    if (out.size() > pixel_count) return {};
  }
  return {};  // no end code
}

// Decodes `bytes`, adding a test failure for anything the specification does not allow.
DecodedGif DecodeGif(const std::string& bytes) {
  DecodedGif gif;
  Reader reader(bytes);
  EXPECT_EQ(reader.Take(6), "GIF89a");
  gif.width = reader.U16();
  gif.height = reader.U16();
  const uint8_t screen_flags = reader.Byte();
  reader.Byte();  // background colour
  reader.Byte();  // aspect ratio
  std::vector<std::array<uint8_t, 3>> global_table;
  if (screen_flags & 0x80) {
    global_table.resize(size_t{2} << (screen_flags & 7));
    for (auto& entry : global_table) {
      for (uint8_t& channel : entry) channel = reader.Byte();
    }
  }
  DecodedFrame pending;
  while (!reader.failed()) {
    const uint8_t introducer = reader.Byte();
    if (introducer == 0x3b) {
      gif.trailer = true;
      break;
    }
    if (introducer == 0x21) {
      const uint8_t label = reader.Byte();
      const std::string data = reader.SubBlocks(&gif.largest_sub_block);
      if (label == 0xf9 && data.size() == 4) {
        pending.disposal = (static_cast<uint8_t>(data[0]) >> 2) & 7;
        pending.delay_cs = static_cast<uint8_t>(data[1]) | (static_cast<uint8_t>(data[2]) << 8);
      } else if (label == 0xff && data.size() == 14 && data.substr(0, 11) == "NETSCAPE2.0") {
        EXPECT_EQ(data[11], 1);
        gif.loop_count = static_cast<uint8_t>(data[12]) | (static_cast<uint8_t>(data[13]) << 8);
      } else {
        ADD_FAILURE() << "unexpected extension " << int{label} << " of " << data.size() << " bytes";
      }
      continue;
    }
    if (introducer != 0x2c) {
      ADD_FAILURE() << "unexpected block introducer " << int{introducer};
      break;
    }
    DecodedFrame frame = pending;
    pending = DecodedFrame();
    frame.left = reader.U16();
    frame.top = reader.U16();
    frame.width = reader.U16();
    frame.height = reader.U16();
    const uint8_t flags = reader.Byte();
    EXPECT_EQ(flags & 0x40, 0) << "interlaced";
    std::vector<std::array<uint8_t, 3>> table = global_table;
    if (flags & 0x80) {
      table.assign(size_t{2} << (flags & 7), {});
      for (auto& entry : table) {
        for (uint8_t& channel : entry) channel = reader.Byte();
      }
    }
    frame.palette_entries = table.size();
    frame.min_code_size = reader.Byte();
    EXPECT_GE(frame.min_code_size, 2);
    EXPECT_LE(frame.min_code_size, 8);
    const size_t pixels = static_cast<size_t>(frame.width) * frame.height;
    const std::vector<uint8_t> indices =
        LzwDecode(reader.SubBlocks(&gif.largest_sub_block), frame.min_code_size, pixels);
    EXPECT_EQ(indices.size(), pixels) << "frame " << gif.frames.size() << ": bad LZW data";
    for (uint8_t index : indices) {
      EXPECT_LT(index, table.size());
      if (index >= table.size()) break;
      frame.rgb.insert(frame.rgb.end(), table[index].begin(), table[index].end());
    }
    gif.frames.push_back(std::move(frame));
  }
  EXPECT_FALSE(reader.failed()) << "truncated";
  EXPECT_TRUE(gif.trailer);
  EXPECT_TRUE(reader.at_end()) << "bytes after the trailer";
  return gif;
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
  EXPECT_EQ(gif.width, 7);
  EXPECT_EQ(gif.height, 5);
  EXPECT_EQ(gif.loop_count, 0);  // forever
  EXPECT_LE(gif.largest_sub_block, 255u);
  ASSERT_EQ(gif.frames.size(), 3u);
  const int delays[] = {10, 20, 300};
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(gif.frames[i].delay_cs, delays[i]);
    EXPECT_EQ(gif.frames[i].disposal, 1);  // do not dispose
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

// Large frames fill the 4096-entry string table many times (clear codes, 12-bit codes); uniform
// frames grow long strings. Both must decompress to the same pixels.
TEST(GifTest, TableResetsAndLongRunsDecompress) {
  const Image noise = RandomImage(200, 300, 1, 256, 6);
  const Image flat = RandomImage(300, 200, 1, 1, 0);
  Image stripes = flat;
  for (size_t i = 0; i < stripes.pixels.size(); ++i) stripes.pixels[i] = (i / 37) % 2 ? 'x' : 'y';
  absl::StatusOr<std::string> bytes = EncodeGif({noise}, 0);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  DecodedGif gif = DecodeGif(*bytes);
  ASSERT_EQ(gif.frames.size(), 1u);
  EXPECT_EQ(gif.frames[0].min_code_size, 8);
  EXPECT_TRUE(gif.frames[0].rgb == ExpectedRgb(noise));

  bytes = EncodeGif({flat, stripes}, 0);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  gif = DecodeGif(*bytes);
  ASSERT_EQ(gif.frames.size(), 2u);
  EXPECT_EQ(gif.frames[0].min_code_size, 2);  // one colour: GIF's smallest code size
  EXPECT_TRUE(gif.frames[0].rgb == ExpectedRgb(flat));
  EXPECT_TRUE(gif.frames[1].rgb == ExpectedRgb(stripes));
  EXPECT_LT(bytes->size(), 4000u);  // 120,000 pixels of runs compress well
}

// Every small palette size, so every minimum code size and each first code-width change is met.
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
    EXPECT_EQ(gif.frames[0].min_code_size, std::max(2, __builtin_ctzll(entries)));
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
