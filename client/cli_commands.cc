#include "client/cli_commands.h"

#include <algorithm>
#include <iterator>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace gd::client {
namespace {

constexpr size_t kHelpWidth = 100;

// Examples are kept within kHelpWidth: they are printed as they are, for copying.
constexpr CommandInfo kCommandTable[] = {
    {"sample", Command::kSample,
     "sample images of the given classes: one request, or thousands split over many",
     "gd sample --labels 0,1,2,3,4,5,6,7,8,9 --classifier_scale 3 --sampler ddim \\\n"
     "    --timestep_respacing ddim50 --out grid.png\n"
     "gd sample --labels 7,7,7,7 --classifier_scale 3 --sampler dpm++ --steps 15 --out dpm.png\n"
     "gd sample --num_samples 5000 --balanced_labels --classifier_scale 3 --sampler dpm++ \\\n"
     "    --steps 15 --concurrency 4 --npz samples.npz   # kill it, then add --resume"},
    {"stream", Command::kStream, "sample one request, streaming every (--every K-th) step",
     "gd stream --labels 7,7,7,7 --classifier_scale 3 --sampler ddim --timestep_respacing ddim50 "
     "\\\n"
     "    --every 5 --dump_dir steps/\n"
     "gd stream --labels 0,1,2,3,4,5,6,7,8,9 --classifier_scale 3 --sampler dpm++ --steps 15 \\\n"
     "    --strip strip.png --gif trajectory.gif"},
    {"view", Command::kView, "a web page that samples and shows every step live",
     "gd view --listen 127.0.0.1:8080"},
    {"models", Command::kModels, "list the server's models (--model M: one model)",
     "gd models\ngd models --model fashion-mnist"},
    {"health", Command::kHealth, "the server's health; exit status 0 only when SERVING",
     "gd health\ngd health --service guided_diffusion.v1.Sampler"},
};

constexpr unsigned Bit(Command command) { return 1u << static_cast<unsigned>(command); }
constexpr unsigned kAll = Bit(Command::kSample) | Bit(Command::kStream) | Bit(Command::kView) |
                          Bit(Command::kModels) | Bit(Command::kHealth);
constexpr unsigned kSampling = Bit(Command::kSample) | Bit(Command::kStream);
constexpr unsigned kSample = Bit(Command::kSample);
constexpr unsigned kStream = Bit(Command::kStream);

// The groups, in the order the help lists them.
constexpr absl::string_view kGroups[] = {"What to sample", "Sampler", "Many images", "Outputs",
                                         "Streaming",      "Viewer",  "Health",      "Connection"};

struct FlagUse {
  absl::string_view flag;
  absl::string_view group;
  unsigned commands;
};

constexpr FlagUse kFlagTable[] = {
    {"model", "What to sample", kSampling | Bit(Command::kModels)},
    {"labels", "What to sample", kSampling},
    {"num_samples", "What to sample", kSampling},
    {"balanced_labels", "What to sample", kSample},
    {"random_labels", "What to sample", kSample},
    {"classifier_scale", "What to sample", kSampling},
    {"seed", "What to sample", kSampling},
    {"noise", "What to sample", kSampling},
    {"sampler", "Sampler", kSampling},
    {"eta", "Sampler", kSampling},
    {"timestep_respacing", "Sampler", kSampling},
    {"steps", "Sampler", kSampling},
    {"solver_order", "Sampler", kSampling},
    {"skip_type", "Sampler", kSampling},
    {"dynamic_thresholding_ratio", "Sampler", kSampling},
    {"clip_denoised", "Sampler", kSampling},
    {"images_per_request", "Many images", kSample},
    {"concurrency", "Many images", kSample},
    {"max_retries", "Many images", kSample},
    {"retry_backoff_s", "Many images", kSample},
    {"resume", "Many images", kSample},
    {"out", "Outputs", kSampling},
    {"npz", "Outputs", kSampling},
    {"tensor_out", "Outputs", kSampling},
    {"columns", "Outputs", kSampling},
    {"min_tile_px", "Outputs", kSampling},
    {"captions", "Outputs", kSampling},
    {"every", "Streaming", kStream},
    {"dump_dir", "Streaming", kStream},
    {"strip", "Streaming", kStream},
    {"strip_columns", "Streaming", kStream},
    {"gif", "Streaming", kStream},
    {"gif_frame_ms", "Streaming", kStream},
    {"listen", "Viewer", Bit(Command::kView)},
    {"service", "Health", Bit(Command::kHealth)},
    {"server", "Connection", kAll},
    {"tls", "Connection", kAll},
    {"tls_ca", "Connection", kAll},
    {"tls_cert", "Connection", kAll},
    {"tls_key", "Connection", kAll},
    {"tls_server_name", "Connection", kAll},
    {"auth_token_file", "Connection", kAll},
    {"timeout_s", "Connection", kAll},
    {"load_balancing_policy", "Connection", kAll},
};

std::string CommandList(unsigned commands) {
  std::vector<std::string> names;
  for (const CommandInfo& info : kCommandTable) {
    if (commands & Bit(info.command)) names.push_back(absl::StrCat("gd ", info.name));
  }
  return commands == kAll ? "every command" : absl::StrJoin(names, ", ");
}

// `text` after `prefix`, wrapped at kHelpWidth; lines after the first start with `indent` spaces.
std::string Wrap(absl::string_view prefix, absl::string_view text, size_t indent) {
  std::string wrapped;
  std::string line(prefix);
  size_t line_start = line.size();  // where the line's words begin
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    const bool empty = line.size() == line_start;
    if (!empty && line.size() + 1 + word.size() > kHelpWidth) {
      absl::StrAppend(&wrapped, line, "\n");
      line.assign(indent, ' ');
      line_start = indent;
    } else if (!empty) {
      line += ' ';
    }
    absl::StrAppend(&line, word);
  }
  return wrapped + line;
}

// "  --sampler (default: "ddpm")", then the flag's help, indented and wrapped.
std::string FlagLine(const FlagUse& use, bool say_commands) {
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(use.flag);
  if (flag == nullptr) return absl::StrCat("  --", use.flag, " (not defined in this build)\n");
  std::string default_value = flag->DefaultValue();
  if (flag->IsOfType<std::string>()) {
    default_value = absl::StrCat("\"", default_value, "\"");
  } else if (default_value.empty()) {
    default_value = "none";
  }
  std::string help = flag->Help();
  if (say_commands) absl::StrAppend(&help, " [", CommandList(use.commands), "]");
  return absl::StrCat("  --", use.flag, " (default: ", default_value, ")\n",
                      Wrap("      ", help, 6), "\n");
}

// The groups with the flags `commands` read, each under its heading.
std::string FlagSections(unsigned commands, bool say_commands) {
  std::string text;
  for (absl::string_view group : kGroups) {
    std::string lines;
    for (const FlagUse& use : kFlagTable) {
      if (use.group == group && (use.commands & commands) != 0) {
        absl::StrAppend(&lines, FlagLine(use, say_commands));
      }
    }
    if (!lines.empty()) absl::StrAppend(&text, "\n", group, ":\n", lines);
  }
  return text;
}

// Flags defined in gd_main.cc that the table misses (a mistake: tests require none).
std::string UnlistedFlags() {
  std::vector<std::string> names;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    const bool listed = std::any_of(std::begin(kFlagTable), std::end(kFlagTable),
                                    [&](const FlagUse& use) { return use.flag == name; });
    if (!listed && absl::EndsWith(flag->Filename(), "gd_main.cc")) {
      names.push_back(absl::StrCat("--", name));
    }
  }
  if (names.empty()) return "";
  std::sort(names.begin(), names.end());
  return absl::StrCat(
      "\nNot in the help's table (client/cli_commands.cc): ", absl::StrJoin(names, ", "), "\n");
}

}  // namespace

absl::Span<const CommandInfo> Commands() { return kCommandTable; }

const CommandInfo* FindCommand(absl::string_view name) {
  const auto* found = std::find_if(std::begin(kCommandTable), std::end(kCommandTable),
                                   [name](const CommandInfo& info) { return info.name == name; });
  return found == std::end(kCommandTable) ? nullptr : found;
}

bool FlagIsSet(absl::string_view name) {
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  return flag != nullptr && flag->CurrentValue() != flag->DefaultValue();
}

absl::Status CheckFlagsApply(const CommandInfo& command) {
  for (const FlagUse& use : kFlagTable) {
    if ((use.commands & Bit(command.command)) == 0 && FlagIsSet(use.flag)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", use.flag, " does not apply to `gd ", command.name, "` (it is for ",
          CommandList(use.commands), "; gd ", command.name, " --help lists its flags)"));
    }
  }
  return absl::OkStatus();
}

std::string CommandHelp(const CommandInfo& command) {
  std::string text = absl::StrCat("gd ", command.name, ": ", command.summary, "\n\nusage: gd ",
                                  command.name, " [flags]\n\nexamples:\n");
  for (absl::string_view example : absl::StrSplit(command.examples, '\n')) {
    absl::StrAppend(&text, "  ", example, "\n");
  }
  absl::StrAppend(&text, FlagSections(Bit(command.command), /*say_commands=*/false),
                  "\ngd --helpfull lists the flags of every command.\n");
  return text;
}

std::string GeneralHelp() {
  std::string text =
      "gd: the command-line client of the guided-diffusion sampling service.\n\n"
      "usage: gd <command> [flags]\n\ncommands:\n";
  for (const CommandInfo& command : kCommandTable) {
    absl::StrAppend(&text, "  ", command.name, std::string(8 - command.name.size(), ' '),
                    command.summary, "\n");
  }
  absl::StrAppend(&text,
                  "\ngd <command> --help lists a command's flags, with examples; gd --helpfull "
                  "lists every flag.\nA progress bar is drawn on stderr when it is a terminal. "
                  "Exit status: 0 success, 1 a failed\ncall or write, 2 bad flags.\n");
  return text;
}

std::string FullHelp() {
  return absl::StrCat(GeneralHelp(), "\nEvery flag, and the commands that read it:\n",
                      FlagSections(kAll, /*say_commands=*/true), UnlistedFlags());
}

std::string HelpRequested(int argc, char** argv) {
  bool help = false, full = false;
  const CommandInfo* command = nullptr;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") break;
    full |= arg == "--helpfull" || arg == "-helpfull";
    help |= arg == "--help" || arg == "-help" || arg == "--helpshort" || arg == "-helpshort" ||
            arg == "-h";
    if (command == nullptr && !absl::StartsWith(arg, "-")) command = FindCommand(arg);
  }
  if (full) return FullHelp();
  if (!help) return "";
  return command != nullptr ? CommandHelp(*command) : GeneralHelp();
}

}  // namespace gd::client
