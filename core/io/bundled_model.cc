#include "core/io/bundled_model.h"

#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <vector>

namespace gd {

namespace fs = std::filesystem;

std::string FindBundledModelDir(const std::string& file) {
  std::vector<fs::path> candidates;
  if (const char* env = std::getenv("GD_BUNDLED_MODEL")) candidates.emplace_back(env);
  std::error_code ec;
  const fs::path exe = fs::canonical("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(exe.parent_path() / "../../models/fashion-mnist");
    candidates.push_back(exe.parent_path() / "../share/gd/models/fashion-mnist");
  }
  candidates.emplace_back("/usr/share/gd/models/fashion-mnist");
  candidates.emplace_back("models/fashion-mnist");
  for (const fs::path& dir : candidates) {
    if (fs::exists(dir / file, ec)) return fs::weakly_canonical(dir, ec).string();
  }
  return "";
}

}  // namespace gd
