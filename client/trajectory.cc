#include "client/trajectory.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/gd_client.h"
#include "client/outputs.h"
#include "core/status_macros.h"

namespace gd::client {
namespace {

namespace v1 = ::guided_diffusion::v1;

const char* FieldName(StepField field) { return field == StepField::kXt ? "x_t" : "pred_xstart"; }

// Whether two images can share a grid.
bool SameSize(const formats::Image& a, const formats::Image& b) {
  return a.height == b.height && a.width == b.width && a.channels == b.channels;
}

}  // namespace

std::vector<uint32_t> StripTargets(uint32_t total_steps, uint32_t columns) {
  if (total_steps == 0 || columns == 0) return {};
  if (columns == 1) return {total_steps - 1};
  std::vector<uint32_t> targets;
  for (uint32_t j = 0; j < columns; ++j) {
    targets.push_back(static_cast<uint32_t>(
        std::llround(static_cast<double>(j) * (total_steps - 1) / (columns - 1))));
  }
  return targets;
}

absl::StatusOr<std::vector<formats::Image>> StepImages(const v1::StepEvent& step, StepField field) {
  const std::string what = absl::StrCat("step ", step.step(), " ", FieldName(field));
  const auto& pngs = field == StepField::kXt ? step.x_t_png() : step.pred_xstart_png();
  std::vector<formats::Image> images;
  if (!pngs.empty()) {
    for (int i = 0; i < pngs.size(); ++i) {
      ASSIGN_OR_RETURN(formats::Image image,
                       formats::DecodePng(pngs[i], absl::StrCat(what, " image ", i)));
      images.push_back(std::move(image));
    }
    return images;
  }
  // An empty tensor message (DTYPE_UNSPECIFIED) is no tensor: servers may send one with PNGs.
  const v1::Tensor& tensor = field == StepField::kXt ? step.x_t() : step.pred_xstart();
  if (tensor.dtype() == v1::DTYPE_UNSPECIFIED && tensor.data().empty()) return images;
  ASSIGN_OR_RETURN(auto samples, StepTensor(tensor, what));
  ASSIGN_OR_RETURN(auto pixels, SamplesToUint8(samples, what));
  return Uint8ToImages(pixels, what);
}

TrajectoryRecorder::TrajectoryRecorder(TrajectoryOptions options) : options_(std::move(options)) {}

absl::Status TrajectoryRecorder::OnEvent(const v1::SampleEvent& event) {
  if (event.has_accepted() && total_steps_ == 0) total_steps_ = event.accepted().total_steps();
  if (event.has_step()) return OnStep(event.step());
  return absl::OkStatus();
}

absl::Status TrajectoryRecorder::OnStep(const v1::StepEvent& step) {
  if (strip_.empty() && needs_pred_xstart()) {
    if (total_steps_ == 0) total_steps_ = step.total_steps();
    for (uint32_t target : StripTargets(total_steps_, options_.strip_columns)) {
      strip_.push_back({target, std::nullopt, {}});
    }
  }
  // Columns this step is nearer to than their current step (ties keep the earlier step).
  std::vector<StripColumn*> improved;
  for (StripColumn& column : strip_) {
    const auto distance = [&](uint32_t s) { return std::abs(int64_t{s} - column.target); };
    if (!column.step.has_value() || distance(step.step()) < distance(*column.step)) {
      improved.push_back(&column);
    }
  }
  if (!improved.empty()) {
    ASSIGN_OR_RETURN(const std::vector<formats::Image> images,
                     StepImages(step, StepField::kPredXstart));
    if (!images.empty()) {
      for (StripColumn* column : improved) {
        column->step = step.step();
        column->images = images;
      }
    }
  }
  if (needs_x_t()) {
    ASSIGN_OR_RETURN(auto images, StepImages(step, StepField::kXt));
    if (!images.empty()) return AddGifFrame(std::move(images));
  }
  return absl::OkStatus();
}

absl::Status TrajectoryRecorder::AddGifFrame(std::vector<formats::Image> images) {
  for (size_t i = 1; i < images.size(); ++i) {
    if (!SameSize(images[i], images[0])) {
      return absl::InternalError(absl::StrCat("the server sent x_t images of different sizes (",
                                              images[0].height, "x", images[0].width, " and ",
                                              images[i].height, "x", images[i].width, ")"));
    }
  }
  formats::Image frame = formats::MakeGrid(
      images, GridColumns(static_cast<int64_t>(images.size()), options_.gif_columns));
  if (absl::Status status = FlushGifFrame(std::max(2, (options_.gif_frame_ms + 5) / 10));
      !status.ok()) {
    return status;
  }
  if (!gif_.has_value()) gif_.emplace(frame.width, frame.height);
  pending_gif_frame_ = std::move(frame);
  return absl::OkStatus();
}

absl::Status TrajectoryRecorder::FlushGifFrame(int delay_cs) {
  if (!pending_gif_frame_.has_value()) return absl::OkStatus();
  absl::Status status = gif_->AddFrame(*pending_gif_frame_, delay_cs);
  pending_gif_frame_.reset();
  return status;
}

absl::Status TrajectoryRecorder::WriteStrip() {
  std::vector<const StripColumn*> columns;  // those that got images, without repeated steps
  for (const StripColumn& column : strip_) {
    if (column.step.has_value() && (columns.empty() || *columns.back()->step != *column.step)) {
      columns.push_back(&column);
    }
  }
  if (columns.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--strip ", options_.strip_path, ": the stream carried no pred_xstart"));
  }
  const size_t image_count = columns.front()->images.size();
  std::vector<formats::Image> tiles;  // row i = image i across the chosen steps
  tiles.reserve(image_count * columns.size());
  for (size_t i = 0; i < image_count; ++i) {
    for (const StripColumn* column : columns) {
      if (column->images.size() != image_count ||
          !SameSize(column->images[i], columns.front()->images[0])) {
        return absl::InternalError(absl::StrCat("--strip: the images of step ", *column->step,
                                                " differ in number or size from those of step ",
                                                *columns[0]->step));
      }
      tiles.push_back(column->images[i]);
    }
  }
  ASSIGN_OR_RETURN(const std::string png, formats::EncodePng(formats::MakeGrid(
                                              tiles, static_cast<int64_t>(columns.size()))));
  RETURN_IF_ERROR(formats::WriteFileBytes(options_.strip_path, png));
  std::vector<uint32_t> steps;
  steps.reserve(columns.size());
  for (const StripColumn* column : columns) steps.push_back(*column->step);
  absl::PrintF("wrote %s (pred_xstart at steps %s of %d)\n", options_.strip_path,
               absl::StrJoin(steps, ","), total_steps_);
  return absl::OkStatus();
}

absl::Status TrajectoryRecorder::Finish() {
  if (needs_pred_xstart()) {
    RETURN_IF_ERROR(WriteStrip());
  }
  if (needs_x_t()) {
    if (!gif_.has_value()) {
      return absl::FailedPreconditionError(
          absl::StrCat("--gif ", options_.gif_path, ": the stream carried no x_t"));
    }
    RETURN_IF_ERROR(FlushGifFrame(kGifFinalFrameCs));
    const int64_t frames = gif_->frame_count();
    ASSIGN_OR_RETURN(auto gif, gif_->Finish());
    if (absl::Status status = formats::WriteFileBytes(options_.gif_path, gif); !status.ok()) {
      return status;
    }
    absl::PrintF("wrote %s (%d frames of x_t)\n", options_.gif_path, frames);
  }
  return absl::OkStatus();
}

}  // namespace gd::client
