// gd-train: the reference's training procedures in C++ ("How to train" of image_train.py and
// classifier_train.py). A diffusion model is trained on the MSE of eps plus the vb term when
// sigma is learned, with AdamW, EMA copies and linear learning-rate annealing; a noisy classifier
// on q_sample-noised images with cross-entropy. Both resume exactly: weights, EMA, optimizer and
// schedule-sampler state are in the checkpoint, and every step's randomness is derived from
// (seed, step), so a resumed run draws what an uninterrupted one would have. gd-eval's evaluator
// (a classifier of clean images, eval/) shares these flags and the training loop.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/nn/config.h"

namespace gd {

enum class TrainKind { kDiffusion, kClassifier, kEvaluator };

// gd-train's own flags (beyond the model and diffusion flags of ReferenceFlags), with the
// defaults of image_train.py / classifier_train.py for that kind.
std::vector<FlagSpec> TrainFlagSpecs(TrainKind kind);

struct TrainOptions {
  TrainKind kind = TrainKind::kDiffusion;
  std::string data;      // see LoadDataset
  std::string val_data;  // classifier: held-out set ("" = the test split of data, if any)
  std::string out;       // checkpoints, metrics.jsonl, model.json
  uint64_t seed = 0;
  int64_t max_steps = 0;  // stop after this many steps in total (0: until the schedule ends)
  double lr = 1e-4;
  double weight_decay = 0.0;
  int64_t batch_size = 1;
  int64_t microbatch = -1;        // -1: whole batch
  std::vector<double> ema_rates;  // diffusion only
  int64_t lr_anneal_steps = 0;    // diffusion: anneal to 0 over this many steps, then stop
  int64_t iterations = 150000;    // classifier: total steps
  bool anneal_lr = false;         // classifier: anneal to 0 over `iterations`
  bool noised = true;             // classifier: train on q_sample-noised inputs (evaluator: never)
  std::string schedule_sampler = "uniform";
  int64_t log_interval = 10;
  int64_t save_interval = 10000;
  int64_t eval_interval = 5;     // classifier
  int64_t eval_samples = 0;      // classifier: held-out images per evaluation (0: batch_size)
  int64_t keep_checkpoints = 0;  // 0: keep all
  std::string resume_checkpoint;  // a model_NNNNNN.safetensors, "latest" (newest in --out) or ""
  bool random_flip = true;
  int64_t threads = 0;  // intra-op threads (0: all cores)
};

absl::StatusOr<TrainOptions> TrainOptionsFromFlags(TrainKind kind, const ReferenceFlags& flags);

struct TrainSummary {
  int64_t start_step = 0;
  int64_t end_step = 0;
  double seconds = 0;
  double last_loss = 0;
  std::string last_checkpoint;  // the model (diffusion: first EMA) weights written last
};

// `flags` holds the model/classifier and diffusion flags; `options` the rest.
absl::StatusOr<TrainSummary> TrainDiffusion(const ReferenceFlags& flags,
                                            const TrainOptions& options);
absl::StatusOr<TrainSummary> TrainClassifier(const ReferenceFlags& flags,
                                             const TrainOptions& options);

}  // namespace gd
