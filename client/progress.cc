#include "client/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_format.h"

namespace gd::client {

namespace v1 = ::guided_diffusion::v1;

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
  constexpr int kWidth = 30;
  const double fraction = total_steps_ > 0 ? std::min(1.0, 1.0 * steps_done_ / total_steps_) : 0;
  const int filled = static_cast<int>(fraction * kWidth);
  std::string bar(filled, '#');
  bar.append(kWidth - filled, '-');
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
    const int64_t left = std::llround(seconds_per_step * (total_steps_ - steps_done_));
    eta = absl::StrFormat("%d:%02d", left / 60, left % 60);
  }
  absl::FPrintF(out_, "\r[%s] %u/%u steps  %.2f images/s  ETA %s\033[K", bar, steps_done_,
                total_steps_, rate, eta);
  std::fflush(out_);
  drawn_ = true;
  drawn_at_ = now;
}

}  // namespace gd::client
