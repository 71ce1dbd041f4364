// The gd CLI's progress displays on stderr:
//   - ProgressBar, for one StreamSample call (gd stream): one line redrawn in place (steps
//     done/total, the step's timestep, images per second, estimated time left), and nothing at all
//     when stderr is not a terminal (piped or redirected), so that logs and scripts never see
//     control characters;
//   - RunProgress, for a run of many requests (gd sample, BulkSample): on a terminal a line redrawn
//     in place (images done/total, images per second, time left, requests in flight, retries);
//     elsewhere a plain line every so often, for the logs of long runs.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

#include "client/bulk_sample.h"
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
  double timestep_ = 0;
  double images_per_second_ = 0;
  std::optional<Clock::time_point> accepted_at_;
  std::optional<Clock::time_point> first_step_at_;
  Clock::time_point drawn_at_;
};

// Plain lines (stderr not a terminal) come at most this often.
inline constexpr std::chrono::seconds kRunProgressLineInterval{10};

class RunProgress {
 public:
  using Clock = std::chrono::steady_clock;

  // Redraws a bar when `out` is a terminal, else writes a line every `line_interval`.
  explicit RunProgress(std::FILE* out = stderr,
                       Clock::duration line_interval = kRunProgressLineInterval);
  // The same, with the terminal question answered by the caller (tests).
  RunProgress(std::FILE* out, bool terminal, Clock::duration line_interval);
  ~RunProgress() { Clear(); }
  RunProgress(const RunProgress&) = delete;
  RunProgress& operator=(const RunProgress&) = delete;

  // Feeds the run's progress as of `now`. The first call starts the clock of the images/s rate,
  // which counts only the images sampled by this run (not those resumed). A new retry is reported
  // on a line of its own, with its error.
  void Update(const BulkProgress& progress, Clock::time_point now = Clock::now());

  // Erases the bar, so that what follows starts on a clean line.
  void Clear();

 private:
  // "1200/5000 images" and the rest, as one line's text without the bar.
  std::string Summary(const BulkProgress& progress, Clock::time_point now) const;

  std::FILE* out_;
  const bool terminal_;
  const Clock::duration line_interval_;
  bool drawn_ = false;
  std::optional<Clock::time_point> started_at_;
  Clock::time_point written_at_;
  int64_t retries_reported_ = 0;
};

}  // namespace gd::client
