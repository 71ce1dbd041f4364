// Wire <-> native: decodes SampleRequests into the engine's SampleJobs and encodes its results
// and step updates (tensors as little-endian float32/float16/uint8, images as PNG). The wire
// format stops here; the engine sees native structs only.
#pragma once

#include <string>

#include <grpcpp/grpcpp.h>
#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/engine/engine.h"
#include "guided_diffusion/v1/sampler.pb.h"

namespace gd::server {

namespace v1 = ::guided_diffusion::v1;

// Limits on the request's strings: longer ones are INVALID_ARGUMENT, never echoed whole.
inline constexpr size_t kMaxModelNameBytes = 256;
inline constexpr size_t kMaxRespacingBytes = 1024;
// Longest status message sent to a caller or written to the log; longer ones are cut.
inline constexpr size_t kMaxStatusMessageBytes = 1024;

// gd-server's --max_steps and --max_classifier_scale defaults (docs/flags.md), shared with the
// request fuzzer, which checks what a default server accepts.
inline constexpr int kDefaultMaxSteps = 250;
inline constexpr double kDefaultMaxClassifierScale = 100;

// absl and gRPC share the canonical status codes. Messages are cut to kMaxStatusMessageBytes.
grpc::Status ToGrpc(const absl::Status& status);
// `status` with its message cut to kMaxStatusMessageBytes.
absl::Status Bounded(const absl::Status& status);
// A caller's string for an error message: quoted, and cut to `max_bytes` with its length said.
std::string Quote(const std::string& value, size_t max_bytes = 64);

// A proto Tensor (float32/float16/uint8) as a CPU tensor; INVALID_ARGUMENT naming `field` when
// the dtype is missing or the byte count does not match the shape.
absl::StatusOr<torch::Tensor> TensorFromProto(const v1::Tensor& tensor, const std::string& field);
// A CPU tensor as a proto Tensor in `dtype` (FLOAT32, FLOAT16 or UINT8).
void TensorToProto(const torch::Tensor& tensor, v1::DType dtype, v1::Tensor* out);

// The request's wire-level fields decoded; the engine validates the rest (ranges, shapes).
absl::StatusOr<SampleJob> JobFromRequest(const v1::SampleRequest& request);

// Final images as the request's OutputOptions ask.
absl::StatusOr<v1::SampleResponse> ResponseFromResult(const JobResult& result,
                                                      const v1::OutputOptions& output);
// A step as the request's StreamOptions ask.
absl::StatusOr<v1::StepEvent> StepEventFromUpdate(const StepUpdate& update,
                                                  const v1::StreamOptions& stream,
                                                  int64_t images);

void DescribeModel(const Engine& engine, v1::ModelInfo* info);

const char* SamplerName(SamplerKind kind);

}  // namespace gd::server
