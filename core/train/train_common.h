// Shared machinery of the two trainers: per-step seeds, checkpoint file names and discovery,
// and the metrics log (means per log interval, split into quarters of the timestep range as the
// reference's log_loss_dict does, written as JSON lines and a progress line).
#pragma once

#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/nn/checkpoint.h"
#include "core/train/optim.h"
#include "core/train/trainer.h"

namespace gd::train {

// The seed of stream `stream` (data, dropout, evaluation) at step `step` of a run.
uint64_t StepSeed(uint64_t seed, int64_t step, uint64_t stream);

// "<out>/<prefix>_NNNNNN.safetensors"
std::string CheckpointPath(const std::string& out, const std::string& prefix, int64_t step);
// The step encoded in a checkpoint file name ("model_001200.safetensors" -> 1200).
std::optional<int64_t> StepFromPath(const std::string& path);
// The newest model_NNNNNN.safetensors in `out`, if any.
std::optional<std::string> LatestCheckpoint(const std::string& out);
// Resolves --resume_checkpoint ("", "latest" or a path) to a model file path or "".
absl::StatusOr<std::string> ResolveResume(const std::string& resume, const std::string& out);
// Deletes all but the newest `keep` checkpoints (every prefix of a step together).
void PruneCheckpoints(const std::string& out, int64_t keep);

// Writes a state dict with metadata, creating the folder.
absl::Status SaveState(const std::string& path, const StateDict& state,
                       const std::map<std::string, std::string>& metadata);

// The classifiers' checkpoints (noisy classifier, gd-eval's evaluator): model_NNNNNN and
// opt_NNNNNN.safetensors in `out`, then all but the newest `keep` pruned. Returns the model path.
absl::StatusOr<std::string> SaveModelAndOptimizer(
    const std::string& out, int64_t step, const torch::nn::Module& model, const AdamW& optimizer,
    const std::map<std::string, std::string>& metadata, int64_t keep);
// The optimizer state saved beside `model_path` (opt_NNNNNN.safetensors of `step`, the step its
// name holds), or an empty state when there is none: like the reference's TrainLoop, a run may
// resume from bare weights (an exported model) and start fresh AdamW moments, which is said on
// stderr.
absl::StatusOr<StateDict> ReadOptimizerStateIfPresent(const std::string& model_path, int64_t step,
                                                      const std::string& what);
// Loads what SaveModelAndOptimizer wrote at `model_path` (and the opt_ file beside it, if any)
// into `model` and `optimizer`; returns the step. `what` names the model in errors.
absl::StatusOr<int64_t> LoadModelAndOptimizer(const std::string& model_path,
                                              torch::nn::Module& model, AdamW& optimizer,
                                              const std::string& what);

class MetricsLog {
 public:
  MetricsLog(const std::string& path, std::string tag, int64_t num_timesteps, int64_t total_steps,
             int64_t start_step);
  // Adds per-example values of `key` at timesteps t (also to key_q0..key_q3).
  void AddPerTimestep(const std::string& key, const torch::Tensor& values, const torch::Tensor& t);
  void Add(const std::string& key, double value);
  // Means since the last flush, with step, samples, steps/s and ETA; one JSON line and one
  // progress line (stderr). Returns the mean of "loss" (or NaN).
  double Flush(int64_t step, int64_t samples);

 private:
  std::ofstream file_;
  std::string tag_;
  int64_t num_timesteps_;
  int64_t total_steps_;
  int64_t last_step_;
  std::chrono::steady_clock::time_point last_time_;
  std::map<std::string, std::pair<double, int64_t>> sums_;
};

// The loop both trainers share. For every step until `end` (0: no end): `accumulate` computes
// the step's gradients (zeroed before it); then the gradient norm and learning rate are logged,
// the optimizer steps, `after_step` runs (EMA, evaluation) with the new step count, the log is
// flushed every log_interval steps and `save` runs every save_interval steps and at the end.
// `save` returns the path of what it wrote (the summary's last checkpoint).
absl::StatusOr<TrainSummary> RunTrainingLoop(
    int64_t start_step, int64_t end, const TrainOptions& options, AdamW& optimizer,
    const std::vector<torch::Tensor>& params, MetricsLog& log,
    const std::function<void(int64_t step)>& accumulate,
    const std::function<void(int64_t step)>& after_step,
    const std::function<absl::StatusOr<std::string>(int64_t step)>& save);

}  // namespace gd::train
