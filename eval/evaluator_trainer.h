// gd-train evaluator: trains gd-eval's evaluator network (eval/evaluator.h) as a plain classifier
// of CLEAN images (no diffusion noise), with gd-train's shared loop (core/train/train_common.h):
// AdamW, linear annealing, resumable checkpoints (model_NNNNNN / opt_NNNNNN.safetensors in
// --out), metrics.jsonl and a progress line with an ETA. At the end it scores the whole held-out
// set and writes <out>/evaluator.safetensors and <out>/evaluator.json (flags, weights, test
// accuracy): copy both beside a model to make them its default evaluator.
#pragma once

#include "absl/status/statusor.h"
#include "core/nn/config.h"
#include "core/train/trainer.h"

namespace gd::eval {

// `flags` holds --image_size, --in_channels, --num_classes and the --evaluator_* flags;
// `options` gd-train's flags of TrainKind::kEvaluator.
absl::StatusOr<TrainSummary> TrainEvaluator(const ReferenceFlags& flags,
                                            const TrainOptions& options);

}  // namespace gd::eval
