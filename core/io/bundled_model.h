// Where the bundled Fashion-MNIST model is on this machine, for the binaries that fall back to it
// (gd-server with no --model_dir, gd-eval with no --evaluator, gd-bench with no model).
#pragma once

#include <string>

namespace gd {

// The first of these folders that holds `file` (e.g. "model.json", "evaluator.json"), as a
// canonical path; "" when none does:
//   $GD_BUNDLED_MODEL, when set;
//   models/fashion-mnist of the source tree the running binary was built in (build/bin/../..);
//   share/gd/models/fashion-mnist beside the binary's prefix, and /usr/share/gd/models/...;
//   models/fashion-mnist under the working directory.
std::string FindBundledModelDir(const std::string& file);

}  // namespace gd
