#include "core/engine/sampler.h"

#include <cstring>

namespace gd {

RowTable::RowTable(int64_t rows, int64_t columns)
    : rows_(rows), columns_(columns), host_(static_cast<size_t>(rows * columns), 0.f) {}

void RowTable::Fill(int64_t first, int64_t count, const float* values) {
  for (int64_t i = first; i < first + count; ++i) {
    std::memcpy(&host_[static_cast<size_t>(i * columns_)], values,
                sizeof(float) * static_cast<size_t>(columns_));
  }
}

torch::Tensor RowTable::Upload(const torch::Device& device) const {
  // from_blob does not copy: the explicit copy leaves nothing pointing at host_.
  return torch::from_blob(const_cast<float*>(host_.data()), {rows_, columns_}, torch::kFloat32)
      .to(device, /*non_blocking=*/false, /*copy=*/true);
}

torch::Tensor RowColumn(const torch::Tensor& table, int64_t j) {
  return table.select(1, j).view({table.size(0), 1, 1, 1});
}

}  // namespace gd
