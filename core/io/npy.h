// NumPy's .npy and .npz formats (numpy/lib/format.py, np.savez), for sample dumps (`arr_0` uint8
// [N x H x W x C], `arr_1` int64 labels, the layout of the reference's sampling scripts and
// evaluator), raw tensor exports and datasets. Also the whole-file helpers core/io shares.
//
// Self-contained: our own minimal zip reader/writer over zlib; no Python, no pickles (object
// arrays are refused). Knows nothing of images or datasets.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gd {

// Parses one .npy file (format versions 1.0, 2.0 and 3.0) into a contiguous CPU tensor that owns
// its memory. Byte order '<', '>' and '|' ('=' is taken as little-endian), C and Fortran order.
// dtypes and what they become:
//   f2 f4 f8 -> float16/32/64    i1 i2 i4 i8 -> int8/16/32/64    u1 -> uint8    b1 -> bool
//   u2 -> int32, u4 -> int64 (LibTorch 1.13 has no wider unsigned types; values are kept)
//   c8 c16 -> complex64/128
// Refused, with the reason: u8, structured, string, datetime and object (pickled) arrays.
// `what` names the source in errors ("samples.npz:arr_0.npy: truncated: ..."). Bytes after the
// data are ignored, as numpy.load does.
absl::StatusOr<torch::Tensor> ParseNpy(absl::string_view bytes, absl::string_view what);
absl::StatusOr<torch::Tensor> ReadNpy(const std::string& path);

// The .npy bytes of a tensor (any device or layout), byte for byte what numpy 1.24's np.save
// writes for the same array: version 1.0 header (2.0 only if the header exceeds 64 KiB),
// little-endian, C order, data aligned to 64 bytes. float16/32/64, int8/16/32/64, uint8, bool and
// complex64/128 are written as such; other dtypes are converted first: bfloat16 and other floating
// types to float32, quantized tensors dequantized to float32, other integer types (LibTorch 2.x's
// uint16/32/64) to int64.
std::string SerializeNpy(const torch::Tensor& tensor);
absl::Status WriteNpy(const std::string& path, const torch::Tensor& tensor);

// .npz: a zip archive of NAME.npy members. Reads stored (np.savez) and deflated
// (np.savez_compressed) members, checks every member's CRC-32, validates every offset and size
// against the file, and reads ZIP64 archives (numpy marks every member ZIP64, and dumps over
// 4 GiB need it). Names are returned without ".npy", in archive order; a member that is not a
// .npy, a duplicate name, encryption or another compression method is an error. The whole file
// is read into memory (peak memory about twice the archive).
absl::StatusOr<std::vector<std::pair<std::string, torch::Tensor>>> ReadNpz(const std::string& path);

// Writes an uncompressed .npz in np.savez's exact layout (byte-identical to np.savez of the same
// arrays under numpy 1.24), member by member, without holding the archive in memory. Names must
// be non-empty, unique, and not contain '\0'. Writing archives that would need ZIP64 (a member or
// the archive over 4 GiB, over 65535 members) is refused. On error the partial file is removed.
absl::Status WriteNpz(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& arrays);

// Whole-file helpers for core/io. Errors name the path and the OS's reason.
absl::StatusOr<std::string> ReadFileBytes(const std::string& path);
absl::Status WriteFileBytes(const std::string& path, absl::string_view bytes);

}  // namespace gd
