// DDPM ancestral sampling (Ho et al. 2020) on a respaced process, guided by Algorithm 1 of
// Dhariwal & Nichol 2021: the mean moves by variance * gradient.
#include "absl/strings/str_cat.h"
#include "core/engine/respaced_run.h"
#include "core/status_macros.h"

namespace gd {
namespace {

class DdpmSampler : public Sampler {
 public:
  explicit DdpmSampler(const DiffusionConfig& config) : processes_(config) {}

  SamplerKind kind() const override { return SamplerKind::kDdpm; }

  absl::StatusOr<std::unique_ptr<SamplerRun>> Start(const SampleJob& job,
                                                    int64_t max_steps) const override {
    if (job.eta != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("eta = ", job.eta, " applies to DDIM only; DDPM needs eta 0"));
    }
    ASSIGN_OR_RETURN(auto process, StartRespaced(processes_, job, max_steps));
    return std::make_unique<RespacedRun>(process, /*eta=*/0.0);
  }

  SamplerStep Step(const SamplerRows& rows) const override {
    const StepCoefficients c{GatherCoefficients(rows, /*extra=*/0, nullptr)};
    const MeanVar pmv = RowsMeanVariance(rows, c, processes_.config());
    // Unguided rows have a zero gradient, so their mean is unchanged.
    const torch::Tensor mean = rows.grad.defined() ? ConditionMean(pmv, rows.grad) : pmv.mean;
    return {DdpmStep(c, mean, pmv.log_variance, rows.noise), pmv.pred_xstart};
  }

 private:
  ProcessCache processes_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Sampler>> MakeDdpmSampler(const ModelBundle& bundle) {
  return std::make_unique<DdpmSampler>(bundle.diffusion);
}

}  // namespace gd
