// TrainDiffusion: image_train.py / TrainLoop of the reference.
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/diffusion/losses.h"
#include "core/diffusion/sampling.h"
#include "core/diffusion/schedule_sampler.h"
#include "core/io/dataset.h"
#include "core/nn/checkpoint.h"
#include "core/nn/model_bundle.h"
#include "core/nn/unet.h"
#include "core/train/optim.h"
#include "core/train/train_common.h"
#include "core/train/trainer.h"
#include "core/status_macros.h"

namespace gd {
namespace {

namespace fs = std::filesystem;

std::vector<std::pair<std::string, torch::Tensor>> NamedParameters(torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : module.named_parameters()) out.emplace_back(item.key(), item.value());
  return out;
}

std::string EmaPrefix(double rate) { return absl::StrCat("ema_", rate); }

absl::Status CheckData(const ImageDataset& data, const UNetConfig& config, bool needs_labels,
                       const std::string& path) {
  const auto sizes = data.images.sizes();
  if (sizes[1] != config.in_channels || sizes[2] != config.image_size ||
      sizes[3] != config.image_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--data %s holds %dx%dx%d images; the model is built for %dx%dx%d (--in_channels, "
        "--image_size)",
        path, sizes[1], sizes[2], sizes[3], config.in_channels, config.image_size,
        config.image_size));
  }
  if (needs_labels) {
    if (!data.has_labels) {
      return absl::InvalidArgumentError(
          absl::StrCat("--data ", path, " has no labels, but the model needs them"));
    }
    if (data.num_classes > config.num_classes && config.num_classes > 0) {
      return absl::InvalidArgumentError(absl::StrCat("--data ", path, " has ", data.num_classes,
                                                     " classes; --num_classes is ",
                                                     config.num_classes));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TrainSummary> TrainDiffusion(const ReferenceFlags& flags,
                                            const TrainOptions& o) {
  try {
    torch::set_num_threads(static_cast<int>(o.threads));
    if (flags.GetBool("use_fp16")) {
      return absl::InvalidArgumentError(
          "--use_fp16 training is not supported: gd-train trains in float32 (serve in fp16 with "
          "gd-server --dtype fp16)");
    }
    ASSIGN_OR_RETURN(auto config, flags.UNet());
    ASSIGN_OR_RETURN(auto diffusion, GaussianDiffusion::Create(flags.Diffusion(), ""));
    ASSIGN_OR_RETURN(auto data, LoadDataset(o.data, "train"));
    const bool class_cond = config.num_classes > 0;
    RETURN_IF_ERROR(CheckData(data, config, class_cond, o.data));
    ASSIGN_OR_RETURN(auto sampler,
                     CreateScheduleSampler(o.schedule_sampler, diffusion.num_timesteps()));
    auto* loss_aware = dynamic_cast<LossSecondMomentResampler*>(sampler.get());

    torch::manual_seed(o.seed);
    ASSIGN_OR_RETURN(auto created, CreateUNet(config));
    UNetModel model = created;
    model->train();
    const auto params = NamedParameters(*model);
    AdamW optimizer(params, {o.lr, 0.9, 0.999, 1e-8, o.weight_decay});
    std::vector<Ema> emas;
    for (double rate : o.ema_rates) emas.emplace_back(rate, params);

    int64_t step = 0;
    ASSIGN_OR_RETURN(auto resume, train::ResolveResume(o.resume_checkpoint, o.out));
    if (!resume.empty()) {
      step = *train::StepFromPath(resume);
      ASSIGN_OR_RETURN(auto weights, ReadCheckpoint(resume));
      RETURN_IF_ERROR(LoadStateDict(*model, weights, "diffusion model", resume));
      const std::string dir = fs::path(resume).parent_path().string();
      for (auto& ema : emas) {
        const std::string path = train::CheckpointPath(dir, EmaPrefix(ema.rate()), step);
        if (!fs::exists(path)) {
          // The reference starts an EMA without a checkpoint from the model's weights.
          ema = Ema(ema.rate(), NamedParameters(*model));
          continue;
        }
        ASSIGN_OR_RETURN(auto state, ReadCheckpoint(path));
        RETURN_IF_ERROR(ema.Load(state));
      }
      ASSIGN_OR_RETURN(auto opt_state,
                       train::ReadOptimizerStateIfPresent(resume, step, "diffusion"));
      if (!opt_state.empty()) RETURN_IF_ERROR(optimizer.LoadState(opt_state));
      if (loss_aware != nullptr) {
        torch::Tensor history, counts;
        for (const auto& [k, v] : opt_state) {
          if (k == "sampler.history") history = v;
          if (k == "sampler.counts") counts = v;
        }
        if (history.defined() && counts.defined()) loss_aware->Restore(history, counts);
      }
      std::cerr << "[diffusion] resumed from " << resume << " at step " << step << std::endl;
    }

    int64_t end = o.lr_anneal_steps > 0 ? o.lr_anneal_steps : 0;
    if (o.max_steps > 0) end = end > 0 ? std::min(end, o.max_steps) : o.max_steps;
    std::error_code ec;
    fs::create_directories(o.out, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create --out ", o.out));
    train::MetricsLog log((fs::path(o.out) / "metrics.jsonl").string(), "diffusion",
                          diffusion.num_timesteps(), end, step);
    const std::string model_flags = flags.ToFlagString(/*reference_only=*/true);
    std::cerr << "[diffusion] " << CountParameters(*model) << " parameters, " << data.description
              << ", flags: " << model_flags << std::endl;

    auto save = [&](int64_t at) -> absl::StatusOr<std::string> {
      const std::map<std::string, std::string> meta = {
          {"step", std::to_string(at)}, {"kind", "diffusion"}, {"model_flags", model_flags}};
      const std::string model_path = train::CheckpointPath(o.out, "model", at);
      RETURN_IF_ERROR(train::SaveState(model_path, ModuleStateDict(*model), meta));
      std::string served = model_path;
      for (size_t i = 0; i < emas.size(); ++i) {
        const std::string path = train::CheckpointPath(o.out, EmaPrefix(emas[i].rate()), at);
        RETURN_IF_ERROR(train::SaveState(path, emas[i].weights(), meta));
        if (i == 0) served = path;
      }
      StateDict opt_state = optimizer.State();
      if (loss_aware != nullptr) {
        opt_state.emplace_back("sampler.history", loss_aware->history());
        opt_state.emplace_back("sampler.counts", loss_aware->counts());
      }
      if (auto s = train::SaveState(train::CheckpointPath(o.out, "opt", at), opt_state, meta);
          !s.ok()) {
        return s;
      }
      // The output folder doubles as a gd-server --model_dir serving the newest EMA weights.
      ModelSpec spec;
      spec.name = fs::absolute(o.out).lexically_normal().filename().string();
      spec.description = absl::StrCat("trained by gd-train to step ", at, " on ", o.data);
      spec.model_flags = model_flags;
      spec.model_path = served;
      spec.class_names = class_cond ? data.class_names : std::vector<std::string>{};
      RETURN_IF_ERROR(WriteModelDir(o.out, spec));
      train::PruneCheckpoints(o.out, o.keep_checkpoints);
      return served;
    };

    const int64_t batch = o.batch_size;
    const int64_t micro = o.microbatch > 0 ? std::min(o.microbatch, batch) : batch;
    auto accumulate = [&](int64_t at) {
      torch::Generator gen = MakeGenerator(train::StepSeed(o.seed, at, 0));
      torch::manual_seed(train::StepSeed(o.seed, at, 1));  // dropout
      const Batch b = SampleBatch(data, batch, gen, o.random_flip);
      if (o.lr_anneal_steps > 0) {
        optimizer.set_lr(o.lr * (1 - static_cast<double>(at) / o.lr_anneal_steps));
      }
      for (int64_t i = 0; i < batch; i += micro) {
        const int64_t n = std::min(micro, batch - i);
        const torch::Tensor x = b.images.narrow(0, i, n);
        const torch::Tensor y = b.labels.narrow(0, i, n);
        const TimestepDraw draw = (sampler)->Sample(n, gen);
        const torch::Tensor noise = torch::randn(x.sizes(), gen);
        ModelFn fn = [&](const torch::Tensor& xt, const torch::Tensor& t) {
          return model->forward(xt, t, class_cond ? y : torch::Tensor());
        };
        const LossTerms terms = TrainingLosses(diffusion, fn, x, draw.timesteps, noise);
        if (loss_aware != nullptr) {
          const torch::Tensor ts = draw.timesteps.contiguous();
          const torch::Tensor ls = terms.loss.detach().to(torch::kFloat64).contiguous();
          loss_aware->Update(std::vector<int64_t>(ts.data_ptr<int64_t>(), ts.data_ptr<int64_t>() + n),
                             std::vector<double>(ls.data_ptr<double>(), ls.data_ptr<double>() + n));
        }
        (terms.loss * draw.weights).mean().backward();
        log.AddPerTimestep("loss", terms.loss, draw.timesteps);
        if (terms.mse.defined()) log.AddPerTimestep("mse", terms.mse, draw.timesteps);
        if (terms.vb.defined()) log.AddPerTimestep("vb", terms.vb, draw.timesteps);
      }
    };
    std::vector<torch::Tensor> plain;
    for (const auto& [name, p] : params) plain.push_back(p);
    return train::RunTrainingLoop(step, end, o, optimizer, plain, log, accumulate,
                                  [&](int64_t) {
                                    for (auto& ema : emas) ema.Update(params);
                                  },
                                  save);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("training failed: ", e.what_without_backtrace()));
  }
}

}  // namespace gd
