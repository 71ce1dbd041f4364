#include "client/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_format.h"
#include "client/gd_client.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

// "523" for a whole timestep, "523.4" for a continuous one.
std::string TimestepText(double timestep) {
  if (timestep == std::floor(timestep)) return absl::StrFormat("%.0f", timestep);
  return absl::StrFormat("%.1f", timestep);
}

std::string Bar(double fraction) {
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(std::clamp(fraction, 0.0, 1.0) * kWidth);
  return std::string(filled, '#') + std::string(kWidth - filled, '-');
}

std::string Duration(double seconds) {
  const int64_t whole = std::llround(seconds);
  if (whole >= 3600)
    return absl::StrFormat("%d:%02d:%02d", whole / 3600, whole / 60 % 60, whole % 60);
  return absl::StrFormat("%d:%02d", whole / 60, whole % 60);
}

}  // namespace

ProgressBar::ProgressBar(std::FILE* out) : out_(out), enabled_(isatty(fileno(out)) == 1) {}

void ProgressBar::OnEvent(const v1::SampleEvent& event) {
  if (!enabled_) return;
  const Clock::time_point now = Clock::now();
  if (event.has_accepted()) {
    total_steps_ = event.accepted().total_steps();
    num_images_ = event.accepted().num_images();
    accepted_at_ = now;
  } else if (event.has_step()) {
    const v1::StepEvent& step = event.step();
    total_steps_ = step.total_steps();
    steps_done_ = step.step() + 1;
    images_per_second_ = step.images_per_second();
    // DPM-Solver++ runs the networks between the integer timesteps: show the time they saw.
    timestep_ = ContinuousTimestep(step);
    if (!first_step_at_.has_value()) {
      first_step_at_ = now;
      first_step_done_ = steps_done_;
    }
    // Redrawing at most 10 times a second keeps a fast CPU model from flooding the terminal.
    if (steps_done_ >= total_steps_ || now - drawn_at_ >= std::chrono::milliseconds(100)) {
      Draw(now);
    }
  } else if (event.has_result()) {
    Clear();
  }
}

void ProgressBar::Clear() {
  if (drawn_) std::fputs("\r\033[K", out_);
  drawn_ = false;
}

void ProgressBar::Draw(Clock::time_point now) {
  const double fraction = total_steps_ > 0 ? std::min(1.0, 1.0 * steps_done_ / total_steps_) : 0;
  const std::string bar = Bar(fraction);
  double rate = images_per_second_;
  if (rate <= 0 && accepted_at_.has_value() && total_steps_ > 0) {
    const double elapsed = std::chrono::duration<double>(now - *accepted_at_).count();
    if (elapsed > 0) rate = num_images_ * fraction / elapsed;
  }
  // The time left, from the pace since the first step (queueing time excluded).
  std::string eta = "--:--";
  const double step_elapsed = std::chrono::duration<double>(now - *first_step_at_).count();
  if (steps_done_ >= total_steps_) {
    eta = "0:00";
  } else if (steps_done_ > first_step_done_ && step_elapsed > 0) {
    const double seconds_per_step = step_elapsed / (steps_done_ - first_step_done_);
    eta = Duration(seconds_per_step * (total_steps_ - steps_done_));
  }
  absl::FPrintF(out_, "\r[%s] %u/%u steps  t=%s  %.2f images/s  ETA %s\033[K", bar, steps_done_,
                total_steps_, TimestepText(timestep_), rate, eta);
  std::fflush(out_);
  drawn_ = true;
  drawn_at_ = now;
}

// ---- RunProgress --------------------------------------------------------------------------------

RunProgress::RunProgress(std::FILE* out, Clock::duration line_interval)
    : RunProgress(out, isatty(fileno(out)) == 1, line_interval) {}

RunProgress::RunProgress(std::FILE* out, bool terminal, Clock::duration line_interval)
    : out_(out), terminal_(terminal), line_interval_(line_interval) {}

void RunProgress::Update(const BulkProgress& progress, Clock::time_point now) {
  if (!started_at_.has_value()) {
    started_at_ = now;
    written_at_ = now;
  }
  if (progress.retries > retries_reported_) {
    Clear();
    absl::FPrintF(out_, "gd: retrying a request (%d %s so far): %s: %s\n", progress.retries,
                  progress.retries == 1 ? "retry" : "retries",
                  absl::StatusCodeToString(progress.last_retry.code()),
                  progress.last_retry.message());
    retries_reported_ = progress.retries;
  }
  const bool finished = progress.images_done >= progress.images_total;
  if (terminal_) {
    // Redrawn at most 10 times a second, and always at the end.
    if (drawn_ && !finished && now - written_at_ < std::chrono::milliseconds(100)) return;
    const double fraction = (progress.images_done + progress.images_partial) /
                            std::max<int64_t>(1, progress.images_total);
    absl::FPrintF(out_, "\r[%s] %s\033[K", Bar(fraction), Summary(progress, now));
    drawn_ = true;
  } else {
    if (now - written_at_ < line_interval_) return;
    absl::FPrintF(out_, "gd: %s\n", Summary(progress, now));
  }
  std::fflush(out_);
  written_at_ = now;
}

std::string RunProgress::Summary(const BulkProgress& progress, Clock::time_point now) const {
  const double elapsed = std::chrono::duration<double>(now - *started_at_).count();
  const double sampled = progress.images_done - progress.images_resumed + progress.images_partial;
  const double rate = elapsed > 0 ? sampled / elapsed : 0;
  const double left = progress.images_total - progress.images_done - progress.images_partial;
  std::string eta = "--:--";
  if (left <= 0) {
    eta = "0:00";
  } else if (rate > 0) {
    eta = Duration(left / rate);
  }
  std::string text = absl::StrFormat("%d/%d images  %.2f images/s  ETA %s", progress.images_done,
                                     progress.images_total, rate, eta);
  if (progress.requests_in_flight > 0) {
    absl::StrAppendFormat(&text, "  %d in flight", progress.requests_in_flight);
  }
  if (progress.retries > 0) absl::StrAppendFormat(&text, "  %d retried", progress.retries);
  if (!terminal_)
    absl::StrAppendFormat(
        &text, "  (%.0f%%)",
        100.0 * progress.images_done / std::max<int64_t>(1, progress.images_total));
  return text;
}

void RunProgress::Clear() {
  if (drawn_) std::fputs("\r\033[K", out_);
  drawn_ = false;
}

}  // namespace gd::client
