// gd-train's flags and their reading into TrainOptions.
#include <algorithm>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/train/trainer.h"
#include "core/status_macros.h"

namespace gd {

std::vector<FlagSpec> TrainFlagSpecs(TrainKind kind) {
  using T = FlagSpec::Type;
  const bool diffusion = kind == TrainKind::kDiffusion;
  const bool evaluator = kind == TrainKind::kEvaluator;
  // A default that differs by kind: diffusion, classifier, evaluator.
  auto by_kind = [kind](const char* diffusion, const char* classifier, const char* evaluator) {
    if (kind == TrainKind::kDiffusion) return diffusion;
    return kind == TrainKind::kClassifier ? classifier : evaluator;
  };
  std::vector<FlagSpec> specs = {
      {"data", T::kString, "", "training data: IDX directory, PNG folder or .npz"},
      {"out", T::kString, "", "output folder for checkpoints and metrics"},
      {"seed", T::kInt, "0", "seed of every random draw (data, timesteps, noise, dropout)"},
      {"max_steps", T::kInt, "0", "stop once this many steps are done in total (0: schedule end)"},
      {"lr", T::kFloat, by_kind("1e-4", "3e-4", "1e-3"), "AdamW learning rate"},
      {"weight_decay", T::kFloat, "0.0", "AdamW decoupled weight decay"},
      {"batch_size", T::kInt, by_kind("1", "4", "128"), "images per step"},
      {"microbatch", T::kInt, "-1", "images per forward/backward (-1: the whole batch)"},
      {"schedule_sampler", T::kString, "uniform", "timestep sampler: uniform, loss-second-moment"},
      {"log_interval", T::kInt, "10", "steps between metric lines"},
      {"save_interval", T::kInt, "10000", "steps between checkpoints"},
      {"resume_checkpoint", T::kString, "",
       "model_NNNNNN.safetensors to resume from, or \"latest\" (newest in --out); without an "
       "opt_ file beside it (an exported model), fresh optimizer moments"},
      {"keep_checkpoints", T::kInt, "0", "keep only the newest N checkpoints (0: all)"},
      {"random_flip", T::kBool, "true", "mirror training images left-right at random"},
      {"threads", T::kInt, "0", "intra-op CPU threads (0: all cores)"},
  };
  if (diffusion) {
    specs.push_back({"ema_rate", T::kString, "0.9999", "comma-separated EMA rates"});
    specs.push_back({"lr_anneal_steps", T::kInt, "0", "anneal lr to 0 over N steps, then stop"});
  } else {
    // The classifiers: the noisy one of classifier_train.py, and gd-eval's clean evaluator.
    specs.push_back({"val_data", T::kString, "", "held-out data (\"\": test split of --data)"});
    specs.push_back({"iterations", T::kInt, evaluator ? "6000" : "150000", "total training steps"});
    specs.push_back({"anneal_lr", T::kBool, evaluator ? "true" : "false",
                     "anneal lr linearly to 0 over iterations"});
    if (!evaluator) {
      specs.push_back({"noised", T::kBool, "true", "train on q_sample-noised images"});
    }
    specs.push_back(
        {"eval_interval", T::kInt, evaluator ? "500" : "5", "steps between held-out evaluations"});
    specs.push_back({"eval_samples", T::kInt, evaluator ? "2000" : "0",
                     "held-out images per evaluation (0: batch)"});
  }
  return specs;
}

absl::StatusOr<TrainOptions> TrainOptionsFromFlags(TrainKind kind, const ReferenceFlags& flags) {
  TrainOptions o;
  o.kind = kind;
  o.data = flags.Get("data");
  o.out = flags.Get("out");
  o.seed = static_cast<uint64_t>(flags.GetInt("seed"));
  o.max_steps = flags.GetInt("max_steps");
  o.lr = flags.GetFloat("lr");
  o.weight_decay = flags.GetFloat("weight_decay");
  o.batch_size = flags.GetInt("batch_size");
  o.microbatch = flags.GetInt("microbatch");
  o.schedule_sampler = flags.Get("schedule_sampler");
  o.log_interval = flags.GetInt("log_interval");
  o.save_interval = flags.GetInt("save_interval");
  o.resume_checkpoint = flags.Get("resume_checkpoint");
  o.keep_checkpoints = flags.GetInt("keep_checkpoints");
  o.random_flip = flags.GetBool("random_flip");
  o.threads = flags.GetInt("threads");
  if (kind == TrainKind::kDiffusion) {
    for (absl::string_view part : absl::StrSplit(flags.Get("ema_rate"), ',', absl::SkipEmpty())) {
      double rate = 0;
      if (!absl::SimpleAtod(part, &rate) || !(rate >= 0 && rate < 1)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--ema_rate \"", flags.Get("ema_rate"), "\": \"", part, "\" is not a rate in [0, 1)"));
      }
      o.ema_rates.push_back(rate);
    }
    o.lr_anneal_steps = flags.GetInt("lr_anneal_steps");
  } else {
    o.val_data = flags.Get("val_data");
    o.iterations = flags.GetInt("iterations");
    o.anneal_lr = flags.GetBool("anneal_lr");
    o.noised = kind == TrainKind::kClassifier && flags.GetBool("noised");
    o.eval_interval = flags.GetInt("eval_interval");
    o.eval_samples = flags.GetInt("eval_samples");
  }
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v < 1) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " = ", v, " must be at least 1"));
    }
    return absl::OkStatus();
  };
  for (auto [name, v] : std::vector<std::pair<const char*, int64_t>>{
           {"batch_size", o.batch_size},
           {"log_interval", o.log_interval},
           {"save_interval", o.save_interval}}) {
    RETURN_IF_ERROR(positive(name, v));
  }
  if (o.microbatch == 0 || o.microbatch < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--microbatch = ", o.microbatch, " must be -1 or at least 1"));
  }
  if (o.data.empty()) return absl::InvalidArgumentError("--data is required");
  if (o.out.empty()) return absl::InvalidArgumentError("--out is required");
  if (!(o.lr > 0)) return absl::InvalidArgumentError(absl::StrCat("--lr = ", o.lr, " must be > 0"));
  if (o.max_steps < 0 || o.lr_anneal_steps < 0 || o.threads < 0) {
    return absl::InvalidArgumentError("--max_steps, --lr_anneal_steps and --threads must be >= 0");
  }
  if (o.threads == 0) o.threads = std::max(1u, std::thread::hardware_concurrency());
  return o;
}

}  // namespace gd
