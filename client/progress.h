// The gd CLI's progress bar: one line on stderr, redrawn in place while a StreamSample call runs
// (steps done/total, images per second, estimated time left), and nothing at all when stderr is
// not a terminal (piped or redirected), so that logs and scripts never see control characters.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>

#include "guided_diffusion/v1/sampler.pb.h"

namespace gd::client {

class ProgressBar {
 public:
  // Draws on `out` only when it is a terminal.
  explicit ProgressBar(std::FILE* out = stderr);
  ~ProgressBar() { Clear(); }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  bool enabled() const { return enabled_; }

  // Feeds one event of the stream: Accepted sets the totals, each StepEvent may redraw (at most
  // ten times a second, and always at the last step), the result clears the line.
  void OnEvent(const guided_diffusion::v1::SampleEvent& event);

  // Erases the bar, so that what follows starts on a clean line.
  void Clear();

 private:
  using Clock = std::chrono::steady_clock;

  void Draw(Clock::time_point now);

  std::FILE* out_;
  const bool enabled_;
  bool drawn_ = false;
  uint32_t total_steps_ = 0;
  uint32_t num_images_ = 0;
  uint32_t steps_done_ = 0;
  uint32_t first_step_done_ = 0;
  double images_per_second_ = 0;
  std::optional<Clock::time_point> accepted_at_;
  std::optional<Clock::time_point> first_step_at_;
  Clock::time_point drawn_at_;
};

}  // namespace gd::client
