#include "core/engine/lanes.h"

#include <algorithm>

namespace gd {

std::vector<std::vector<int64_t>> DealRowsToLanes(int64_t rows, const std::vector<int64_t>& guided_rows,
                                                  int64_t lanes) {
  std::vector<bool> guided(static_cast<size_t>(rows), false);
  for (const int64_t row : guided_rows) guided[static_cast<size_t>(row)] = true;
  std::vector<std::vector<int64_t>> dealt(static_cast<size_t>(lanes));
  size_t next = 0;
  for (const bool pass : {true, false}) {
    for (int64_t row = 0; row < rows; ++row) {
      if (guided[static_cast<size_t>(row)] == pass) dealt[next++ % dealt.size()].push_back(row);
    }
  }
  for (auto& lane : dealt) std::sort(lane.begin(), lane.end());
  return dealt;
}

}  // namespace gd
