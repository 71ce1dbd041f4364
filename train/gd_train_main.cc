// gd-train: trains a diffusion model or a noisy classifier with the reference's flags, or gd-eval's
// evaluator (a classifier of clean images, eval/evaluator.h).
//   gd-train diffusion --data DIR --out DIR [model and diffusion flags] [training flags]
//   gd-train classifier --data DIR --out DIR [--classifier_* flags] [training flags]
//   gd-train evaluator --data DIR --out DIR --image_size 28 --in_channels 1 --num_classes 10
//       [--evaluator_* flags] [training flags]
// `gd-train help diffusion|classifier|evaluator` lists every flag with its default.
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/engine/allocator.h"
#include "core/nn/config.h"
#include "core/train/trainer.h"
#include "eval/evaluator.h"
#include "eval/evaluator_trainer.h"

namespace {

const char* CommandName(gd::TrainKind kind) {
  switch (kind) {
    case gd::TrainKind::kDiffusion:
      return "diffusion";
    case gd::TrainKind::kClassifier:
      return "classifier";
    case gd::TrainKind::kEvaluator:
      return "evaluator";
  }
  return "?";
}

std::optional<gd::TrainKind> KindOf(const std::string& command) {
  for (auto kind :
       {gd::TrainKind::kDiffusion, gd::TrainKind::kClassifier, gd::TrainKind::kEvaluator}) {
    if (command == CommandName(kind)) return kind;
  }
  return std::nullopt;
}

// gd-train's own flags for `kind`, with the evaluator network's for kEvaluator.
std::vector<gd::FlagSpec> ExtraSpecs(gd::TrainKind kind) {
  std::vector<gd::FlagSpec> specs = gd::TrainFlagSpecs(kind);
  if (kind == gd::TrainKind::kEvaluator) {
    for (auto& spec : gd::eval::EvaluatorFlagSpecs()) specs.push_back(std::move(spec));
  }
  return specs;
}

void PrintHelp(gd::TrainKind kind) {
  std::cout << "usage: gd-train " << CommandName(kind)
            << " --data PATH --out DIR [flags]\n\ntraining flags:\n";
  for (const auto& spec : ExtraSpecs(kind)) {
    std::cout << absl::StrFormat("  --%-28s %s (default \"%s\")\n", spec.name, spec.help,
                                 spec.default_value);
  }
  std::cout << "\nmodel flags (the reference's, same defaults):\n";
  for (const auto& spec : gd::ReferenceFlagSpecs()) {
    std::cout << absl::StrFormat("  --%-32s %s (default \"%s\")\n", spec.name, spec.help,
                                 spec.default_value);
  }
}

}  // namespace

int main(int argc, char** argv) {
  gd::ConfigureAllocator();  // gd-train takes the reference's flags: always keeps freed memory
  const std::string usage =
      "usage: gd-train diffusion|classifier|evaluator --data PATH --out DIR [flags]\n"
      "       gd-train help diffusion|classifier|evaluator\n";
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  const std::string command = argv[1];
  if (command == "help" || command == "--help" || command == "-h") {
    PrintHelp(KindOf(argc > 2 ? argv[2] : "").value_or(gd::TrainKind::kDiffusion));
    return 0;
  }
  const std::optional<gd::TrainKind> found = KindOf(command);
  if (!found) {
    std::cerr << "gd-train: unknown command \"" << command << "\"\n" << usage;
    return 2;
  }
  const gd::TrainKind kind = *found;
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      PrintHelp(kind);
      return 0;
    }
  }
  auto flags = gd::ReferenceFlags::Parse(args, ExtraSpecs(kind));
  if (!flags.ok()) {
    std::cerr << "gd-train: " << flags.status().message() << "\n";
    return 2;
  }
  auto options = gd::TrainOptionsFromFlags(kind, *flags);
  if (!options.ok()) {
    std::cerr << "gd-train: " << options.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<gd::TrainSummary> summary;
  switch (kind) {
    case gd::TrainKind::kDiffusion:
      summary = gd::TrainDiffusion(*flags, *options);
      break;
    case gd::TrainKind::kClassifier:
      summary = gd::TrainClassifier(*flags, *options);
      break;
    case gd::TrainKind::kEvaluator:
      summary = gd::eval::TrainEvaluator(*flags, *options);
      break;
  }
  if (!summary.ok()) {
    std::cerr << "gd-train: " << summary.status().message() << "\n";
    return 1;
  }
  std::cerr << absl::StrFormat("gd-train: steps %d -> %d in %.1f s; last checkpoint %s\n",
                               summary->start_step, summary->end_step, summary->seconds,
                               summary->last_checkpoint);
  return 0;
}
