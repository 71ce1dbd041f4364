#include "eval/evaluator_trainer.h"

#include <filesystem>
#include <iostream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/diffusion/sampling.h"
#include "core/io/dataset.h"
#include "core/io/image.h"
#include "core/nn/checkpoint.h"
#include "core/nn/unet.h"  // CountParameters
#include "core/train/optim.h"
#include "core/train/train_common.h"
#include "eval/evaluator.h"
#include "core/status_macros.h"

namespace gd::eval {
namespace {

namespace fs = std::filesystem;

struct Datasets {
  ImageDataset train;
  ImageDataset held_out;
};

absl::Status CheckFits(const ImageDataset& data, const EvaluatorConfig& c,
                       const std::string& what) {
  const auto sizes = data.images.sizes();
  if (!data.has_labels || sizes[1] != c.in_channels || sizes[2] != c.image_size ||
      sizes[3] != c.image_size || data.num_classes > c.num_classes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: %s; the evaluator is built for labelled %dx%dx%d images of %d classes "
        "(--in_channels, --image_size, --num_classes)",
        what, data.description, c.in_channels, c.image_size, c.image_size, c.num_classes));
  }
  return absl::OkStatus();
}

absl::StatusOr<Datasets> LoadData(const TrainOptions& o, const EvaluatorConfig& config) {
  ASSIGN_OR_RETURN(ImageDataset train, LoadDataset(o.data, "train"));
  RETURN_IF_ERROR(CheckFits(train, config, "--data " + o.data));
  const std::string val_path = o.val_data.empty() ? o.data : o.val_data;
  if (o.val_data.empty() && !fs::is_directory(o.data)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--data ", o.data, " has no test split: give the held-out set with --val_data"));
  }
  ASSIGN_OR_RETURN(ImageDataset held_out, LoadDataset(val_path, "test"));
  RETURN_IF_ERROR(CheckFits(held_out, config, "held-out data " + val_path));
  return Datasets{std::move(train), std::move(held_out)};
}

// Top-1 hits (float32 [N], 1 or 0) of float images [N x C x H x W] in [-1, 1].
torch::Tensor Hits(EvaluatorNet& net, const torch::Tensor& images, const torch::Tensor& labels) {
  return (net->forward(images).logits.argmax(-1) == labels).to(torch::kFloat32);
}

// Top-1 accuracy over every image of `data`, in inference mode.
double FullAccuracy(EvaluatorNet& net, const ImageDataset& data) {
  torch::NoGradGuard no_grad;
  net->eval();
  double hits = 0;
  const int64_t n = data.images.size(0);
  for (int64_t i = 0; i < n; i += 500) {
    const int64_t count = std::min<int64_t>(500, n - i);
    const torch::Tensor images =
        Uint8ToSamples(data.images.narrow(0, i, count).permute({0, 2, 3, 1}));
    hits += Hits(net, images, data.labels.narrow(0, i, count)).sum().item<double>();
  }
  net->train();
  return hits / static_cast<double>(n);
}

// Copies the final weights to <out>/evaluator.safetensors and describes them in evaluator.json.
absl::Status Export(const TrainOptions& o, const EvaluatorConfig& config,
                    const std::string& weights, const Datasets& data, double accuracy) {
  const fs::path out(o.out);
  std::error_code ec;
  fs::copy_file(weights, out / "evaluator.safetensors", fs::copy_options::overwrite_existing, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot copy ", weights, " to ",
                                            (out / "evaluator.safetensors").string(), ": ",
                                            ec.message()));
  }
  EvaluatorSpec spec;
  fs::path named = fs::absolute(out).lexically_normal();
  if (named.filename().empty()) named = named.parent_path();
  spec.name = named.filename().string();  // the run's folder: "fashion-mnist-evaluator"
  spec.flags = ToFlagString(config);
  spec.weights_path = (out / "evaluator.safetensors").string();
  spec.test_accuracy = accuracy;
  spec.test_data = data.held_out.description;
  spec.class_names = data.train.class_names;
  return WriteEvaluatorSpec((out / "evaluator.json").string(), spec);
}

}  // namespace

absl::StatusOr<TrainSummary> TrainEvaluator(const ReferenceFlags& flags, const TrainOptions& o) {
  try {
    torch::set_num_threads(static_cast<int>(o.threads));
    ASSIGN_OR_RETURN(EvaluatorConfig config, EvaluatorConfigFromFlags(flags));
    ASSIGN_OR_RETURN(Datasets data, LoadData(o, config));
    torch::manual_seed(o.seed);
    ASSIGN_OR_RETURN(EvaluatorNet net, CreateEvaluatorNet(config));
    StateDict params;
    for (const auto& item : net->named_parameters()) params.emplace_back(item.key(), item.value());
    AdamW optimizer(params, {o.lr, 0.9, 0.999, 1e-8, o.weight_decay});

    int64_t step = 0;
    ASSIGN_OR_RETURN(std::string resume, train::ResolveResume(o.resume_checkpoint, o.out));
    if (!resume.empty()) {
      ASSIGN_OR_RETURN(step, train::LoadModelAndOptimizer(resume, *net, optimizer, "evaluator"));
      std::cerr << "[evaluator] resumed from " << resume << " at step " << step << std::endl;
    }
    const int64_t end = o.max_steps > 0 ? std::min(o.iterations, o.max_steps) : o.iterations;
    std::error_code ec;
    fs::create_directories(o.out, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create --out ", o.out));
    train::MetricsLog log((fs::path(o.out) / "metrics.jsonl").string(), "evaluator",
                          /*num_timesteps=*/1, end, step);
    std::cerr << "[evaluator] " << CountParameters(*net) << " parameters, "
              << data.train.description << ", held out: " << data.held_out.description
              << ", flags: " << ToFlagString(config) << std::endl;

    auto save = [&](int64_t at) -> absl::StatusOr<std::string> {
      const std::map<std::string, std::string> meta = {
          {"step", std::to_string(at)}, {"kind", "evaluator"}, {"flags", ToFlagString(config)}};
      return train::SaveModelAndOptimizer(o.out, at, *net, optimizer, meta, o.keep_checkpoints);
    };
    auto evaluate = [&](int64_t at) {
      torch::NoGradGuard no_grad;
      net->eval();
      torch::Generator gen = MakeGenerator(train::StepSeed(o.seed, at, 2));
      const Batch b = SampleBatch(data.held_out, o.eval_samples > 0 ? o.eval_samples : o.batch_size,
                                  gen, /*random_flip=*/false);
      log.Add("eval_acc@1", Hits(net, b.images, b.labels).mean().item<double>());
      net->train();
    };
    const int64_t micro = o.microbatch > 0 ? std::min(o.microbatch, o.batch_size) : o.batch_size;
    auto accumulate = [&](int64_t at) {
      torch::Generator gen = MakeGenerator(train::StepSeed(o.seed, at, 0));
      torch::manual_seed(train::StepSeed(o.seed, at, 1));  // dropout
      const Batch b = SampleBatch(data.train, o.batch_size, gen, o.random_flip);
      if (o.anneal_lr) optimizer.set_lr(o.lr * (1 - static_cast<double>(at) / o.iterations));
      for (int64_t i = 0; i < o.batch_size; i += micro) {
        const int64_t n = std::min(micro, o.batch_size - i);
        const torch::Tensor labels = b.labels.narrow(0, i, n);
        const torch::Tensor logits = net->forward(b.images.narrow(0, i, n)).logits;
        const torch::Tensor loss = torch::cross_entropy_loss(logits, labels);
        log.Add("loss", loss.item<double>());
        log.Add("acc@1", (logits.argmax(-1) == labels).to(torch::kFloat32).mean().item<double>());
        (loss * (static_cast<double>(n) / static_cast<double>(o.batch_size))).backward();
      }
    };
    net->train();
    std::vector<torch::Tensor> plain;
    for (const auto& [name, p] : params) plain.push_back(p);
    ASSIGN_OR_RETURN(TrainSummary summary,
                     train::RunTrainingLoop(
                         step, end, o, optimizer, plain, log, accumulate,
                         [&](int64_t at) {
                           if (o.eval_interval > 0 && at % o.eval_interval == 0) evaluate(at);
                         },
                         save));
    const double accuracy = FullAccuracy(net, data.held_out);
    std::cerr << absl::StrFormat("[evaluator] step %d: top-1 accuracy %.4f on %s\n",
                                 summary.end_step, accuracy, data.held_out.description);
    RETURN_IF_ERROR(Export(o, config, summary.last_checkpoint, data, accuracy));
    return summary;
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("evaluator training failed: ", e.what_without_backtrace()));
  }
}

}  // namespace gd::eval
