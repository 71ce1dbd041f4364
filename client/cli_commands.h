// The gd CLI's commands and which flags each reads, and the help built from that table:
//   gd COMMAND --help   that command's flags only, grouped, with examples
//   gd --help           the commands
//   gd --helpfull       every flag of every command
// The flags themselves (ABSL_FLAG) are defined in gd_main.cc next to main(); the help reads their
// texts and defaults through absl's flag reflection. A flag given to a command that does not read
// it is a usage error rather than silently ignored.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace gd::client {

enum class Command { kSample, kStream, kView, kModels, kHealth };

struct CommandInfo {
  absl::string_view name;
  Command command;
  absl::string_view summary;   // one line
  absl::string_view examples;  // command lines, one per line
};

absl::Span<const CommandInfo> Commands();
// nullptr for an unknown name.
const CommandInfo* FindCommand(absl::string_view name);

// Whether the flag was given a value other than its default.
bool FlagIsSet(absl::string_view name);

// InvalidArgument naming the first flag set on the command line that `command` does not read.
absl::Status CheckFlagsApply(const CommandInfo& command);

std::string CommandHelp(const CommandInfo& command);
std::string GeneralHelp();
std::string FullHelp();

// When the command line asks for help (--help, -h, --helpshort, --helpfull; before or after the
// command), the help to print; "" otherwise. Looked for before the flags are parsed, so that
// `gd sample --help` prints sample's flags whatever else is on the line.
std::string HelpRequested(int argc, char** argv);

}  // namespace gd::client
