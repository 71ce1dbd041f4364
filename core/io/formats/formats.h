// File and wire formats on plain byte buffers, without LibTorch: PNG, .npy, .npz (zip), image
// grids, float16. Shared by core/io (which wraps them for tensors) and client/ (which must not
// link LibTorch). Everything that parses input validates every length and offset and returns a
// Status naming `what` (a file name or a description) instead of crashing.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gd::formats {

enum class DType { kFloat16, kFloat32, kFloat64, kInt8, kInt16, kInt32, kInt64, kUInt8, kBool };
size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);  // numpy's: "<f4", "|u1", ...

// A dense C-order array with little-endian elements.
struct Array {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::string data;  // numel() * DTypeSize(dtype) bytes
  int64_t numel() const;
};

// 8-bit images, row-major H x W x C.
struct Image {
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;  // 1 grey, 3 RGB, 4 RGBA
  std::string pixels;    // height * width * channels bytes
};

// 8 bits per channel, not interlaced, no ancillary chunks. An InvalidArgument error names what
// PNG cannot hold: C not in {1, 3, 4}, a side outside [1, 2^31 - 1], pixels not H * W * C bytes.
absl::StatusOr<std::string> EncodePng(const Image& image);
// Grey, grey+alpha, palette and 16-bit PNGs are converted to 8-bit grey (C=1), RGB (3) or RGBA (4).
absl::StatusOr<Image> DecodePng(absl::string_view bytes, absl::string_view what);

// Tiles N images of equal size (uint8 N x H x W x C) into rows of `columns`, with `padding`
// pixels of `pad_value` between tiles and around the edge. Preconditions (else it aborts with a
// message): every image of the first one's height, width and channels, with that many pixels;
// columns >= 1; padding >= 0. No images give an empty Image (0 x 0 x 0).
Image MakeGrid(const std::vector<Image>& images, int64_t columns, int64_t padding = 2,
               uint8_t pad_value = 255);

// .npy versions 1-3, either byte order, C or Fortran order; returns C order, little-endian.
absl::StatusOr<Array> ParseNpy(absl::string_view bytes, absl::string_view what);
std::string SerializeNpy(const Array& array);  // version 1, little-endian, C order

// .npz: a zip of NAME.npy members, stored or deflated; names without ".npy", archive order.
absl::StatusOr<std::vector<std::pair<std::string, Array>>> ParseNpz(absl::string_view bytes,
                                                                    absl::string_view what);
// Written stored (np.savez's layout), with CRC-32s; numpy.load reads it.
// Preconditions (else it aborts with a message; WriteNpz below returns a Status instead): names
// non-empty, unique, without '\0'; under 65535 arrays and 4 GiB in all (ZIP64 is not written).
std::string SerializeNpz(const std::vector<std::pair<std::string, Array>>& arrays);

// IEEE half <-> single precision (round to nearest even).
float HalfToFloat(uint16_t half);
uint16_t FloatToHalf(float value);

// Errors name the path and the OS's reason. A failed write removes the partial file.
absl::StatusOr<std::string> ReadFileBytes(const std::string& path);
absl::Status WriteFileBytes(const std::string& path, absl::string_view bytes);

// ---- Below: the general forms the functions above are built on (core/io's tensor I/O uses them).

// A numpy element type as its descr's kind and item size: DType's types ('f' 2/4/8, 'i' 1/2/4/8,
// 'u' 1, 'b' 1) and complex64/128 ('c' 8/16), which Array cannot hold.
struct NpyType {
  char kind = 'f';  // 'f' float, 'i' signed, 'u' unsigned, 'b' bool, 'c' complex
  int item_size = 4;
};
inline bool operator==(NpyType a, NpyType b) {
  return a.kind == b.kind && a.item_size == b.item_size;
}
inline bool operator!=(NpyType a, NpyType b) { return !(a == b); }
NpyType NpyTypeOf(DType dtype);

// A dense C-order array of any NpyType, little-endian elements.
struct NpyArray {
  NpyType type;
  std::vector<int64_t> shape;
  std::string data;  // numel() * type.item_size bytes
  int64_t numel() const;
};

// ParseNpy for every type .npy files hold here: DType's and complex64/128. Unsigned 'u2'/'u4' are
// widened to 'i4'/'i8' (values kept); 'b1' bytes become 0/1 (any non-zero byte is true, as numpy
// reads it). Refused, with the reason: 'u8', object (pickled), structured, string and datetime
// arrays. Bytes after the data are ignored, as numpy.load does.
absl::StatusOr<NpyArray> ParseNpyArray(absl::string_view bytes, absl::string_view what);

// The .npy bytes of `data` (numel(shape) * item_size bytes, C order, little-endian; else it
// aborts), byte for byte numpy 1.24's np.save: version 1.0 header (2.0 if the header exceeds 64
// KiB), data aligned to 64 bytes. `data` is borrowed: nothing is copied but into the result.
std::string SerializeNpy(NpyType type, const std::vector<int64_t>& shape, absl::string_view data);

// ParseNpz member by member: `visit` gets each member's name (without ".npy") and array in archive
// order, so that a caller converting members need not hold them all. The archive is read by libzip:
// stored and deflated members, every CRC-32, offset and size checked, ZIP64 archives. A member that
// is not a .npy, a repeated name, encryption or another compression method is an error, and so is a
// member over the reader's limits (core/io/formats/zip.h): a claimed size above 1100 times its
// compressed size (a zip bomb) or above 16 GiB. Returns the first error, the archive's or visit's.
absl::Status VisitNpz(
    absl::string_view bytes, absl::string_view what,
    const std::function<absl::Status(const std::string& name, NpyArray array)>& visit);

// Writes an .npz file in SerializeNpz's layout (byte-identical to np.savez under numpy 1.24) member
// by member: `npy_bytes(i)` is asked for member i's .npy bytes only when it is written, so only one
// member is in memory at a time; its error aborts the write. Names are checked before the file is
// opened: non-empty, unique, without '\0'. Archives that would need ZIP64 (a member or the archive
// over 4 GiB, 65535 members or more) are refused. On any error the partial file is removed.
absl::Status WriteNpz(const std::string& path, const std::vector<std::string>& names,
                      const std::function<absl::StatusOr<std::string>(size_t index)>& npy_bytes);
absl::Status WriteNpz(const std::string& path,
                      const std::vector<std::pair<std::string, Array>>& arrays);

// MakeGrid's geometry, for callers that tile other pixel containers (core/io's tensors): `count`
// tiles of tile_height x tile_width in min(columns, count) columns and ceil(count / columns) rows,
// as torchvision's make_grid. Preconditions (else it aborts): columns >= 1; count, tile sides and
// padding >= 0.
struct GridLayout {
  int64_t columns = 0;
  int64_t rows = 0;
  int64_t height = 0;  // of the grid: rows * (tile_height + padding) + padding
  int64_t width = 0;   // columns * (tile_width + padding) + padding
  int64_t tile_height = 0;
  int64_t tile_width = 0;
  int64_t padding = 0;
  int64_t TileTop(int64_t index) const;   // first pixel row of tile `index`
  int64_t TileLeft(int64_t index) const;  // first pixel column of tile `index`
};
GridLayout LayOutGrid(int64_t count, int64_t tile_height, int64_t tile_width, int64_t columns,
                      int64_t padding);

}  // namespace gd::formats
