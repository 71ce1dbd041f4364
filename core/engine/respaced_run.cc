#include "core/engine/respaced_run.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace gd {

absl::StatusOr<std::shared_ptr<const GaussianDiffusion>> ProcessCache::Get(
    const std::string& requested) const {
  const std::string& respacing = requested.empty() ? config_.timestep_respacing : requested;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = processes_.find(respacing);
  if (it != processes_.end()) return it->second;
  auto created = GaussianDiffusion::Create(config_, respacing);
  if (!created.ok()) {
    return absl::Status(created.status().code(),
                        absl::StrCat("timestep_respacing: ", created.status().message()));
  }
  auto process = std::make_shared<const GaussianDiffusion>(std::move(*created));
  if (processes_.size() >= kMaxProcesses) processes_.erase(processes_.begin());
  processes_[respacing] = process;
  return process;
}

double RespacedRun::model_timestep(int64_t step) const {
  return static_cast<double>(process_->timestep_map()[static_cast<size_t>(index(step))]);
}

double RespacedRun::network_timestep(int64_t step) const {
  // respace.py's _WrappedModel: the original timestep, rescaled when the model was trained so.
  const double t = model_timestep(step);
  if (!process_->types().rescale_timesteps) return t;
  return t * 1000.0 / static_cast<double>(process_->original_num_steps());
}

absl::StatusOr<std::shared_ptr<const GaussianDiffusion>> StartRespaced(const ProcessCache& cache,
                                                                       const SampleJob& job,
                                                                       int64_t max_steps) {
  const char* name = ToString(job.sampler);
  if (job.steps != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "steps = ", job.steps, " applies to DPM-Solver++ only; ", name,
        " takes timestep_respacing (e.g. \"250\" or \"ddim25\")"));
  }
  if (job.solver_order != 0) {
    return absl::InvalidArgumentError(absl::StrCat("solver_order = ", job.solver_order,
                                                   " applies to DPM-Solver++ only, not ", name));
  }
  if (job.skip_type.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("skip_type = ", ToString(*job.skip_type),
                                                   " applies to DPM-Solver++ only, not ", name));
  }
  ASSIGN_OR_RETURN(auto process, cache.Get(job.timestep_respacing));
  const int64_t steps = (process)->num_timesteps();
  if (max_steps > 0 && steps > max_steps) {
    const std::string respacing =
        job.timestep_respacing.empty() ? "the model's own process" : absl::StrCat(
            "timestep_respacing \"", job.timestep_respacing, "\"");
    return absl::InvalidArgumentError(absl::StrCat(
        respacing, " runs ", steps, " steps; this server allows at most ", max_steps,
        " (give a shorter timestep_respacing, e.g. \"", max_steps, "\")"));
  }
  return process;
}

torch::Tensor GatherCoefficients(const SamplerRows& rows, int64_t extra,
                                 const std::function<void(const RespacedRun&, float*)>& fill_extra) {
  const int64_t kCoefs = static_cast<int64_t>(Coef::kCount);
  RowTable table(rows.rows(), kCoefs + extra);
  std::vector<float> line(static_cast<size_t>(kCoefs + extra));
  int64_t first = 0;
  for (size_t r = 0; r < rows.runs.size(); ++r) {
    const auto& run = static_cast<const RespacedRun&>(*rows.runs[r]);
    const float* coefficients =
        run.process().host_table().data_ptr<float>() + run.index(rows.steps[r]) * kCoefs;
    std::memcpy(line.data(), coefficients, sizeof(float) * static_cast<size_t>(kCoefs));
    if (fill_extra) fill_extra(run, line.data() + kCoefs);
    table.Fill(first, rows.images[r], line.data());
    first += rows.images[r];
  }
  return table.Upload(rows.x.device());
}

MeanVar RowsMeanVariance(const SamplerRows& rows, const StepCoefficients& c,
                         const DiffusionConfig& config) {
  MeanVarOptions options;
  // Uniform static clipping takes the reference's own path (a clamp after the prediction).
  options.clip_denoised = rows.correct_x0.is_clip();
  if (!rows.correct_x0.is_clip() && !rows.correct_x0.is_none()) {
    const X0Correction correct = rows.correct_x0;
    options.denoised_fn = [correct](const torch::Tensor& x0) { return correct.Apply(x0); };
  }
  return PMeanVarianceFromOutput(config.mean_type(), config.var_type(), c, rows.model_output,
                                 rows.x, options);
}

}  // namespace gd
