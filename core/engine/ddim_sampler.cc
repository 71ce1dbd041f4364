// DDIM (Song et al. 2020) with eta on a respaced process, guided by Algorithm 2 of Dhariwal &
// Nichol 2021: the score moves, eps' = eps - sqrt(1 - alpha_bar) * gradient, and x_0 is rederived.
#include "absl/strings/str_cat.h"
#include "core/engine/respaced_run.h"
#include "core/status_macros.h"

namespace gd {
namespace {

class DdimSampler : public Sampler {
 public:
  explicit DdimSampler(const DiffusionConfig& config) : processes_(config) {}

  SamplerKind kind() const override { return SamplerKind::kDdim; }

  absl::StatusOr<std::unique_ptr<SamplerRun>> Start(const SampleJob& job,
                                                    int64_t max_steps) const override {
    if (!std::isfinite(job.eta) || job.eta < 0 || job.eta > 1) {
      return absl::InvalidArgumentError(absl::StrCat("eta = ", job.eta, " is outside [0, 1]"));
    }
    ASSIGN_OR_RETURN(auto process, StartRespaced(processes_, job, max_steps));
    auto run = std::make_unique<RespacedRun>(process, job.eta);
    run->set_uses_noise(job.eta > 0);
    return run;
  }

  SamplerStep Step(const SamplerRows& rows) const override {
    const torch::Tensor table = GatherCoefficients(
        rows, /*extra=*/1, [](const RespacedRun& run, float* eta) { *eta = static_cast<float>(run.eta()); });
    const StepCoefficients c{table};
    const MeanVar pmv = RowsMeanVariance(rows, c, processes_.config());
    torch::Tensor x0 = pmv.pred_xstart;
    if (rows.grad.defined()) {
      // Unguided rows keep their prediction exactly (the rederivation would round it).
      x0 = torch::where(rows.guided, ConditionScore(c, pmv, rows.x, rows.grad).pred_xstart, x0);
    }
    const torch::Tensor eta = RowColumn(table, static_cast<int64_t>(Coef::kCount));
    const torch::Tensor noise =
        rows.noise.defined() ? rows.noise : torch::zeros({}, rows.x.options());
    return {DdimStep(c, rows.x, x0, eta, noise), x0};
  }

 private:
  ProcessCache processes_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Sampler>> MakeDdimSampler(const ModelBundle& bundle) {
  return std::make_unique<DdimSampler>(bundle.diffusion);
}

}  // namespace gd
