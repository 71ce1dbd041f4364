// gd-eval: scores sample batches with the metrics of the reference's evaluations/ suite (FID,
// sFID, IS, improved precision and recall) plus label agreement, in the feature space of an
// evaluator network (eval/evaluator.h; the bundled model's by default).
//   gd-eval stats [DATA] --out ref.npz        reference statistics (default DATA: the
//                                             Fashion-MNIST test set of Debian's package)
//   gd-eval score REFERENCE SAMPLES [--json]  one batch against a reference
//   gd-eval sweep --reference ref.npz --out DIR --scales 0,1,3 --samplers ddim:ddim50
//                                             a running server's trade-off curve
// REFERENCE and SAMPLES are a statistics .npz from `gd-eval stats`, an .npz sample batch
// (arr_0 uint8 [N, H, W, C], arr_1 labels), an IDX folder (--split) or a PNG folder.
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/engine/allocator.h"
#include "eval/batch_stats.h"
#include "eval/evaluator.h"
#include "eval/scores.h"
#include "core/status_macros.h"
#ifdef GD_EVAL_SWEEP
#include "eval/sweep.h"
#endif

ABSL_FLAG(std::string, evaluator, "",
          "evaluator.json of the feature network (\"\": the bundled model's, "
          "models/fashion-mnist/evaluator.json)");
ABSL_FLAG(std::string, out, "", "stats: the .npz to write; sweep: the output folder");
ABSL_FLAG(std::string, split, "test",
          "split of an IDX folder given as data: train or test (sweep: of --real_data is train)");
ABSL_FLAG(int64_t, limit, 0, "score only the first N images of the data (0: all)");
ABSL_FLAG(bool, json, false, "score: print JSON instead of the table");
ABSL_FLAG(int64_t, threads, 0, "intra-op CPU threads (0: LibTorch's default)");
// sweep
ABSL_FLAG(std::string, target, "localhost:50051", "sweep: the gd-server to sample from");
ABSL_FLAG(std::string, model, "", "sweep: model name (\"\": the server's default)");
ABSL_FLAG(std::string, reference, "", "sweep: reference statistics (gd-eval stats) or batch");
ABSL_FLAG(std::string, scales, "0,0.5,1,2,3,5,10,20", "sweep: classifier scales");
ABSL_FLAG(std::string, samplers, "ddim:ddim50",
          "sweep: SAMPLER:STEPS items, e.g. ddim:ddim50,ddpm:250,dpm++:20");
ABSL_FLAG(int64_t, num_samples, 2000, "sweep: samples per point, labels 0..C-1 cycling");
ABSL_FLAG(int64_t, concurrency, 4, "sweep: requests in flight");
ABSL_FLAG(uint64_t, seed, 0, "sweep: seed of every point (image i uses stream (seed, i))");
ABSL_FLAG(std::string, real_data, "/usr/share/datasets/fashion-mnist",
          "sweep: real images scored as the first row, the ceiling (\"\": none)");
ABSL_FLAG(int64_t, timeout_s, 3600, "sweep: deadline of each Sample request");

namespace {

constexpr char kDefaultData[] = "/usr/share/datasets/fashion-mnist";

absl::StatusOr<gd::eval::Evaluator> LoadEvaluator() {
  std::string path = absl::GetFlag(FLAGS_evaluator);
  if (path.empty()) path = gd::eval::FindBundledEvaluator();
  if (path.empty()) {
    return absl::NotFoundError(
        "no evaluator: models/fashion-mnist/evaluator.json was not found ($GD_BUNDLED_MODEL, "
        "beside the build, /usr/share/gd/models or the working directory); give --evaluator "
        "PATH/evaluator.json");
  }
  return gd::eval::Evaluator::Load(path);
}

absl::Status Stats(const std::vector<std::string>& args) {
  const std::string data = args.empty() ? kDefaultData : args[0];
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return absl::InvalidArgumentError("stats needs --out FILE.npz");
  ASSIGN_OR_RETURN(gd::eval::Evaluator evaluator, LoadEvaluator());
  ASSIGN_OR_RETURN(
      gd::eval::BatchStats stats,
      gd::eval::LoadBatch(evaluator, data, absl::GetFlag(FLAGS_split), absl::GetFlag(FLAGS_limit)));
  RETURN_IF_ERROR(gd::eval::WriteStats(out, stats));
  std::cerr << "gd-eval: wrote " << out << ": " << stats.description << ", " << stats.num_images()
            << " images, evaluator " << stats.evaluator << "\n";
  return absl::OkStatus();
}

absl::Status Score(const std::vector<std::string>& args) {
  if (args.size() != 2) {
    return absl::InvalidArgumentError("score takes two arguments: REFERENCE SAMPLES");
  }
  ASSIGN_OR_RETURN(gd::eval::Evaluator evaluator, LoadEvaluator());
  ASSIGN_OR_RETURN(gd::eval::BatchStats reference, gd::eval::LoadBatch(evaluator, args[0], "test"));
  ASSIGN_OR_RETURN(gd::eval::BatchStats samples,
                   gd::eval::LoadBatch(evaluator, args[1], absl::GetFlag(FLAGS_split),
                                       absl::GetFlag(FLAGS_limit)));
  ASSIGN_OR_RETURN(gd::eval::Scores scores, gd::eval::Score(evaluator, reference, samples));
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << gd::eval::ToJson(scores).dump(2) << "\n";
  } else {
    std::cout << gd::eval::FormatTable(scores);
  }
  return absl::OkStatus();
}

#ifdef GD_EVAL_SWEEP
absl::StatusOr<std::vector<double>> ParseScales(const std::string& text) {
  std::vector<double> scales;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    double v = 0;
    if (!absl::SimpleAtod(part, &v) || !(v >= 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--scales \"", text, "\": \"", part, "\" is not a scale >= 0"));
    }
    scales.push_back(v);
  }
  if (scales.empty()) return absl::InvalidArgumentError("--scales names no scale");
  return scales;
}

absl::Status Sweep() {
  gd::eval::SweepOptions options;
  options.model = absl::GetFlag(FLAGS_model);
  ASSIGN_OR_RETURN(options.samplers, gd::eval::ParseSamplerPoints(absl::GetFlag(FLAGS_samplers)));
  ASSIGN_OR_RETURN(options.scales, ParseScales(absl::GetFlag(FLAGS_scales)));
  options.num_samples = absl::GetFlag(FLAGS_num_samples);
  options.concurrency = absl::GetFlag(FLAGS_concurrency);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.out_dir = absl::GetFlag(FLAGS_out);
  options.real_data = absl::GetFlag(FLAGS_real_data);
  if (options.out_dir.empty()) return absl::InvalidArgumentError("sweep needs --out DIR");
  if (options.num_samples < 4) {
    return absl::InvalidArgumentError(absl::StrCat("--num_samples = ", options.num_samples,
                                                   ": precision and recall need at least 4"));
  }
  const std::string reference_path = absl::GetFlag(FLAGS_reference);
  if (reference_path.empty()) {
    return absl::InvalidArgumentError("sweep needs --reference (gd-eval stats --out ref.npz)");
  }
  ASSIGN_OR_RETURN(gd::eval::Evaluator evaluator, LoadEvaluator());
  ASSIGN_OR_RETURN(gd::eval::BatchStats reference,
                   gd::eval::LoadBatch(evaluator, reference_path, "test"));
  gd::client::ClientOptions client_options;
  client_options.target = absl::GetFlag(FLAGS_target);
  client_options.timeout_ms = absl::GetFlag(FLAGS_timeout_s) * 1000;
  ASSIGN_OR_RETURN(auto client, gd::client::SamplerClient::Create(client_options));
  ASSIGN_OR_RETURN(auto rows, gd::eval::RunSweep(*client, options, evaluator, reference));
  std::cout << gd::eval::SweepMarkdown(rows);
  std::cerr << "gd-eval: wrote " << options.out_dir << "/sweep.{csv,md,json}; plot them with "
            << "scripts/plot-sweep.py " << options.out_dir << "/sweep.csv\n";
  return absl::OkStatus();
}
#endif

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "scores sample batches against a reference (FID, sFID, IS, precision, recall, agreement)\n"
      "  gd-eval stats [DATA] --out ref.npz\n"
      "  gd-eval score REFERENCE SAMPLES [--json] [--split test] [--limit N]\n"
      "  gd-eval sweep --reference ref.npz --out DIR [--target HOST:PORT] [--scales 0,1,3]\n"
      "                [--samplers ddim:ddim50,ddpm:250,dpm++:20] [--num_samples 2000]\n"
      "Numbers are in the evaluator network's feature space: not comparable with published\n"
      "Inception-V3 (ImageNet) FIDs.");
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  gd::ConfigureAllocator();
  if (positional.size() < 2) {
    std::cerr << absl::ProgramUsageMessage() << "\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_threads) > 0) {
    torch::set_num_threads(static_cast<int>(absl::GetFlag(FLAGS_threads)));
  }
  const std::string command = positional[1];
  const std::vector<std::string> args(positional.begin() + 2, positional.end());
  absl::Status status;
  if (command == "stats") {
    status = Stats(args);
  } else if (command == "score") {
    status = Score(args);
  } else if (command == "sweep") {
#ifdef GD_EVAL_SWEEP
    status = Sweep();
#else
    status = absl::UnimplementedError(
        "this gd-eval was built without the service "
        "(GD_WITH_SERVICE=OFF): sweep needs the gRPC client");
#endif
  } else {
    std::cerr << "gd-eval: unknown command \"" << command << "\"\n"
              << absl::ProgramUsageMessage() << "\n";
    return 2;
  }
  if (!status.ok()) {
    std::cerr << "gd-eval " << command << ": " << status.message() << "\n";
    return 1;
  }
  return 0;
}
