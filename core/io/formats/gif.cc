// GIF89a writing: colour tables (exact, or a dithered 6x7x6 cube), LZW compression as the GIF
// specification's appendix F describes it (variable code width from min_code_size + 1 to 12 bits,
// least significant bit first, a clear code when the 4096-entry table is full), data sub-blocks.
#include "core/io/formats/gif.h"

#include <algorithm>
#include <array>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/io/formats/internal.h"

namespace gd::formats {
namespace {

constexpr int64_t kMaxSide = 65535;  // GIF sizes are 16-bit fields
constexpr int kMaxCodeBits = 12;
constexpr int kMaxCodes = 1 << kMaxCodeBits;

using Rgb = std::array<uint8_t, 3>;

uint32_t Pack(const Rgb& rgb) { return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]; }

Rgb PixelAt(const Image& image, int64_t index) {
  const auto* p = reinterpret_cast<const uint8_t*>(image.pixels.data()) + index * image.channels;
  if (image.channels == 1) return {p[0], p[0], p[0]};
  return {p[0], p[1], p[2]};  // RGBA: alpha dropped
}

// A frame as palette indices and the palette (at most 256 colours).
struct IndexedFrame {
  std::vector<Rgb> palette;
  std::vector<uint8_t> indices;  // one per pixel, row-major
};

// Levels of the fallback cube: 6 reds x 7 greens x 6 blues = 252 colours (green gets the extra
// level, as the eye is most sensitive to it).
constexpr int kCubeLevels[3] = {6, 7, 6};

// 4 x 4 Bayer matrix, thresholds in (0, 1) after (value + 0.5) / 16.
constexpr int kBayer4[4][4] = {{0, 8, 2, 10}, {12, 4, 14, 6}, {3, 11, 1, 9}, {15, 7, 13, 5}};

IndexedFrame IndexFrame(const Image& image) {
  IndexedFrame frame;
  const int64_t count = image.height * image.width;
  frame.indices.resize(static_cast<size_t>(count));
  std::unordered_map<uint32_t, uint8_t> exact;
  bool fits = true;
  for (int64_t i = 0; i < count && fits; ++i) {
    const Rgb rgb = PixelAt(image, i);
    auto [it, inserted] = exact.try_emplace(Pack(rgb), static_cast<uint8_t>(exact.size()));
    if (inserted) {
      if (frame.palette.size() == 256) {
        fits = false;
        break;
      }
      frame.palette.push_back(rgb);
    }
    frame.indices[i] = it->second;
  }
  if (fits) return frame;

  // Too many colours: the fixed cube, ordered-dithered so that gradients do not band.
  frame.palette.clear();
  for (int r = 0; r < kCubeLevels[0]; ++r) {
    for (int g = 0; g < kCubeLevels[1]; ++g) {
      for (int b = 0; b < kCubeLevels[2]; ++b) {
        frame.palette.push_back({static_cast<uint8_t>(r * 255 / (kCubeLevels[0] - 1)),
                                 static_cast<uint8_t>(g * 255 / (kCubeLevels[1] - 1)),
                                 static_cast<uint8_t>(b * 255 / (kCubeLevels[2] - 1))});
      }
    }
  }
  for (int64_t y = 0; y < image.height; ++y) {
    for (int64_t x = 0; x < image.width; ++x) {
      const int64_t i = y * image.width + x;
      const Rgb rgb = PixelAt(image, i);
      const double threshold = (kBayer4[y % 4][x % 4] + 0.5) / 16.0;
      int level[3];
      for (int c = 0; c < 3; ++c) {
        const double scaled = rgb[c] / 255.0 * (kCubeLevels[c] - 1);
        level[c] = std::min(kCubeLevels[c] - 1, static_cast<int>(scaled + threshold));
      }
      frame.indices[i] =
          static_cast<uint8_t>((level[0] * kCubeLevels[1] + level[1]) * kCubeLevels[2] + level[2]);
    }
  }
  return frame;
}

// Codes packed least significant bit first, emitted as data sub-blocks of at most 255 bytes.
class CodeWriter {
 public:
  explicit CodeWriter(std::string* out) : out_(out) {}

  void Write(int code, int bits) {
    buffer_ |= static_cast<uint32_t>(code) << buffered_bits_;
    buffered_bits_ += bits;
    while (buffered_bits_ >= 8) {
      PutByte(static_cast<char>(buffer_ & 0xff));
      buffer_ >>= 8;
      buffered_bits_ -= 8;
    }
  }

  // Flushes the last partial byte and block, then the zero-length block terminator.
  void Finish() {
    if (buffered_bits_ > 0) PutByte(static_cast<char>(buffer_ & 0xff));
    FlushBlock();
    out_->push_back('\0');
  }

 private:
  void PutByte(char byte) {
    block_.push_back(byte);
    if (block_.size() == 255) FlushBlock();
  }
  void FlushBlock() {
    if (block_.empty()) return;
    out_->push_back(static_cast<char>(block_.size()));
    out_->append(block_);
    block_.clear();
  }

  std::string* out_;
  std::string block_;
  uint32_t buffer_ = 0;
  int buffered_bits_ = 0;
};

// The LZW string table: (prefix code, next index) -> code, an open-addressing hash table that
// a clear code empties cheaply.
class LzwTable {
 public:
  LzwTable() : keys_(kSlots, kEmpty), codes_(kSlots, 0) {}
  void Clear() { std::fill(keys_.begin(), keys_.end(), kEmpty); }
  // The code of `key`, or -1.
  int Find(uint32_t key) const {
    for (size_t slot = Hash(key);; slot = (slot + 1) & (kSlots - 1)) {
      if (keys_[slot] == key) return codes_[slot];
      if (keys_[slot] == kEmpty) return -1;
    }
  }
  void Insert(uint32_t key, int code) {
    size_t slot = Hash(key);
    while (keys_[slot] != kEmpty) slot = (slot + 1) & (kSlots - 1);
    keys_[slot] = key;
    codes_[slot] = static_cast<uint16_t>(code);
  }

 private:
  static constexpr size_t kSlots = 16384;  // > 4096 entries: the table stays sparse
  static constexpr uint32_t kEmpty = 0xffffffffu;
  static size_t Hash(uint32_t key) { return (key * 2654435761u >> 18) & (kSlots - 1); }
  std::vector<uint32_t> keys_;
  std::vector<uint16_t> codes_;
};

// The image data of one frame: the LZW minimum code size byte, then the sub-blocks.
void CompressIndices(const std::vector<uint8_t>& indices, int min_code_size, std::string* out) {
  out->push_back(static_cast<char>(min_code_size));
  CodeWriter writer(out);
  const int clear_code = 1 << min_code_size;
  const int end_code = clear_code + 1;
  LzwTable table;
  int next_code = clear_code + 2;
  int code_bits = min_code_size + 1;
  writer.Write(clear_code, code_bits);
  int prefix = indices[0];
  for (size_t i = 1; i < indices.size(); ++i) {
    const uint32_t key = (static_cast<uint32_t>(prefix) << 8) | indices[i];
    if (const int code = table.Find(key); code >= 0) {
      prefix = code;
      continue;
    }
    writer.Write(prefix, code_bits);
    // A decoder adds this entry one code later and widens its codes once its next free code
    // passes 2^bits: widening when next_code exceeds 2^bits keeps both in step.
    table.Insert(key, next_code++);
    if (next_code > (1 << code_bits) && code_bits < kMaxCodeBits) ++code_bits;
    if (next_code == kMaxCodes) {  // table full: start over
      writer.Write(clear_code, code_bits);
      table.Clear();
      next_code = clear_code + 2;
      code_bits = min_code_size + 1;
    }
    prefix = indices[i];
  }
  writer.Write(prefix, code_bits);
  writer.Write(end_code, code_bits);
  writer.Finish();
}

}  // namespace

GifWriter::GifWriter(int64_t width, int64_t height, int loop_count)
    : width_(width), height_(height), loop_count_(loop_count) {}

absl::Status GifWriter::AddFrame(const Image& frame, int delay_cs) {
  if (finished_) return absl::FailedPreconditionError("GifWriter::AddFrame after Finish");
  const std::string what = absl::StrCat("GIF frame ", frame_count_);
  if (frame.height != height_ || frame.width != width_) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is ", frame.height, "x", frame.width,
                                                   "; the animation is ", height_, "x", width_));
  }
  if (frame.channels != 1 && frame.channels != 3 && frame.channels != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has ", frame.channels, " channels; GIF frames take 1, 3 or 4"));
  }
  if (width_ < 1 || height_ < 1 || width_ > kMaxSide || height_ > kMaxSide) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", height_, "x", width_,
                                                   " is outside GIF's 1..", kMaxSide, " per side"));
  }
  if (frame.pixels.size() != static_cast<size_t>(frame.height * frame.width * frame.channels)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " has ", frame.pixels.size(), " bytes of pixels; ", frame.height, "x", frame.width,
        "x", frame.channels, " needs ", frame.height * frame.width * frame.channels));
  }
  if (delay_cs < 0 || delay_cs > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": delay ", delay_cs, " cs is outside [0, 65535]"));
  }

  const IndexedFrame indexed = IndexFrame(frame);
  int table_bits = 1;  // the colour table holds 2^table_bits entries
  while ((size_t{1} << table_bits) < indexed.palette.size()) ++table_bits;

  std::string& out = frames_;
  // Graphic control extension: no transparency, "do not dispose" (each frame covers the screen).
  out.append("\x21\xf9\x04\x04", 4);
  internal::PutLittle(&out, static_cast<uint64_t>(delay_cs), 2);
  out.append("\x00\x00", 2);  // transparent index (unused), block terminator
  // Image descriptor: the whole screen, a local colour table of 2^table_bits entries.
  out.push_back('\x2c');
  internal::PutLittle(&out, 0, 2);
  internal::PutLittle(&out, 0, 2);
  internal::PutLittle(&out, static_cast<uint64_t>(width_), 2);
  internal::PutLittle(&out, static_cast<uint64_t>(height_), 2);
  out.push_back(static_cast<char>(0x80 | (table_bits - 1)));
  for (size_t i = 0; i < (size_t{1} << table_bits); ++i) {
    const Rgb rgb = i < indexed.palette.size() ? indexed.palette[i] : Rgb{0, 0, 0};
    out.append(reinterpret_cast<const char*>(rgb.data()), 3);
  }
  CompressIndices(indexed.indices, std::max(2, table_bits), &out);
  ++frame_count_;
  return absl::OkStatus();
}

absl::StatusOr<std::string> GifWriter::Finish() {
  if (finished_) return absl::FailedPreconditionError("GifWriter::Finish called twice");
  if (width_ < 1 || height_ < 1 || width_ > kMaxSide || height_ > kMaxSide) {
    return absl::FailedPreconditionError(
        absl::StrCat("a GIF of ", height_, "x", width_, ": sides must be in 1..", kMaxSide));
  }
  if (frame_count_ == 0) return absl::FailedPreconditionError("a GIF needs at least one frame");
  finished_ = true;
  std::string out = "GIF89a";
  // Logical screen descriptor without a global colour table (every frame has its own).
  internal::PutLittle(&out, static_cast<uint64_t>(width_), 2);
  internal::PutLittle(&out, static_cast<uint64_t>(height_), 2);
  out.append("\x00\x00\x00", 3);  // flags, background colour index, pixel aspect ratio
  // NETSCAPE2.0 application extension: how often the animation repeats.
  out.append("\x21\xff\x0bNETSCAPE2.0\x03\x01", 16);
  internal::PutLittle(&out, static_cast<uint64_t>(std::clamp(loop_count_, 0, 65535)), 2);
  out.push_back('\0');
  out.append(frames_);
  out.push_back('\x3b');  // trailer
  frames_.clear();
  return out;
}

absl::StatusOr<std::string> EncodeGif(const std::vector<Image>& frames, int delay_cs,
                                      int loop_count) {
  if (frames.empty()) return absl::InvalidArgumentError("a GIF needs at least one frame");
  GifWriter writer(frames[0].width, frames[0].height, loop_count);
  for (const Image& frame : frames) {
    if (absl::Status status = writer.AddFrame(frame, delay_cs); !status.ok()) return status;
  }
  return writer.Finish();
}

}  // namespace gd::formats
