// Pictures of a denoising trajectory, built while `gd stream` runs, to see the images emerge:
//   - a strip: pred_xstart at evenly spaced steps, one row per image, one column per step;
//   - an animated GIF of x_t: one frame per streamed step (a grid of the images), the last frame
//     (the final samples) held longer.
// Step images arrive as the server's PNGs (StreamOptions FORMAT_PNG) or as float32/float16
// tensors, which are turned into pixels by the reference's uint8 formula (SampleToUint8). Only
// what the pictures need is kept: the strip's candidate frames, and the GIF compressed so far.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/formats/formats.h"
#include "core/io/formats/gif.h"
#include "guided_diffusion/v1/sampler.pb.h"

namespace gd::client {

// How long the GIF's last frame (the final samples) stays up before the animation loops.
inline constexpr int kGifFinalFrameCs = 150;

// The steps a strip of `columns` columns aims at among `total_steps` steps (0-based): the first,
// the last and evenly spaced ones between, rounded to the nearest step. {} when either is 0;
// {total_steps - 1} for one column. May repeat steps when columns > total_steps.
std::vector<uint32_t> StripTargets(uint32_t total_steps, uint32_t columns);

// Which images of a StepEvent.
enum class StepField { kXt, kPredXstart };

// The images of `field` in `step`: decoded from its PNGs, or converted from its tensor (float32 or
// float16 [N, C, H, W], C in {1, 3, 4}). Empty when the event carries neither form.
absl::StatusOr<std::vector<formats::Image>> StepImages(const guided_diffusion::v1::StepEvent& step,
                                                       StepField field);

struct TrajectoryOptions {
  std::string strip_path;  // "" = no strip
  uint32_t strip_columns = 8;
  std::string gif_path;  // "" = no GIF
  int gif_frame_ms = 100;
  int64_t gif_columns = 0;  // images per row of each GIF frame; 0 = min(N, 10)
};

class TrajectoryRecorder {
 public:
  explicit TrajectoryRecorder(TrajectoryOptions options);

  // What the stream must carry for the pictures asked for.
  bool needs_x_t() const { return !options_.gif_path.empty(); }
  bool needs_pred_xstart() const { return !options_.strip_path.empty(); }

  // Feeds one event of the stream, in order. The strip keeps, for each column, the streamed step
  // nearest to its target (so --every and events a slow reader lost only shift columns); the GIF
  // gets a frame per step. Errors: undecodable images, images that change size.
  absl::Status OnEvent(const guided_diffusion::v1::SampleEvent& event);

  // Writes the strip and the GIF and prints "wrote PATH" for each. FailedPrecondition when no
  // step images arrived.
  absl::Status Finish();

 private:
  // One strip column: the step nearest to `target` seen so far, with its images.
  struct StripColumn {
    uint32_t target = 0;
    std::optional<uint32_t> step;
    std::vector<formats::Image> images;
  };

  absl::Status OnStep(const guided_diffusion::v1::StepEvent& step);
  absl::Status AddGifFrame(std::vector<formats::Image> images);
  absl::Status FlushGifFrame(int delay_cs);
  absl::Status WriteStrip();

  TrajectoryOptions options_;
  uint32_t total_steps_ = 0;
  std::vector<StripColumn> strip_;
  std::optional<formats::GifWriter> gif_;
  std::optional<formats::Image> pending_gif_frame_;  // written once the next one (or the end) comes
};

}  // namespace gd::client
