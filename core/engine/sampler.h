// The engine's samplers (DDPM, DDIM, DPM-Solver++) behind one small interface. A Sampler knows
// its math and nothing of queues or networks: Start() checks a job's sampler settings and makes
// the request's SamplerRun (its schedule, and whatever history a multistep method keeps), and
// Step() turns the networks' outputs for the batch rows that use this sampler into x_{t-1} and
// the corrected x_0 prediction. The engine groups the batch's rows by sampler, so each Step sees
// one contiguous range of rows, request after request, and does a fixed number of tensor
// operations however many rows and requests it holds (per-row constants travel to the device as
// one table).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/diffusion/x0_correction.h"
#include "core/engine/sample_job.h"
#include "core/nn/model_bundle.h"

namespace gd {

// One request's sampler state.
class SamplerRun {
 public:
  virtual ~SamplerRun() = default;
  // Model calls (denoising steps) of the whole run.
  virtual int64_t total_steps() const = 0;
  // What the UNet and the classifier are called with at `step` (0 = first): the model's
  // original-scale timestep (0..T-1; fractional for DPM-Solver++), rescaled to 0..1000 when the
  // model was trained with rescale_timesteps.
  virtual double network_timestep(int64_t step) const = 0;
  // The same on the model's 0..T-1 scale, for step events.
  virtual double model_timestep(int64_t step) const = 0;
  // Whether steps draw fresh noise (DDPM, DDIM with eta > 0).
  virtual bool uses_noise() const = 0;
};

// The rows of one sampler in one iteration, [n x ...] each, requests in row order.
struct SamplerRows {
  std::vector<SamplerRun*> runs;  // one per request
  std::vector<int64_t> images;    // rows of each request
  std::vector<int64_t> steps;     // each request's step (0 = first)
  torch::Tensor x;                // x_t [n x C x H x W]
  torch::Tensor model_output;     // the UNet's output [n x C' x H x W] (C' = 2C with learned sigma)
  // The scaled classifier gradient s * d/dx log p(y | x_t) [n x C x H x W], zero on unguided
  // rows; undefined when no row is guided.
  torch::Tensor grad;
  torch::Tensor guided;  // [n x 1 x 1 x 1] bool: rows with guidance (defined with grad)
  torch::Tensor noise;   // N(0, I) [n x C x H x W] when some run uses noise, else undefined
  X0Correction correct_x0;

  int64_t rows() const { return x.size(0); }
};

struct SamplerStep {
  torch::Tensor x_next;       // x after the step
  torch::Tensor pred_xstart;  // the corrected x_0 prediction the step used
};

class Sampler {
 public:
  virtual ~Sampler() = default;
  virtual SamplerKind kind() const = 0;
  // Checks the job's sampler fields (INVALID_ARGUMENT naming the field, value and allowed
  // values; max_steps: this server's limit, 0 = none) and makes its run.
  virtual absl::StatusOr<std::unique_ptr<SamplerRun>> Start(const SampleJob& job,
                                                            int64_t max_steps) const = 0;
  // The batched update of this sampler's rows; each run advances by one step.
  virtual SamplerStep Step(const SamplerRows& rows) const = 0;
};

// The samplers of one served model, on its device.
absl::StatusOr<std::unique_ptr<Sampler>> MakeDdpmSampler(const ModelBundle& bundle);
absl::StatusOr<std::unique_ptr<Sampler>> MakeDdimSampler(const ModelBundle& bundle);
absl::StatusOr<std::unique_ptr<Sampler>> MakeDpmSolverSampler(const ModelBundle& bundle);

// Per-row float columns built on the host and sent to the device in one copy: how samplers hand
// their per-request constants to the batched step.
class RowTable {
 public:
  RowTable(int64_t rows, int64_t columns);
  // Copies `values` (one per column) onto rows [first, first + count).
  void Fill(int64_t first, int64_t count, const float* values);
  // The table [rows x columns] on `device`.
  torch::Tensor Upload(const torch::Device& device) const;

 private:
  int64_t rows_, columns_;
  std::vector<float> host_;
};

// Column j of a row table as [rows x 1 x 1 x 1], to broadcast against images.
torch::Tensor RowColumn(const torch::Tensor& table, int64_t j);

}  // namespace gd
