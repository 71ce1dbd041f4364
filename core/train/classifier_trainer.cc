// TrainClassifier: classifier_train.py of the reference, with held-out evaluation split by
// quarters of the timestep range.
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/diffusion/gaussian_diffusion.h"
#include "core/diffusion/sampling.h"
#include "core/diffusion/schedule_sampler.h"
#include "core/io/dataset.h"
#include "core/nn/checkpoint.h"
#include "core/nn/unet.h"
#include "core/train/optim.h"
#include "core/train/train_common.h"
#include "core/train/trainer.h"
#include "core/status_macros.h"

namespace gd {
namespace {

namespace fs = std::filesystem;

struct Noised {
  torch::Tensor x;
  torch::Tensor t;  // respaced = original indices (the classifier trains on the full process)
};

// x_t = q_sample(x_0, t) with t drawn by the schedule sampler, or x_0 at t = 0 when not noised.
Noised Noise(const GaussianDiffusion& diffusion, const ScheduleSampler& sampler,
             const torch::Tensor& x, bool noised, torch::Generator& gen) {
  if (!noised) return {x, torch::zeros({x.size(0)}, torch::kInt64)};
  const TimestepDraw draw = sampler.Sample(x.size(0), gen);
  const torch::Tensor noise = torch::randn(x.sizes(), gen);
  return {diffusion.QSample(x, draw.timesteps, noise), draw.timesteps};
}

torch::Tensor Top1(const torch::Tensor& logits, const torch::Tensor& labels) {
  return (logits.argmax(-1) == labels).to(torch::kFloat32);
}

}  // namespace

absl::StatusOr<TrainSummary> TrainClassifier(const ReferenceFlags& flags, const TrainOptions& o) {
  try {
    torch::set_num_threads(static_cast<int>(o.threads));
    if (flags.GetBool("classifier_use_fp16")) {
      return absl::InvalidArgumentError(
          "--classifier_use_fp16 training is not supported: gd-train trains in float32");
    }
    ASSIGN_OR_RETURN(auto config, flags.Classifier());
    ASSIGN_OR_RETURN(auto diffusion, GaussianDiffusion::Create(flags.Diffusion(), ""));
    ASSIGN_OR_RETURN(auto data, LoadDataset(o.data, "train"));
    if (!data.has_labels) {
      return absl::InvalidArgumentError(absl::StrCat("--data ", o.data, " has no labels"));
    }
    const auto sizes = data.images.sizes();
    if (sizes[1] != config.in_channels || sizes[2] != config.image_size ||
        sizes[3] != config.image_size || data.num_classes > config.out_channels) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--data %s holds %d classes of %dx%dx%d images; the classifier is built for %d classes "
          "of %dx%dx%d (--num_classes, --in_channels, --image_size)",
          o.data, data.num_classes, sizes[1], sizes[2], sizes[3], config.out_channels,
          config.in_channels, config.image_size, config.image_size));
    }
    std::optional<ImageDataset> val;
    if (!o.val_data.empty()) {
      ASSIGN_OR_RETURN(auto loaded, LoadDataset(o.val_data, "test"));
      val = std::move(loaded);
    } else if (auto test = LoadDataset(o.data, "test"); test.ok() && fs::is_directory(o.data)) {
      val = std::move(*test);
    }
    if (val && !val->has_labels) {
      return absl::InvalidArgumentError(absl::StrCat("--val_data ", o.val_data, " has no labels"));
    }
    ASSIGN_OR_RETURN(auto sampler,
                     CreateScheduleSampler(o.schedule_sampler, diffusion.num_timesteps()));

    torch::manual_seed(o.seed);
    ASSIGN_OR_RETURN(auto created, CreateEncoderUNet(config));
    EncoderUNetModel model = created;
    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (const auto& item : model->named_parameters()) params.emplace_back(item.key(), item.value());
    AdamW optimizer(params, {o.lr, 0.9, 0.999, 1e-8, o.weight_decay});

    int64_t step = 0;
    ASSIGN_OR_RETURN(auto resume, train::ResolveResume(o.resume_checkpoint, o.out));
    if (!resume.empty()) {
      ASSIGN_OR_RETURN(auto loaded,
                       train::LoadModelAndOptimizer(resume, *model, optimizer, "classifier"));
      step = loaded;
      std::cerr << "[classifier] resumed from " << resume << " at step " << step << std::endl;
    }

    int64_t end = o.iterations;
    if (o.max_steps > 0) end = std::min(end, o.max_steps);
    std::error_code ec;
    fs::create_directories(o.out, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create --out ", o.out));
    train::MetricsLog log((fs::path(o.out) / "metrics.jsonl").string(), "classifier",
                          diffusion.num_timesteps(), end, step);
    const std::string flag_string = flags.ToFlagString(/*reference_only=*/true);
    std::cerr << "[classifier] " << CountParameters(*model) << " parameters, "
              << data.description << (val ? ", held out: " + val->description : "")
              << ", flags: " << flag_string << std::endl;

    auto save = [&](int64_t at) -> absl::StatusOr<std::string> {
      const std::map<std::string, std::string> meta = {
          {"step", std::to_string(at)}, {"kind", "classifier"}, {"classifier_flags", flag_string}};
      return train::SaveModelAndOptimizer(o.out, at, *model, optimizer, meta,
                                          o.keep_checkpoints);
    };
    auto evaluate = [&](int64_t at) {
      torch::NoGradGuard no_grad;
      model->eval();
      torch::Generator gen = MakeGenerator(train::StepSeed(o.seed, at, 2));
      const int64_t n = o.eval_samples > 0 ? o.eval_samples : o.batch_size;
      for (int64_t i = 0; i < n; i += o.batch_size) {
        const Batch b = SampleBatch(*val, std::min(o.batch_size, n - i), gen, false);
        const Noised in = Noise(diffusion, *sampler, b.images, o.noised, gen);
        const torch::Tensor logits = model->forward(in.x, diffusion.ModelTimesteps(in.t));
        log.AddPerTimestep("eval_loss",
                           torch::cross_entropy_loss(logits, b.labels, {}, at::Reduction::None),
                           in.t);
        log.AddPerTimestep("eval_acc@1", Top1(logits, b.labels), in.t);
      }
      model->train();
    };

    model->train();
    const int64_t batch = o.batch_size;
    const int64_t micro = o.microbatch > 0 ? std::min(o.microbatch, batch) : batch;
    auto accumulate = [&](int64_t at) {
      torch::Generator gen = MakeGenerator(train::StepSeed(o.seed, at, 0));
      torch::manual_seed(train::StepSeed(o.seed, at, 1));
      const Batch b = SampleBatch(data, batch, gen, o.random_flip);
      const Noised in = Noise(diffusion, *sampler, b.images, o.noised, gen);
      if (o.anneal_lr) optimizer.set_lr(o.lr * (1 - static_cast<double>(at) / o.iterations));
      for (int64_t i = 0; i < batch; i += micro) {
        const int64_t n = std::min(micro, batch - i);
        const torch::Tensor t = in.t.narrow(0, i, n);
        const torch::Tensor labels = b.labels.narrow(0, i, n);
        const torch::Tensor logits =
            model->forward(in.x.narrow(0, i, n), diffusion.ModelTimesteps(t));
        const torch::Tensor loss =
            torch::cross_entropy_loss(logits, labels, {}, at::Reduction::None);
        log.AddPerTimestep("loss", loss, t);
        log.AddPerTimestep("acc@1", Top1(logits, labels), t);
        (loss.mean() * (static_cast<double>(n) / static_cast<double>(batch))).backward();
      }
    };
    std::vector<torch::Tensor> plain;
    for (const auto& [name, p] : params) plain.push_back(p);
    return train::RunTrainingLoop(
        step, end, o, optimizer, plain, log, accumulate,
        [&](int64_t at) {
          if (val && o.eval_interval > 0 && at % o.eval_interval == 0) evaluate(at);
        },
        save);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("training failed: ", e.what_without_backtrace()));
  }
}

}  // namespace gd
