// Which rows of a batch each engine lane runs (EngineOptions::lanes). Torch-free.
#pragma once

#include <cstdint>
#include <vector>

namespace gd {

// The rows 0..rows-1 dealt to `lanes` lanes (lanes >= 1), each lane's in increasing order: the
// guided rows first, round robin, then the others, continuing the round. Every lane gets as many
// guided rows as any other, give or take one, and as many rows in all, give or take one: a
// guided row also costs the classifier's forward and input gradient (on the parity-64 pair twice
// the UNet's forward), so splitting by position alone could leave one lane all the guided rows.
// `guided_rows` is increasing, within [0, rows).
std::vector<std::vector<int64_t>> DealRowsToLanes(int64_t rows, const std::vector<int64_t>& guided_rows,
                                                  int64_t lanes);

}  // namespace gd
