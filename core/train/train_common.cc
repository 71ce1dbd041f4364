#include "core/train/train_common.h"

#include <cmath>
#include <filesystem>
#include <iostream>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/diffusion/sampling.h"
#include "core/status_macros.h"

namespace gd::train {
namespace {

namespace fs = std::filesystem;

const std::regex& CheckpointPattern() {
  static const std::regex pattern(R"((model|opt|ema_[0-9.]+)_([0-9]{6,})\.safetensors)");
  return pattern;
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

}  // namespace

uint64_t StepSeed(uint64_t seed, int64_t step, uint64_t stream) {
  return DeriveSeed(DeriveSeed(seed, stream), static_cast<uint64_t>(step));
}

std::string CheckpointPath(const std::string& out, const std::string& prefix, int64_t step) {
  return (fs::path(out) / absl::StrFormat("%s_%06d.safetensors", prefix, step)).string();
}

std::optional<int64_t> StepFromPath(const std::string& path) {
  std::smatch match;
  const std::string name = fs::path(path).filename().string();
  if (!std::regex_match(name, match, CheckpointPattern())) return std::nullopt;
  return std::stoll(match[2].str());
}

std::optional<std::string> LatestCheckpoint(const std::string& out) {
  std::optional<std::string> best;
  int64_t best_step = -1;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(out, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("model_", 0) != 0) continue;
    auto step = StepFromPath(name);
    if (step && *step > best_step) {
      best_step = *step;
      best = entry.path().string();
    }
  }
  return best;
}

absl::StatusOr<std::string> ResolveResume(const std::string& resume, const std::string& out) {
  if (resume.empty()) return std::string();
  if (resume == "latest") {
    auto latest = LatestCheckpoint(out);
    return latest ? *latest : std::string();
  }
  if (!fs::exists(resume)) {
    return absl::NotFoundError(absl::StrCat("--resume_checkpoint \"", resume, "\" does not exist"));
  }
  if (!StepFromPath(resume)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--resume_checkpoint \"", resume,
        "\" is not named model_NNNNNN.safetensors (the step is read from the name)"));
  }
  return resume;
}

void PruneCheckpoints(const std::string& out, int64_t keep) {
  if (keep <= 0) return;
  std::set<int64_t> steps;
  std::vector<std::pair<int64_t, fs::path>> files;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(out, ec)) {
    if (auto step = StepFromPath(entry.path().string())) {
      steps.insert(*step);
      files.emplace_back(*step, entry.path());
    }
  }
  if (static_cast<int64_t>(steps.size()) <= keep) return;
  auto cutoff = steps.begin();
  std::advance(cutoff, static_cast<int64_t>(steps.size()) - keep);
  for (const auto& [step, path] : files) {
    if (step < *cutoff) fs::remove(path, ec);
  }
}

absl::Status SaveState(const std::string& path, const StateDict& state,
                       const std::map<std::string, std::string>& metadata) {
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  // WriteSafetensors writes beside the target and renames: no torn files on interruption.
  return WriteSafetensors(path, state, metadata);
}

absl::StatusOr<std::string> SaveModelAndOptimizer(
    const std::string& out, int64_t step, const torch::nn::Module& model, const AdamW& optimizer,
    const std::map<std::string, std::string>& metadata, int64_t keep) {
  const std::string path = CheckpointPath(out, "model", step);
  RETURN_IF_ERROR(SaveState(path, ModuleStateDict(model), metadata));
  if (auto s = SaveState(CheckpointPath(out, "opt", step), optimizer.State(), metadata); !s.ok()) {
    return s;
  }
  PruneCheckpoints(out, keep);
  return path;
}

absl::StatusOr<int64_t> LoadModelAndOptimizer(const std::string& model_path,
                                              torch::nn::Module& model, AdamW& optimizer,
                                              const std::string& what) {
  const std::optional<int64_t> step = StepFromPath(model_path);
  if (!step) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_path, " is not named model_NNNNNN.safetensors"));
  }
  ASSIGN_OR_RETURN(auto weights, ReadCheckpoint(model_path));
  RETURN_IF_ERROR(LoadStateDict(model, weights, what, model_path));
  ASSIGN_OR_RETURN(auto opt_state, ReadOptimizerStateIfPresent(model_path, *step, what));
  if (!opt_state.empty()) RETURN_IF_ERROR(optimizer.LoadState(opt_state));
  return *step;
}

absl::StatusOr<StateDict> ReadOptimizerStateIfPresent(const std::string& model_path,
                                                      int64_t step, const std::string& what) {
  const std::string path = CheckpointPath(fs::path(model_path).parent_path().string(), "opt", step);
  if (!fs::exists(path)) {
    std::cerr << "[" << what << "] no " << fs::path(path).filename().string() << " beside "
              << model_path << ": starting fresh optimizer moments from these weights" << std::endl;
    return StateDict();
  }
  return ReadCheckpoint(path);
}

MetricsLog::MetricsLog(const std::string& path, std::string tag, int64_t num_timesteps,
                       int64_t total_steps, int64_t start_step)
    : file_(path, std::ios::app),
      tag_(std::move(tag)),
      num_timesteps_(num_timesteps),
      total_steps_(total_steps),
      last_step_(start_step),
      last_time_(std::chrono::steady_clock::now()) {}

void MetricsLog::AddPerTimestep(const std::string& key, const torch::Tensor& values,
                                const torch::Tensor& t) {
  const torch::Tensor v = values.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const torch::Tensor ts = t.to(torch::kCPU, torch::kInt64).contiguous();
  for (int64_t i = 0; i < v.numel(); ++i) {
    const double value = v[i].item<double>();
    const int64_t quartile = 4 * ts[i].item<int64_t>() / num_timesteps_;
    Add(key, value);
    Add(absl::StrCat(key, "_q", quartile), value);
  }
}

void MetricsLog::Add(const std::string& key, double value) {
  auto& [sum, count] = sums_[key];
  sum += value;
  ++count;
}

double MetricsLog::Flush(int64_t step, int64_t samples) {
  const auto now = std::chrono::steady_clock::now();
  const double seconds = std::chrono::duration<double>(now - last_time_).count();
  const double steps_per_s = seconds > 0 ? static_cast<double>(step - last_step_) / seconds : 0;
  nlohmann::json line = {{"step", step}, {"samples", samples}, {"steps_per_s", steps_per_s}};
  for (const auto& [key, acc] : sums_) line[key] = acc.first / static_cast<double>(acc.second);
  const double loss = line.contains("loss") ? line["loss"].get<double>() : std::nan("");
  if (file_) file_ << line.dump() << "\n" << std::flush;
  std::string progress = absl::StrFormat("[%s] step %d", tag_, step);
  if (total_steps_ > 0) absl::StrAppendFormat(&progress, "/%d", total_steps_);
  for (const char* key : {"loss", "mse", "vb", "acc@1", "eval_loss", "eval_acc@1"}) {
    if (line.contains(key)) absl::StrAppendFormat(&progress, " | %s %.4f", key, line[key].get<double>());
  }
  absl::StrAppendFormat(&progress, " | %.2f steps/s", steps_per_s);
  if (total_steps_ > 0 && steps_per_s > 0) {
    absl::StrAppend(&progress, " | ETA ",
                    FormatDuration(static_cast<double>(total_steps_ - step) / steps_per_s));
  }
  std::cerr << progress << std::endl;
  sums_.clear();
  last_step_ = step;
  last_time_ = now;
  return loss;
}

absl::StatusOr<TrainSummary> RunTrainingLoop(
    int64_t start_step, int64_t end, const TrainOptions& options, AdamW& optimizer,
    const std::vector<torch::Tensor>& params, MetricsLog& log,
    const std::function<void(int64_t step)>& accumulate,
    const std::function<void(int64_t step)>& after_step,
    const std::function<absl::StatusOr<std::string>(int64_t step)>& save) {
  TrainSummary summary;
  summary.start_step = start_step;
  const auto started = std::chrono::steady_clock::now();
  int64_t step = start_step;
  int64_t last_saved = -1;
  auto save_now = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(auto path, save(step));
    summary.last_checkpoint = path;
    last_saved = step;
    return absl::OkStatus();
  };
  while (end == 0 || step < end) {
    optimizer.ZeroGrad();
    accumulate(step);
    log.Add("grad_norm", GradNorm(params));
    log.Add("lr", optimizer.lr());
    optimizer.Step();
    ++step;
    if (after_step) after_step(step);
    if (step % options.log_interval == 0) {
      summary.last_loss = log.Flush(step, step * options.batch_size);
    }
    if (step % options.save_interval == 0) {
      RETURN_IF_ERROR(save_now());
    }
  }
  if (last_saved != step) {
    RETURN_IF_ERROR(save_now());
  }
  summary.end_step = step;
  summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return summary;
}

}  // namespace gd::train
