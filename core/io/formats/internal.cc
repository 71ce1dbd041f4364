#include "core/io/formats/internal.h"

#include <cstdio>
#include <cstdlib>

namespace gd::formats::internal {

void PreconditionFailed(absl::string_view function, absl::string_view message) {
  std::fprintf(stderr, "gd::formats::%.*s: %.*s\n", static_cast<int>(function.size()),
               function.data(), static_cast<int>(message.size()), message.data());
  std::abort();
}

}  // namespace gd::formats::internal
