// Request validation: arbitrary bytes decoded as a SampleRequest (as gRPC decodes a caller's
// message), then the server's checks in order: gd::server::JobFromRequest (wire fields) and
// Engine::Validate (against the bundled model, with gd-server's default limits). Beyond not
// crashing, every refusal is a caller's error (never INTERNAL or UNKNOWN) and its message stays
// short whatever the input's strings are: nothing a caller sends is echoed unbounded.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "core/engine/engine.h"
#include "core/nn/model_bundle.h"
#include "fuzz/fuzzing.h"
#include "server/codec.h"

namespace {

// What the server may answer a caller's bad request with.
bool IsCallersError(absl::StatusCode code) {
  return code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kNotFound ||
         code == absl::StatusCode::kOutOfRange || code == absl::StatusCode::kResourceExhausted ||
         code == absl::StatusCode::kFailedPrecondition;
}

void CheckRefusal(const absl::Status& status, const char* stage) {
  GD_FUZZ_CHECK(IsCallersError(status.code()), std::string(stage) + ": " + status.ToString());
  // Quoted caller strings are cut to 64 bytes and a message names a few of them at most.
  GD_FUZZ_CHECK(status.message().size() <= gd::server::kMaxStatusMessageBytes,
                std::string(stage) + " echoed " + std::to_string(status.message().size()) +
                    " bytes: " + std::string(status.message().substr(0, 200)));
}

gd::Engine& BundledEngine() {
  static std::shared_ptr<gd::Engine> engine = [] {
    auto spec = gd::ReadModelDir(GD_SOURCE_DIR "/models/fashion-mnist");
    GD_FUZZ_CHECK(spec.ok(), spec.status().ToString());
    auto bundle = gd::LoadModelBundle(*spec, torch::kCPU, gd::Precision::kFloat32);
    GD_FUZZ_CHECK(bundle.ok(), bundle.status().ToString());
    gd::EngineOptions options;  // gd-server's defaults (docs/flags.md)
    options.max_steps = gd::server::kDefaultMaxSteps;
    options.max_classifier_scale = gd::server::kDefaultMaxClassifierScale;
    auto engine = gd::Engine::Create(*bundle, options);
    GD_FUZZ_CHECK(engine.ok(), engine.status().ToString());
    return std::shared_ptr<gd::Engine>(std::move(*engine));
  }();
  return *engine;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  gd::Engine& engine = BundledEngine();
  guided_diffusion::v1::SampleRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;  // gRPC refuses these
  absl::StatusOr<gd::SampleJob> job = gd::server::JobFromRequest(request);
  if (!job.ok()) {
    CheckRefusal(job.status(), "JobFromRequest");
    return 0;
  }
  const absl::Status valid = engine.Validate(*job);
  if (!valid.ok()) {
    CheckRefusal(valid, "Engine::Validate");
    return 0;
  }
  GD_FUZZ_CHECK(job->num_images() >= 1 && job->num_images() <= engine.max_images_per_request(),
                "accepted " + std::to_string(job->num_images()) + " images");
  GD_FUZZ_CHECK(job->classifier_scale >= 0 &&
                    job->classifier_scale <= gd::server::kDefaultMaxClassifierScale,
                "accepted classifier_scale " + std::to_string(job->classifier_scale));
  return 0;
}
