// gd-train: trains a diffusion model or a noisy classifier with the reference's flags.
//   gd-train diffusion --data DIR --out DIR [model and diffusion flags] [training flags]
//   gd-train classifier --data DIR --out DIR [--classifier_* flags] [training flags]
// `gd-train help diffusion|classifier` lists every flag with its default.
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/nn/config.h"
#include "core/train/trainer.h"

namespace {

void PrintHelp(gd::TrainKind kind) {
  const bool diffusion = kind == gd::TrainKind::kDiffusion;
  std::cout << "usage: gd-train " << (diffusion ? "diffusion" : "classifier")
            << " --data PATH --out DIR [flags]\n\ntraining flags:\n";
  for (const auto& spec : gd::TrainFlagSpecs(kind)) {
    std::cout << absl::StrFormat("  --%-24s %s (default \"%s\")\n", spec.name, spec.help,
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
  const std::string usage =
      "usage: gd-train diffusion|classifier --data PATH --out DIR [flags]\n"
      "       gd-train help diffusion|classifier\n";
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  const std::string command = argv[1];
  if (command == "help" || command == "--help" || command == "-h") {
    const std::string what = argc > 2 ? argv[2] : "diffusion";
    PrintHelp(what == "classifier" ? gd::TrainKind::kClassifier : gd::TrainKind::kDiffusion);
    return 0;
  }
  if (command != "diffusion" && command != "classifier") {
    std::cerr << "gd-train: unknown command \"" << command << "\"\n" << usage;
    return 2;
  }
  const gd::TrainKind kind =
      command == "diffusion" ? gd::TrainKind::kDiffusion : gd::TrainKind::kClassifier;
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      PrintHelp(kind);
      return 0;
    }
  }
  auto flags = gd::ReferenceFlags::Parse(args, gd::TrainFlagSpecs(kind));
  if (!flags.ok()) {
    std::cerr << "gd-train: " << flags.status().message() << "\n";
    return 2;
  }
  auto options = gd::TrainOptionsFromFlags(kind, *flags);
  if (!options.ok()) {
    std::cerr << "gd-train: " << options.status().message() << "\n";
    return 2;
  }
  auto summary = kind == gd::TrainKind::kDiffusion ? gd::TrainDiffusion(*flags, *options)
                                                   : gd::TrainClassifier(*flags, *options);
  if (!summary.ok()) {
    std::cerr << "gd-train: " << summary.status().message() << "\n";
    return 1;
  }
  std::cerr << absl::StrFormat("gd-train: steps %d -> %d in %.1f s; last checkpoint %s\n",
                               summary->start_step, summary->end_step, summary->seconds,
                               summary->last_checkpoint);
  return 0;
}
