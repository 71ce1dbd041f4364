// DPM-Solver++ multistep (Lu et al. 2022) in the engine. A run's whole schedule is fixed at
// Start: its time grid, the networks' input times, and for every step the coefficients of
// x_next = a x + c0 m_0 + c1 m_1 + c2 m_2 over the newest data predictions. What the run keeps
// between steps is the history m_1, m_2 (its previous corrected data predictions); guidance is the
// reference model_wrapper's eps - s * sigma_t * grad log p(y | x_t).
#include <deque>

#include "absl/strings/str_cat.h"
#include "core/diffusion/schedule.h"
#include "core/engine/sampler.h"
#include "core/engine/solver_order.h"
#include "core/status_macros.h"

namespace gd {
namespace {

// Columns of the per-row table: the data prediction at s, then the update's coefficients.
enum Column : int64_t { kAlpha, kSigma, kA, kC0, kC1, kC2, kColumns };

class DpmSolverRun : public SamplerRun {
 public:
  DpmSolverRun(const DpmSchedule& schedule, int64_t steps, int64_t order, SkipType skip,
               double model_scale, double network_scale) {
    const std::vector<double> times = schedule.TimeSteps(skip, steps);
    for (int64_t k = 0; k < steps; ++k) {
      const double s = times[k];
      model_t_.push_back(schedule.NetworkTime(s, model_scale));
      network_t_.push_back(schedule.NetworkTime(s, network_scale));
      const int64_t step_order = MultistepOrder(order, k + 1, steps);
      std::vector<double> history;  // times of m_0, m_1, ... (newest first)
      for (int64_t j = 0; j < step_order; ++j) history.push_back(times[k - j]);
      const MultistepCoefficients m = MultistepUpdate(schedule, step_order, history, times[k + 1]);
      columns_.push_back({static_cast<float>(schedule.Alpha(s)), static_cast<float>(schedule.Sigma(s)),
                          static_cast<float>(m.a), static_cast<float>(m.c[0]),
                          static_cast<float>(m.c[1]), static_cast<float>(m.c[2])});
    }
    order_ = order;
  }

  int64_t total_steps() const override { return static_cast<int64_t>(columns_.size()); }
  double network_timestep(int64_t step) const override { return network_t_[step]; }
  double model_timestep(int64_t step) const override { return model_t_[step]; }
  bool uses_noise() const override { return false; }

  const std::array<float, kColumns>& columns(int64_t step) const { return columns_[step]; }
  // m_j, j >= 1: the data prediction of j steps ago (empty before that step existed).
  torch::Tensor history(int64_t j) const {
    return j - 1 < static_cast<int64_t>(history_.size()) ? history_[j - 1] : torch::Tensor();
  }
  void Remember(torch::Tensor x0) {
    history_.push_front(std::move(x0));
    while (static_cast<int64_t>(history_.size()) > order_ - 1) history_.pop_back();
  }

 private:
  std::vector<std::array<float, kColumns>> columns_;
  std::vector<double> model_t_, network_t_;
  int64_t order_ = kDefaultSolverOrder;
  std::deque<torch::Tensor> history_;  // newest first, at most order - 1
};

class DpmSolverSampler : public Sampler {
 public:
  DpmSolverSampler(DpmSchedule schedule, const DiffusionConfig& config)
      : schedule_(std::move(schedule)), config_(config) {}

  SamplerKind kind() const override { return SamplerKind::kDpmSolverPP; }

  absl::StatusOr<std::unique_ptr<SamplerRun>> Start(const SampleJob& job,
                                                    int64_t max_steps) const override {
    RETURN_IF_ERROR(Check(job, max_steps));
    const int64_t order = EffectiveSolverOrder(job.solver_order);
    const double t_max = static_cast<double>(config_.diffusion_steps);
    // The reference calls the networks at (t - 1/N) * 1000, for models of T = 1000 steps; on
    // the model's own scale that is (t - 1/N) * T, and * 1000 when it rescales timesteps.
    const double network_scale = config_.rescale_timesteps ? 1000.0 : t_max;
    return std::make_unique<DpmSolverRun>(schedule_, job.steps, order,
                                          job.skip_type.value_or(SkipType::kLogSnr), t_max,
                                          network_scale);
  }

  SamplerStep Step(const SamplerRows& rows) const override {
    RowTable table(rows.rows(), kColumns);
    int64_t first = 0;
    for (size_t r = 0; r < rows.runs.size(); ++r) {
      table.Fill(first, rows.images[r], Run(rows, r).columns(rows.steps[r]).data());
      first += rows.images[r];
    }
    const torch::Tensor t = table.Upload(rows.x.device());
    const torch::Tensor alpha = RowColumn(t, kAlpha), sigma = RowColumn(t, kSigma);
    torch::Tensor eps = Eps(rows, alpha, sigma);
    if (rows.grad.defined()) eps = eps - sigma * rows.grad;  // zero on unguided rows
    const torch::Tensor x0 = rows.correct_x0.Apply(DataPrediction(rows.x, eps, alpha, sigma));
    torch::Tensor next = RowColumn(t, kA) * rows.x + RowColumn(t, kC0) * x0;
    for (int64_t j = 1; j <= 2; ++j) {
      torch::Tensor m = History(rows, x0, j);
      if (m.defined()) next = next + RowColumn(t, kC0 + j) * m;
    }
    first = 0;
    for (size_t r = 0; r < rows.runs.size(); ++r) {
      Run(rows, r).Remember(x0.narrow(0, first, rows.images[r]));
      first += rows.images[r];
    }
    return {next, x0};
  }

 private:
  static DpmSolverRun& Run(const SamplerRows& rows, size_t r) {
    return static_cast<DpmSolverRun&>(*rows.runs[r]);
  }

  absl::Status Check(const SampleJob& job, int64_t max_steps) const {
    if (job.eta != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("eta = ", job.eta, " applies to DDIM only; DPM-Solver++ is deterministic"));
    }
    if (!job.timestep_respacing.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "timestep_respacing \"", job.timestep_respacing.substr(0, 64), "\" applies to DDPM and "
          "DDIM; DPM-Solver++ takes steps (and skip_type)"));
    }
    if (job.solver_order < 0 || job.solver_order > kMaxSolverOrder) {
      return absl::InvalidArgumentError(absl::StrCat("solver_order = ", job.solver_order,
                                                     " is not 1, 2 or 3 (0 means ",
                                                     kDefaultSolverOrder, ")"));
    }
    const int64_t limit = max_steps > 0 ? max_steps : kMaxSteps;
    if (job.steps < 1 || job.steps > limit) {
      return absl::InvalidArgumentError(absl::StrCat(
          "steps = ", job.steps, " is outside [1, ", limit, "]: DPM-Solver++ needs its number of "
          "model calls (10-20 is typical)"));
    }
    const int64_t order = EffectiveSolverOrder(job.solver_order);
    if (job.steps < order) {
      return absl::InvalidArgumentError(absl::StrCat("steps = ", job.steps, " is below solver_order = ",
                                                     order, "; a multistep run needs steps >= order"));
    }
    return absl::OkStatus();
  }

  // The noise prediction: the UNet's first C channels (its learned variance is not used), or
  // derived from an x_0-predicting model.
  torch::Tensor Eps(const SamplerRows& rows, const torch::Tensor& alpha,
                    const torch::Tensor& sigma) const {
    const torch::Tensor out = rows.model_output.narrow(1, 0, rows.x.size(1));
    if (config_.mean_type() == ModelMeanType::kStartX) return (rows.x - alpha * out) / sigma;
    return out;
  }

  // The rows' m_j (j steps ago); rows whose run has none yet get x0, with a zero coefficient.
  // Undefined when no run has one.
  static torch::Tensor History(const SamplerRows& rows, const torch::Tensor& x0, int64_t j) {
    std::vector<torch::Tensor> parts;
    bool any = false;
    int64_t first = 0;
    for (size_t r = 0; r < rows.runs.size(); ++r) {
      torch::Tensor m = Run(rows, r).history(j);
      any |= m.defined();
      parts.push_back(m.defined() ? m : x0.narrow(0, first, rows.images[r]));
      first += rows.images[r];
    }
    return any ? torch::cat(parts) : torch::Tensor();
  }

  // Without a server limit, a bound that keeps a request from holding a slot for days.
  static constexpr int64_t kMaxSteps = 1000;

  DpmSchedule schedule_;
  DiffusionConfig config_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Sampler>> MakeDpmSolverSampler(const ModelBundle& bundle) {
  const DiffusionConfig& config = bundle.diffusion;
  if (config.mean_type() != ModelMeanType::kEpsilon && config.mean_type() != ModelMeanType::kStartX) {
    return absl::FailedPreconditionError("DPM-Solver++ needs a model that predicts eps or x_0");
  }
  ASSIGN_OR_RETURN(auto betas, NamedBetaSchedule(config.noise_schedule, config.diffusion_steps));
  ASSIGN_OR_RETURN(auto schedule, DpmSchedule::FromBetas(betas));
  return std::make_unique<DpmSolverSampler>(std::move(schedule), config);
}

}  // namespace gd
