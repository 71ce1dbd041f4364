// PNG via libpng: encoding 8-bit grey/RGB/RGBA and decoding every PNG colour type to those.
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/io/formats/formats.h"

namespace gd::formats {
namespace {

// libpng reports errors by longjmp()ing out of its own frames. A longjmp must not skip a C++
// destructor, so: every function below that calls setjmp() holds only trivially destructible
// locals, the callbacks hold none when they call png_error(), and all C++ objects (vectors,
// strings) live in the callers, which never call setjmp() themselves.
struct PngIo {
  const char* data = nullptr;  // decode: the PNG bytes
  size_t size = 0;
  size_t position = 0;
  std::string* out = nullptr;  // encode: where the bytes go
  char message[256] = {};      // libpng's last error
};

void OnPngError(png_structp png, png_const_charp message) {
  auto* io = static_cast<PngIo*>(png_get_error_ptr(png));
  std::snprintf(io->message, sizeof(io->message), "%s", message);
  png_longjmp(png, 1);
}

void OnPngWarning(png_structp, png_const_charp) {}  // e.g. a bad ancillary CRC: libpng skips it

void ReadFromMemory(png_structp png, png_bytep out, size_t length) {
  auto* io = static_cast<PngIo*>(png_get_io_ptr(png));
  if (length > io->size - io->position) png_error(png, "unexpected end of data (truncated)");
  std::memcpy(out, io->data + io->position, length);
  io->position += length;
}

void WriteToString(png_structp png, png_bytep data, size_t length) {
  auto* io = static_cast<PngIo*>(png_get_io_ptr(png));
  bool failed = false;
  try {
    io->out->append(reinterpret_cast<const char*>(data), length);
  } catch (const std::exception&) {
    failed = true;
  }
  if (failed) png_error(png, "out of memory");
}

void FlushNothing(png_structp) {}

struct PngLayout {
  png_uint_32 width = 0;
  png_uint_32 height = 0;
  size_t file_row_bytes = 0;    // one row as stored, before transforms
  size_t output_row_bytes = 0;  // one row as we receive it
  int output_channels = 0;
  int output_bit_depth = 0;
};

// Reads the header and sets up the transforms that give 8-bit grey, RGB or RGBA.
bool ReadPngHeader(png_structp png, png_infop info, PngLayout* layout) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_info(png, info);
  layout->width = png_get_image_width(png, info);
  layout->height = png_get_image_height(png, info);
  layout->file_row_bytes = png_get_rowbytes(png, info);
  const int color_type = png_get_color_type(png, info);
  const int bit_depth = png_get_bit_depth(png, info);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  const bool has_trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
  if (has_trns) png_set_tRNS_to_alpha(png);
  if (bit_depth == 16) png_set_strip_16(png);
  if ((color_type & PNG_COLOR_MASK_COLOR) == 0 &&
      ((color_type & PNG_COLOR_MASK_ALPHA) != 0 || has_trns)) {
    png_set_gray_to_rgb(png);  // grey + alpha -> RGBA: we return C in {1, 3, 4} only
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  layout->output_row_bytes = png_get_rowbytes(png, info);
  layout->output_channels = png_get_channels(png, info);
  layout->output_bit_depth = png_get_bit_depth(png, info);
  return true;
}

bool ReadPngRows(png_structp png, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  png_read_end(png, nullptr);
  return true;
}

bool WritePngImage(png_structp png, png_infop info, png_uint_32 width, png_uint_32 height,
                   int color_type, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_IHDR(png, info, width, height, /*bit_depth=*/8, color_type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, nullptr);
  return true;
}

// Owns libpng's read or write structs; destroyed outside any setjmp() scope.
class PngHandle {
 public:
  PngHandle(bool for_reading, PngIo* io) : reading_(for_reading) {
    png_ = reading_ ? png_create_read_struct(PNG_LIBPNG_VER_STRING, io, OnPngError, OnPngWarning)
                    : png_create_write_struct(PNG_LIBPNG_VER_STRING, io, OnPngError, OnPngWarning);
    if (png_ != nullptr) info_ = png_create_info_struct(png_);
  }
  ~PngHandle() {
    if (png_ == nullptr) return;
    if (reading_) {
      png_destroy_read_struct(&png_, info_ != nullptr ? &info_ : nullptr, nullptr);
    } else {
      png_destroy_write_struct(&png_, info_ != nullptr ? &info_ : nullptr);
    }
  }
  PngHandle(const PngHandle&) = delete;
  PngHandle& operator=(const PngHandle&) = delete;

  bool ok() const { return png_ != nullptr && info_ != nullptr; }
  png_structp png() const { return png_; }
  png_infop info() const { return info_; }

 private:
  bool reading_;
  png_structp png_ = nullptr;
  png_infop info_ = nullptr;
};

// Deflate expands at most ~1032:1, so a file of n bytes cannot hold more than about 1032 n bytes
// of scanlines: a header claiming more is corrupt, and we refuse it before allocating. The cap
// on the decoded size keeps one image within reason whatever the file size.
constexpr uint64_t kMaxDeflateRatio = 1100;
constexpr uint64_t kMaxDecodedPngBytes = uint64_t{1} << 32;

}  // namespace

absl::StatusOr<std::string> EncodePng(const Image& image) {
  int color_type = 0;
  switch (image.channels) {
    case 1:
      color_type = PNG_COLOR_TYPE_GRAY;
      break;
    case 3:
      color_type = PNG_COLOR_TYPE_RGB;
      break;
    case 4:
      color_type = PNG_COLOR_TYPE_RGB_ALPHA;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "EncodePng: C = ", image.channels, " channels; allowed are 1 (grey), 3 (RGB), 4 (RGBA)"));
  }
  constexpr int64_t kMaxSide = 0x7fffffff;  // PNG's limit on width and height
  if (image.height < 1 || image.width < 1 || image.height > kMaxSide || image.width > kMaxSide) {
    return absl::InvalidArgumentError(absl::StrCat("EncodePng: image size ", image.height, "x",
                                                   image.width,
                                                   " is outside [1, 2^31 - 1] per side"));
  }
  const uint64_t row_bytes = static_cast<uint64_t>(image.width) * image.channels;
  if (image.pixels.size() % row_bytes != 0 ||
      image.pixels.size() / row_bytes != static_cast<uint64_t>(image.height)) {
    return absl::InvalidArgumentError(
        absl::StrCat("EncodePng: ", image.pixels.size(), " bytes of pixels for a ", image.height,
                     "x", image.width, "x", image.channels, " image (H x W x C bytes needed)"));
  }
  // libpng's row pointers are not const, but writing only reads through them.
  auto* base = reinterpret_cast<png_bytep>(const_cast<char*>(image.pixels.data()));
  std::vector<png_bytep> rows(static_cast<size_t>(image.height));
  for (size_t y = 0; y < rows.size(); ++y) rows[y] = base + y * row_bytes;

  std::string out;
  PngIo io;
  io.out = &out;
  PngHandle handle(/*for_reading=*/false, &io);
  if (!handle.ok()) return absl::ResourceExhaustedError("EncodePng: cannot create libpng state");
  png_set_write_fn(handle.png(), &io, WriteToString, FlushNothing);
  if (!WritePngImage(handle.png(), handle.info(), static_cast<png_uint_32>(image.width),
                     static_cast<png_uint_32>(image.height), color_type, rows.data())) {
    return absl::InternalError(absl::StrCat("EncodePng: libpng: ", io.message));
  }
  return out;
}

absl::StatusOr<Image> DecodePng(absl::string_view bytes, absl::string_view what) {
  static constexpr unsigned char kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (bytes.size() < sizeof(kSignature) ||
      std::memcmp(bytes.data(), kSignature, sizeof(kSignature)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not a PNG file (the 8-byte PNG signature is missing)"));
  }
  PngIo io;
  io.data = bytes.data();
  io.size = bytes.size();
  PngHandle handle(/*for_reading=*/true, &io);
  if (!handle.ok()) return absl::ResourceExhaustedError("DecodePng: cannot create libpng state");
  png_set_read_fn(handle.png(), &io, ReadFromMemory);
  PngLayout layout;
  if (!ReadPngHeader(handle.png(), handle.info(), &layout)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": invalid PNG: ", io.message));
  }
  const uint64_t stored_bytes = uint64_t{layout.height} * (layout.file_row_bytes + 1);
  const uint64_t decoded_bytes = uint64_t{layout.height} * layout.output_row_bytes;
  if (stored_bytes > kMaxDeflateRatio * bytes.size() + (uint64_t{1} << 20) ||
      decoded_bytes > kMaxDecodedPngBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: the header declares %dx%d pixels, more than its %d bytes can hold or than we decode "
        "(at most %d bytes)",
        what, layout.width, layout.height, bytes.size(), kMaxDecodedPngBytes));
  }
  const int channels = layout.output_channels;
  if (layout.output_bit_depth != 8 || (channels != 1 && channels != 3 && channels != 4) ||
      layout.output_row_bytes != size_t{layout.width} * channels) {
    return absl::InternalError(
        absl::StrFormat("%s: unexpected decoded layout (%d channels of %d bits, %d bytes per row)",
                        what, channels, layout.output_bit_depth, layout.output_row_bytes));
  }
  Image image;
  image.height = layout.height;
  image.width = layout.width;
  image.channels = channels;
  try {
    image.pixels.resize(static_cast<size_t>(decoded_bytes));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": out of memory for ", decoded_bytes, " bytes of pixels"));
  }
  std::vector<png_bytep> rows(layout.height);
  auto* base = reinterpret_cast<png_bytep>(image.pixels.data());
  for (size_t y = 0; y < rows.size(); ++y) rows[y] = base + y * layout.output_row_bytes;
  if (!ReadPngRows(handle.png(), rows.data())) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": invalid PNG: ", io.message));
  }
  return image;
}

}  // namespace gd::formats
