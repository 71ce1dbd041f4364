// The final images of one request or of a whole run, in image order, as the client keeps them:
// uint8 pixels in the reference's .npz layout and/or the float32 samples, with one label per
// image. Built from SampleResponses, concatenated, and read from and written to .npz files
// (arr_0 uint8 [N, H, W, C], arr_1 int64 labels [N], the reference's sample dump, plus a
// `samples` member for float32 samples where asked). Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/formats/formats.h"
#include "guided_diffusion/v1/sampler.pb.h"

namespace gd::client {

struct SampleSet {
  std::vector<int64_t> labels;            // one per image; 0 for unlabelled images
  std::optional<formats::Array> images;   // uint8 [N, H, W, C]
  std::optional<formats::Array> samples;  // float32 [N, C, H, W] in [-1, 1]

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
};

// What a response's images are to be kept as.
struct KeptOutputs {
  bool images = true;    // uint8 [N, H, W, C]
  bool samples = false;  // float32 [N, C, H, W]
};

// The OutputOptions that bring `kept` over the wire with the fewest bytes: float32 samples when
// they are kept (the uint8 images are then derived here by the server's formula), else uint8
// images when they are kept; never PNGs.
guided_diffusion::v1::OutputOptions WireOutputs(const KeptOutputs& kept);

// The images of `response` as `kept` asks, checked: one label per image, images uint8
// [N, H, W, C] and samples float32 [N, C, H, W] of the same N. Float16 samples are widened; images
// missing from the response are derived from the samples (SampleToUint8). INTERNAL when the
// response lacks what was asked for or is inconsistent.
absl::StatusOr<SampleSet> SampleSetFromResponse(
    const guided_diffusion::v1::SampleResponse& response, const KeptOutputs& kept);

// `parts` one after the other. They must agree on which members they have and on the image
// shape; InvalidArgument otherwise.
absl::StatusOr<SampleSet> ConcatSampleSets(const std::vector<const SampleSet*>& parts);

// Writes arr_0 (the images; required), arr_1 (the labels as int64) and, when `with_samples` and
// the set has them, `samples`, as one .npz that numpy.load reads. The file appears complete or
// not at all: it is written as PATH.tmp and renamed.
absl::Status WriteSampleSetNpz(const std::string& path, const SampleSet& set, bool with_samples);

// Reads what WriteSampleSetNpz wrote (or any .npz with arr_0 uint8 [N, H, W, C] and arr_1 integer
// labels [N]; `samples` float32 [N, C, H, W] optional). Errors name the path and the member.
absl::StatusOr<SampleSet> ReadSampleSetNpz(const std::string& path);

}  // namespace gd::client
