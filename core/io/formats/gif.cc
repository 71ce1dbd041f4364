// GIF89a writing through giflib: the screen descriptor, the NETSCAPE2.0 loop extension, a graphic
// control extension and an image with its local colour table per frame, LZW-compressed by giflib
// as each frame arrives. Colour tables are chosen here (exact, or a dithered 6x7x6 cube).
#include "core/io/formats/gif.h"

#include <gif_lib.h>

#include <algorithm>
#include <array>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace gd::formats {
namespace {

constexpr int64_t kMaxSide = 65535;  // GIF sizes are 16-bit fields

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

// giflib's OutputFunc: appends to the std::string given to EGifOpen.
int AppendToString(GifFileType* gif, const GifByteType* data, int length) {
  static_cast<std::string*>(gif->UserData)->append(reinterpret_cast<const char*>(data), length);
  return length;
}

absl::Status GifLibError(absl::string_view call, int error_code) {
  const char* message = GifErrorString(error_code);
  return absl::InternalError(absl::StrCat(
      "giflib ", call,
      " failed: ", message != nullptr ? std::string(message) : absl::StrCat("error ", error_code)));
}

}  // namespace

struct GifWriter::Encoder {
  std::string bytes;  // written by giflib through AppendToString
  GifFileType* gif = nullptr;
  ~Encoder() {
    if (gif != nullptr) EGifCloseFile(gif, /*ErrorCode=*/nullptr);
  }
};

GifWriter::GifWriter(int64_t width, int64_t height, int loop_count)
    : width_(width), height_(height), loop_count_(loop_count) {}
GifWriter::GifWriter(GifWriter&&) noexcept = default;
GifWriter& GifWriter::operator=(GifWriter&&) noexcept = default;
GifWriter::~GifWriter() = default;

// The header, the logical screen (no global colour table: every frame has its own) and how often
// the animation repeats.
absl::Status GifWriter::StartFile() {
  auto encoder = std::make_unique<Encoder>();
  int error_code = 0;
  encoder->gif = EGifOpen(&encoder->bytes, &AppendToString, &error_code);
  if (encoder->gif == nullptr) return GifLibError("EGifOpen", error_code);
  GifFileType* gif = encoder->gif;
  EGifSetGifVersion(gif, /*gif89=*/true);
  if (EGifPutScreenDesc(gif, static_cast<int>(width_), static_cast<int>(height_),
                        /*GifColorRes=*/8, /*GifBackGround=*/0,
                        /*GifColorMap=*/nullptr) == GIF_ERROR) {
    return GifLibError("EGifPutScreenDesc", gif->Error);
  }
  // NETSCAPE2.0 application extension: sub-block 1 holds the 16-bit loop count.
  const uint16_t loops = static_cast<uint16_t>(std::clamp(loop_count_, 0, 65535));
  const GifByteType loop_block[3] = {1, static_cast<GifByteType>(loops & 0xff),
                                     static_cast<GifByteType>(loops >> 8)};
  if (EGifPutExtensionLeader(gif, APPLICATION_EXT_FUNC_CODE) == GIF_ERROR ||
      EGifPutExtensionBlock(gif, 11, "NETSCAPE2.0") == GIF_ERROR ||
      EGifPutExtensionBlock(gif, 3, loop_block) == GIF_ERROR ||
      EGifPutExtensionTrailer(gif) == GIF_ERROR) {
    return GifLibError("EGifPutExtension (NETSCAPE2.0)", gif->Error);
  }
  encoder_ = std::move(encoder);
  return absl::OkStatus();
}

absl::Status GifWriter::AddFrame(const Image& frame, int delay_cs) {
  if (finished_) return absl::FailedPreconditionError("GifWriter::AddFrame after Finish");
  if (!error_.ok()) return error_;
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
  if (encoder_ == nullptr) error_ = StartFile();
  if (error_.ok()) error_ = PutFrame(frame, delay_cs);
  if (!error_.ok()) return error_;
  ++frame_count_;
  return absl::OkStatus();
}

// A graphic control extension (the delay; no transparency; "do not dispose": each frame covers the
// screen), then the image with its local colour table of 2^k entries, k >= 1.
absl::Status GifWriter::PutFrame(const Image& frame, int delay_cs) {
  GifFileType* gif = encoder_->gif;
  GraphicsControlBlock control{};
  control.DisposalMode = DISPOSE_DO_NOT;
  control.UserInputFlag = false;
  control.DelayTime = delay_cs;
  control.TransparentColor = NO_TRANSPARENT_COLOR;
  GifByteType control_bytes[4];
  const size_t control_size = EGifGCBToExtension(&control, control_bytes);
  if (EGifPutExtension(gif, GRAPHICS_EXT_FUNC_CODE, static_cast<int>(control_size),
                       control_bytes) == GIF_ERROR) {
    return GifLibError("EGifPutExtension (graphic control)", gif->Error);
  }

  IndexedFrame indexed = IndexFrame(frame);
  int table_bits = 1;
  while ((size_t{1} << table_bits) < indexed.palette.size()) ++table_bits;
  std::vector<GifColorType> colours(size_t{1} << table_bits, GifColorType{0, 0, 0});
  for (size_t i = 0; i < indexed.palette.size(); ++i) {
    colours[i] = {indexed.palette[i][0], indexed.palette[i][1], indexed.palette[i][2]};
  }
  std::unique_ptr<ColorMapObject, void (*)(ColorMapObject*)> colour_map(
      GifMakeMapObject(static_cast<int>(colours.size()), colours.data()), &GifFreeMapObject);
  if (colour_map == nullptr) return GifLibError("GifMakeMapObject", E_GIF_ERR_NOT_ENOUGH_MEM);
  // giflib copies the map.
  if (EGifPutImageDesc(gif, /*GifLeft=*/0, /*GifTop=*/0, static_cast<int>(width_),
                       static_cast<int>(height_), /*GifInterlace=*/false,
                       colour_map.get()) == GIF_ERROR) {
    return GifLibError("EGifPutImageDesc", gif->Error);
  }
  for (int64_t y = 0; y < height_; ++y) {
    if (EGifPutLine(gif, indexed.indices.data() + y * width_, static_cast<int>(width_)) ==
        GIF_ERROR) {
      return GifLibError("EGifPutLine", gif->Error);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> GifWriter::Finish() {
  if (finished_) return absl::FailedPreconditionError("GifWriter::Finish called twice");
  if (!error_.ok()) return error_;
  if (width_ < 1 || height_ < 1 || width_ > kMaxSide || height_ > kMaxSide) {
    return absl::FailedPreconditionError(
        absl::StrCat("a GIF of ", height_, "x", width_, ": sides must be in 1..", kMaxSide));
  }
  if (frame_count_ == 0) return absl::FailedPreconditionError("a GIF needs at least one frame");
  finished_ = true;
  // EGifCloseFile writes the trailer and frees the handle, even when it fails.
  int error_code = 0;
  const int closed = EGifCloseFile(encoder_->gif, &error_code);
  encoder_->gif = nullptr;
  std::string bytes = std::move(encoder_->bytes);
  encoder_.reset();
  if (closed == GIF_ERROR) return GifLibError("EGifCloseFile", error_code);
  return bytes;
}

absl::StatusOr<std::string> EncodeGif(const std::vector<Image>& frames, int delay_cs,
                                      int loop_count) {
  if (frames.empty()) return absl::InvalidArgumentError("a GIF needs at least one frame");
  GifWriter writer(frames[0].width, frames[0].height, loop_count);
  for (const Image& frame : frames) {
    RETURN_IF_ERROR(writer.AddFrame(frame, delay_cs));
  }
  return writer.Finish();
}

}  // namespace gd::formats
