// Animated GIF (GIF89a) on plain bytes, for pictures of a denoising trajectory: frames of 8-bit
// grey or RGB(A) images (formats::Image), looping. Part of the torch-free gd_formats, so the gd
// client can write animations without LibTorch. The file is written by giflib (LZW, blocks,
// extensions); only the choice of colours is ours.
//
// Colours: each frame carries its own colour table. A frame with at most 256 distinct colours is
// stored exactly (every Fashion-MNIST frame, any grey image); one with more is reduced to a fixed
// 6 x 7 x 6 RGB cube with 4 x 4 ordered dithering (giflib's own quantizer is deprecated, and does
// not dither). Alpha is dropped (frames are opaque).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/formats/formats.h"

namespace gd::formats {

// Builds a GIF frame by frame, so that a long trajectory is never held uncompressed:
//
//   GifWriter gif(width, height);
//   for (...) if (absl::Status s = gif.AddFrame(frame, /*delay_cs=*/10); !s.ok()) ...
//   absl::StatusOr<std::string> bytes = gif.Finish();
class GifWriter {
 public:
  // Every frame is width x height, each in [1, 65535]; loop_count 0 repeats forever, N plays N + 1
  // times (the NETSCAPE2.0 extension's meaning).
  GifWriter(int64_t width, int64_t height, int loop_count = 0);
  GifWriter(GifWriter&&) noexcept;
  GifWriter& operator=(GifWriter&&) noexcept;
  ~GifWriter();

  // Appends a frame shown for delay_cs hundredths of a second (0..65535), compressed at once.
  // InvalidArgument when the frame is not width x height, has channels outside {1, 3, 4}, pixels
  // not H * W * C bytes, or the delay is out of range; the writer is then unchanged.
  // FailedPrecondition after Finish. Internal when giflib fails (out of memory); the writer then
  // repeats that error.
  absl::Status AddFrame(const Image& frame, int delay_cs);

  // The whole file (header, frames, trailer). FailedPrecondition without frames, or when the size
  // given to the constructor is outside [1, 65535], or when called twice.
  absl::StatusOr<std::string> Finish();

  int64_t frame_count() const { return frame_count_; }

 private:
  struct Encoder;  // giflib's handle and the bytes it has written

  absl::Status StartFile();
  absl::Status PutFrame(const Image& frame, int delay_cs);

  int64_t width_;
  int64_t height_;
  int loop_count_;
  int64_t frame_count_ = 0;
  bool finished_ = false;
  absl::Status error_;                // giflib's failure, repeated by every later call
  std::unique_ptr<Encoder> encoder_;  // from the first frame until Finish
};

// All frames at once, each shown for delay_cs: GifWriter's checks and errors.
absl::StatusOr<std::string> EncodeGif(const std::vector<Image>& frames, int delay_cs,
                                      int loop_count = 0);

}  // namespace gd::formats
